#!/usr/bin/env bash
# kiln's test command (README.md, .ci/run): installs what is missing on a
# Debian 12 host, builds the guest agents, prepares fixtures and kernels,
# checks the static binary and the Windows and macOS cross-builds, then runs the conformance suites and every cargo
# test (unit, registry, OCI layout, VM). Kernels are cached in kiln's cache
# dir (~/.cache/kiln), so a second run on the same machine downloads nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/setup-host.sh
scripts/build-agents.sh

# Fixtures are reused only while every input that made them is unchanged:
# each is stored with its key (scripts/fixture-key.sh lists the inputs) and
# made again when the key differs.
fixtures=.cache/fixtures
mkdir -p "$fixtures"
fresh() { [ -e "$1" ] && [ "$(cat "$1.key" 2>/dev/null)" = "$2" ]; }
for arch in arm64 amd64 armv7 armv6 386 riscv64 ppc64le s390x; do
  out="$fixtures/busybox-$arch.tar"
  key="$(scripts/fixture-key.sh busybox "$arch")"
  fresh "$out" "$key" || { scripts/make-busybox-rootfs.sh "$arch" "$out" && echo "$key" > "$out.key"; }
done
cargo build --quiet --bins
./target/debug/kiln kernel fetch --platform linux/arm64,linux/amd64,linux/arm/v7,linux/riscv64,linux/ppc64le,linux/s390x >/dev/null
# The Debian base images the build tests start from, as OCI layouts
# (make-debian-base.sh also caches them per machine in ~/.cache/kiln-fixtures).
# Stage 1 runs as debootstrap runs it inside a docker container, so the
# container path (proc -> /proc) is checked on every host.
for arch in arm64 amd64; do
  out="$fixtures/debian-$arch"
  key="$(scripts/fixture-key.sh debian-base "$arch")"
  if ! fresh "$out" "$key"; then
    store="$(mktemp -d)"
    KILN_BASE_AS_IN_CONTAINER=1 KILN_DATA_DIR="$store" scripts/make-debian-base.sh "$arch" "kiln.local/debian:bookworm-$arch"
    rm -rf "$out" "$out.key"
    KILN_DATA_DIR="$store" ./target/debug/kiln save --format oci-dir -o "$out" "kiln.local/debian:bookworm-$arch" >/dev/null
    rm -rf "$store"
    echo "$key" > "$out.key"
  fi
done

# The static binary (README "Static binary"): built from nothing, linked
# statically, and booting a linux/arm64 guest.
cargo build --quiet --release --target x86_64-unknown-linux-musl
static=target/x86_64-unknown-linux-musl/release/kiln
# A dynamically linked ELF names its program interpreter (ld.so).
if readelf -l "$static" | grep -q 'program interpreter'; then
  echo "test.sh: $static is dynamically linked:" >&2; ldd "$static" >&2; exit 1
fi
machine="$("$static" vm exec --platform linux/arm64 --rootfs "$fixtures/busybox-arm64.tar" -- /bin/uname -m)"
[ "$machine" = aarch64 ] || { echo "test.sh: the static kiln's arm64 guest said '$machine', not aarch64" >&2; exit 1; }
echo "static kiln: $(stat -c %s "$static") bytes, arm64 guest ok" >&2

# kiln for Windows and macOS, cross-built, and the Windows one smoke-tested under wine.
scripts/cross-build.sh

scripts/conformance.sh
# Two at a time: VM tests each run a TCG guest on this 2-core machine.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace -- --test-threads 2 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
