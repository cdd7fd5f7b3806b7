#!/usr/bin/env bash
# Prints the cache key of a test fixture: a sha256 over every input that
# makes it, so a cached fixture is reused only while all of them are
# unchanged (and is made again, in CI too, as soon as one changes).
#
# Usage: scripts/fixture-key.sh debian-base|busybox ARCH
#
# The inputs, per fixture:
#   debian-base  scripts/make-debian-base.sh (stage 1 and 2), this script,
#                the guest agent (guest-agent/, scripts/build-agents.sh:
#                stage 2 runs in its root), kiln's VM code (src/vm/,
#                src/cli/vm.rs, kernels/: the guest it runs in), kiln's
#                import code (src/oci/import.rs, src/oci/layer.rs,
#                src/cli/import.rs), Cargo.lock, and ARCH.
#   busybox      scripts/make-busybox-rootfs.sh, this script, and ARCH
#                (the .deb it unpacks is kept in .cache/debs).
# What the Debian mirror serves is not part of a key: a base image stays
# valid while the pinned suite (bookworm) is the same.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[ $# -eq 2 ] || { echo "usage: $0 debian-base|busybox ARCH" >&2; exit 2; }
case "$1" in
  debian-base)
    inputs=(scripts/make-debian-base.sh scripts/fixture-key.sh scripts/build-agents.sh guest-agent
            src/vm src/cli/vm.rs kernels src/oci/import.rs src/oci/layer.rs src/cli/import.rs Cargo.lock
            scripts/lib) ;;
  busybox)
    inputs=(scripts/make-busybox-rootfs.sh scripts/fixture-key.sh scripts/lib) ;;
  *) echo "$0: unknown fixture $1 (debian-base, busybox)" >&2; exit 2 ;;
esac
# Each file's path and content, in a fixed order; build outputs never count.
{
  echo "fixture $1 $2"
  find "${inputs[@]}" -type f ! -path '*/target/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16
