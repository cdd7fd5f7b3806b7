#!/usr/bin/env bash
# The main job as far as kiln goes today: on an x86_64 host, without root in
# kiln and without binfmt_misc, boot an arm64 guest and run a command in a
# busybox root file system. (kiln build arrives with the build-engine issue.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
platform="${1:-linux/arm64}"
arch="${platform#linux/}"
scripts/setup-host.sh
scripts/build-agents.sh
cargo build --quiet --release
mkdir -p .cache/fixtures
[ -s ".cache/fixtures/busybox-$arch.tar" ] || scripts/make-busybox-rootfs.sh "$arch" ".cache/fixtures/busybox-$arch.tar"
exec target/release/kiln vm exec --timings --platform "$platform" \
  --rootfs ".cache/fixtures/busybox-$arch.tar" -- /bin/busybox uname -m
