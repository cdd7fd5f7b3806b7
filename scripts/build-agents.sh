#!/usr/bin/env bash
# Builds the static guest agents that kiln embeds: target/agents/kiln-agent-<arch>.
# Usage: scripts/build-agents.sh [arm64] [amd64] [armv7] [riscv64] [ppc64le] [s390x]
#        (default: all)
#
# Preferred toolchain: rustup's musl targets (fully static, no libc needed in
# the guest). Fallbacks, in order: rustup's glibc target linked with
# +crt-static (rustup serves armv7-unknown-linux-gnueabihf where its musl
# twin 404s), then Debian's rustc-web with a foreign glibc std (see
# scripts/setup-cross-rust.sh), also linked with +crt-static.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/target/agents"
mkdir -p "$out"
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(arm64 amd64 armv7 riscv64 ppc64le s390x)

have_target() { rustup target list --installed 2>/dev/null | grep -qx "$1" || rustup target add "$1" >/dev/null 2>&1; }
# CARGO_TARGET_<TRIPLE>_LINKER
linker_var() { echo "CARGO_TARGET_$(echo "$1" | tr a-z- A-Z_)_LINKER"; }

for arch in "${arches[@]}"; do
  case "$arch" in
    arm64) musl=aarch64-unknown-linux-musl; gnu=aarch64-unknown-linux-gnu; gcc=aarch64-linux-gnu-gcc; deb_arch=arm64 ;;
    amd64) musl=x86_64-unknown-linux-musl; gnu=x86_64-unknown-linux-gnu; gcc=gcc; deb_arch= ;;
    armv7) musl=armv7-unknown-linux-musleabihf; gnu=armv7-unknown-linux-gnueabihf; gcc=arm-linux-gnueabihf-gcc; deb_arch=armhf ;;
    # No Debian std fallback for these: rustup serves their gnu targets
    # (tier 2 with host tools), linked statically with Debian's cross gcc.
    riscv64) musl=riscv64gc-unknown-linux-musl; gnu=riscv64gc-unknown-linux-gnu; gcc=riscv64-linux-gnu-gcc; deb_arch= ;;
    ppc64le) musl=powerpc64le-unknown-linux-musl; gnu=powerpc64le-unknown-linux-gnu; gcc=powerpc64le-linux-gnu-gcc; deb_arch= ;;
    s390x) musl=s390x-unknown-linux-musl; gnu=s390x-unknown-linux-gnu; gcc=s390x-linux-gnu-gcc; deb_arch= ;;
    *) echo "unknown agent architecture: $arch (known: arm64, amd64, armv7, riscv64, ppc64le, s390x)" >&2; exit 2 ;;
  esac
  command -v "$gcc" >/dev/null || { echo "build-agents: $arch needs the linker $gcc (scripts/setup-host.sh installs it)" >&2; exit 1; }
  if have_target "$musl"; then
    triple="$musl"
    env "$(linker_var "$triple")=$gcc" \
      cargo build -q --profile agent -p kiln-guest-agent --bin kiln-agent --target "$triple"
  elif have_target "$gnu" || [ -z "$deb_arch" ]; then
    triple="$gnu"
    env "$(linker_var "$triple")=$gcc" RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build -q --profile agent -p kiln-guest-agent --bin kiln-agent --target "$triple"
  else
    "$root/scripts/setup-cross-rust.sh" "$deb_arch"
    cross="$root/.cache/cross-rust"
    triple="$gnu"
    env LD_LIBRARY_PATH="$cross/usr/lib/x86_64-linux-gnu" RUSTC="$cross/usr/bin/rustc" \
      "$(linker_var "$triple")=$gcc" RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build -q --profile agent -p kiln-guest-agent --bin kiln-agent --target "$triple"
  fi
  install -m 0755 "target/$triple/agent/kiln-agent" "$out/kiln-agent-$arch.tmp"
  mv "$out/kiln-agent-$arch.tmp" "$out/kiln-agent-$arch"
  echo "built $out/kiln-agent-$arch ($(stat -c %s "$out/kiln-agent-$arch") bytes, $triple)" >&2
done
