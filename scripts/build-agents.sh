#!/usr/bin/env bash
# Builds the static guest agents that kiln embeds: target/agents/kiln-agent-<arch>.
# Usage: scripts/build-agents.sh [arm64] [amd64]   (default: both)
#
# Preferred toolchain: rustup's musl targets (fully static, no libc needed in
# the guest). Fallback where rustup cannot add targets: Debian's rustc-web
# with an aarch64 glibc std (see scripts/setup-cross-rust.sh), linked with
# +crt-static.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/target/agents"
mkdir -p "$out"
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(arm64 amd64)

have_target() { rustup target list --installed 2>/dev/null | grep -qx "$1" || rustup target add "$1" >/dev/null 2>&1; }

for arch in "${arches[@]}"; do
  case "$arch" in
    arm64) triple_arch=aarch64; gcc=aarch64-linux-gnu-gcc ;;
    amd64) triple_arch=x86_64; gcc=gcc ;;
    *) echo "unknown agent architecture: $arch (known: arm64, amd64)" >&2; exit 2 ;;
  esac
  env_prefix="CARGO_TARGET_$(echo "${triple_arch}" | tr a-z A-Z)_UNKNOWN_LINUX"
  if have_target "${triple_arch}-unknown-linux-musl"; then
    triple="${triple_arch}-unknown-linux-musl"
    export "${env_prefix}_MUSL_LINKER=$gcc"
    cargo build -q --profile agent -p kiln-guest-agent --bin kiln-agent --target "$triple"
  elif [ "$arch" = arm64 ]; then
    "$root/scripts/setup-cross-rust.sh"
    cross="$root/.cache/cross-rust"
    triple="aarch64-unknown-linux-gnu"
    env LD_LIBRARY_PATH="$cross/usr/lib/x86_64-linux-gnu" RUSTC="$cross/usr/bin/rustc" \
      "${env_prefix}_GNU_LINKER=$gcc" RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build -q --profile agent -p kiln-guest-agent --bin kiln-agent --target "$triple"
  else
    triple="x86_64-unknown-linux-gnu"
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build -q --profile agent -p kiln-guest-agent --bin kiln-agent --target "$triple"
  fi
  install -m 0755 "target/$triple/agent/kiln-agent" "$out/kiln-agent-$arch.tmp"
  mv "$out/kiln-agent-$arch.tmp" "$out/kiln-agent-$arch"
  echo "built $out/kiln-agent-$arch ($(stat -c %s "$out/kiln-agent-$arch") bytes, $triple)" >&2
done
