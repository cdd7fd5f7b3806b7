#!/usr/bin/env bash
# kiln's test command (README.md, .ci/run): installs what is missing on a
# Debian 12 host, builds the guest agents, prepares fixtures and kernels,
# then runs the conformance suites and every cargo test (unit, registry,
# OCI layout, VM). Kernels are cached in kiln's cache dir (~/.cache/kiln),
# so a second run on the same machine downloads nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/setup-host.sh
scripts/build-agents.sh
mkdir -p .cache/fixtures
for arch in arm64 amd64 armv7; do
  [ -s ".cache/fixtures/busybox-$arch.tar" ] || scripts/make-busybox-rootfs.sh "$arch" ".cache/fixtures/busybox-$arch.tar"
done
cargo build --quiet --bins
./target/debug/kiln kernel fetch --platform linux/arm64,linux/amd64,linux/arm/v7 >/dev/null
# The Debian base images the build tests start from (made once per machine:
# make-debian-base.sh caches them in ~/.cache/kiln-fixtures), as OCI layouts.
for arch in arm64 amd64; do
  if [ ! -s ".cache/fixtures/debian-$arch/index.json" ]; then
    store="$(mktemp -d)"
    KILN_DATA_DIR="$store" scripts/make-debian-base.sh "$arch" "kiln.local/debian:bookworm-$arch"
    rm -rf ".cache/fixtures/debian-$arch"
    KILN_DATA_DIR="$store" ./target/debug/kiln save --format oci-dir -o ".cache/fixtures/debian-$arch" "kiln.local/debian:bookworm-$arch" >/dev/null
    rm -rf "$store"
  fi
done

scripts/conformance.sh
# Two at a time: VM tests each run a TCG guest on this 2-core machine.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace -- --test-threads 2 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
