#!/usr/bin/env bash
# Makes a small Debian bookworm (minbase) image for ARCH in kiln's local image
# store, tagged TAG, without binfmt_misc, qemu-user or a container registry.
#
# Usage: scripts/make-debian-base.sh ARCH TAG
#   ARCH  a Debian architecture: arm64 | amd64 | armhf (linux/arm/v7) |
#         armel (linux/arm/v5: Debian's armel is ARMv5TE) | i386 (linux/386) |
#         ppc64el (linux/ppc64le) | s390x | riscv64 (from trixie, where
#         riscv64 became official)
#   TAG   image name; the examples use kiln.local/debian:bookworm-ARCH
#
# How:
#   1. stage 1 on the host: `debootstrap --foreign --variant=minbase` (needs
#      root, like all test set-up scripts; it only downloads and unpacks .debs,
#      so no foreign code runs on the host), tarred with numeric owners.
#      Inside a container (/.dockerenv, a docker cgroup) debootstrap replaces
#      the target's /proc with a symlink `proc -> /proc`; the agent mounts
#      /proc over such a self-link as docker users expect, so stage 2 and
#      the image come out the same on bare hosts and in containers;
#   2. stage 2 in kiln's own VM: `kiln vm exec --rootfs stage1.tar` runs
#      `debootstrap --second-stage` chrooted into the unpacked tar (the agent
#      mounts /proc, /sys, /dev and a tmpfs /tmp there, which is all it
#      needs; no network), cleans apt's lists and caches, and streams the
#      finished root file system back as a tar on stdout. The agent's mounts
#      and its bind mounts of the VM's /etc/resolv.conf and /etc/hosts are
#      excluded from that tar, so nothing of the VM leaks into the image;
#   3. `kiln import --platform PLATFORM` stores it as a one-layer image
#      with CMD ["bash"] and the usual PATH.
#
# Cache: the image is kept as an OCI archive (`kiln save`) in
# ${XDG_CACHE_HOME:-$HOME/.cache}/kiln-fixtures/, keyed by every input that
# makes it (`scripts/fixture-key.sh debian-base ARCH` lists them: this
# script, the guest agent, kiln's VM and import code, the kernel pins);
# later runs just `kiln load` it (a few seconds). Changing any input makes
# a new key. Delete the folder to force a rebuild.
#
# Environment:
#   KILN                 kiln binary (default: target/debug/kiln)
#   KILN_DEBIAN_MIRROR   Debian mirror URL (default: the one apt uses, from
#                        /etc/apt/sources.list.d/debian.sources or sources.list)
#   KILN_BASE_MEMORY     guest memory in MiB for stage 2 (default 2048)
#   KILN_BASE_AS_IN_CONTAINER=1   run stage 1 as debootstrap runs it inside a
#                        docker container (its container detection forced, in
#                        a private mount namespace), so a bare host checks
#                        that path too; scripts/test.sh sets it
#   KILN_DATA_DIR, KILN_CACHE_DIR   as for kiln itself
#
# Timings (stage 1, stage 2, import) are printed to stderr.
set -euo pipefail

usage() { echo "usage: $0 arm64|amd64|armhf|armel|i386|ppc64el|s390x|riscv64 TAG" >&2; exit 2; }
[ $# -eq 2 ] || usage
arch="$1"
tag="$2"
# The OCI platform of each Debian architecture, as Docker Hub's debian images name them.
suite=bookworm
case "$arch" in
  arm64 | amd64 | s390x) platform="linux/$arch" ;;
  armhf) platform=linux/arm/v7 ;;
  armel) platform=linux/arm/v5 ;;
  i386) platform=linux/386 ;;
  ppc64el) platform=linux/ppc64le ;;
  riscv64) platform=linux/riscv64; suite=trixie ;;
  *) echo "$0: unknown ARCH $arch (known: arm64, amd64, armhf, armel, i386, ppc64el, s390x, riscv64)" >&2; usage ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$root/target/debug/kiln}"
[ -x "$kiln" ] || { echo "$0: kiln binary $kiln not found; run cargo build or set KILN" >&2; exit 1; }
memory="${KILN_BASE_MEMORY:-2048}"

key="$("$root/scripts/fixture-key.sh" debian-base "$arch")"
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/kiln-fixtures"
cache="$cache_dir/debian-$suite-minbase-$arch-$key.oci.tar"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "make-debian-base: $*" >&2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-debian-base.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

if [ -f "$cache" ]; then
  t=$(now)
  mkdir "$work/layout"
  tar -xf "$cache" -C "$work/layout"
  "$kiln" load "$work/layout" --name "$tag" >&2
  log "$tag loaded from the cache $cache in $(since "$t")s"
  exit 0
fi

# shellcheck source=lib/debian-mirror.sh
. "$root/scripts/lib/debian-mirror.sh"
mirror="${KILN_DEBIAN_MIRROR:-$(debian_mirror "$suite")}"
[ -n "$mirror" ] || { echo "$0: no Debian mirror for $suite in apt's sources; set KILN_DEBIAN_MIRROR" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "$0: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

log "stage 1: debootstrap --foreign --variant=minbase --arch=$arch $suite from $mirror"
t=$(now)
stage1=(debootstrap --foreign --variant=minbase --arch="$arch" "$suite" "$work/stage1" "$mirror")
if [ "${KILN_BASE_AS_IN_CONTAINER:-0}" = 1 ]; then
  # debootstrap's detect_container looks for a docker cgroup in
  # /proc/1/mountinfo; show it one in a private mount namespace.
  echo "0 0 0:0 / /sys/fs/cgroup rw - cgroup cgroup /docker/kiln/sys/fs/cgroup" > "$work/mountinfo"
  stage1=(unshare --mount --propagation private sh -c 'mount --bind "$0" /proc/1/mountinfo && exec "$@"' "$work/mountinfo" "${stage1[@]}")
fi
"${stage1[@]}" > "$work/stage1.log" 2>&1 || {
  tail -n 30 "$work/stage1.log" >&2
  echo "$0: debootstrap stage 1 failed (log above)" >&2
  exit 1
}
if [ "${KILN_BASE_AS_IN_CONTAINER:-0}" = 1 ] && [ ! -L "$work/stage1/proc" ]; then
  echo "$0: KILN_BASE_AS_IN_CONTAINER=1, but debootstrap did not take its container path (no proc -> /proc)" >&2
  exit 1
fi
tar --numeric-owner -cf "$work/stage1.tar" -C "$work/stage1" .
rm -rf "$work/stage1"
stage1_s=$(since "$t")
log "stage 1 done in ${stage1_s}s ($(du -m "$work/stage1.tar" | cut -f1) MB)"

# Runs chrooted in the VM as root. Everything but the final tar writes to
# stderr: stdout is the image's file system.
stage2='set -e
/debootstrap/debootstrap --second-stage >&2
# Caches and logs of the install; debootstrap copied the build host'"'"'s
# hostname, the VM bind-mounts its resolv.conf and hosts (excluded below).
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*
rm -f /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/dpkg.log /var/log/alternatives.log /var/log/bootstrap.log /var/log/apt/*
echo localhost > /etc/hostname
chmod 644 /etc/hostname
# As in Docker'"'"'s Debian images: package installs never start services.
printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
cd /
exec tar --numeric-owner --xattrs --xattrs-include="security.capability" --one-file-system -cf - \
  "--exclude=./proc/*" "--exclude=./sys/*" "--exclude=./dev/*" "--exclude=./tmp/*" \
  --exclude=./etc/resolv.conf --exclude=./etc/hosts .'

log "stage 2: debootstrap --second-stage in a $platform VM (kiln vm exec)"
t=$(now)
"$kiln" vm exec --platform "$platform" --memory "$memory" --rootfs "$work/stage1.tar" \
  -- /bin/sh -c "$stage2" > "$work/rootfs.tar" 2> "$work/stage2.log" || {
  tail -n 30 "$work/stage2.log" >&2
  echo "$0: stage 2 in the VM failed (log above)" >&2
  exit 1
}
rm -f "$work/stage1.tar"
# The mount points are plain directories in the image, whatever stage 1 left.
# One pass over the tar lists all four (a missing one makes tar fail: checked below).
listing="$(tar -tvf "$work/rootfs.tar" --no-recursion ./proc ./sys ./dev ./tmp 2>/dev/null || true)"
for d in proc sys dev tmp; do
  grep -qE "^d.* \./$d/?\$" <<<"$listing" \
    || { echo "$0: /$d in the finished root file system is not a directory" >&2; exit 1; }
done
stage2_s=$(since "$t")
log "stage 2 done in ${stage2_s}s ($(du -m "$work/rootfs.tar" | cut -f1) MB)"

t=$(now)
digest=$("$kiln" import --platform "$platform" \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["bash"]' \
  -m "debootstrap --variant=minbase $suite ($arch), scripts/make-debian-base.sh $key" \
  "$work/rootfs.tar" "$tag")
import_s=$(since "$t")
log "imported $tag ($digest) in ${import_s}s"

mkdir -p "$cache_dir"
# kiln save writes under a temp name and renames, so a cache entry is whole
# or absent; a concurrent run that saved first is as good.
"$kiln" save -o "$cache" "$tag" >&2 || [ -f "$cache" ]
# Entries made by older versions of this script are never read again.
for old in "$cache_dir/debian-$suite-minbase-$arch-"*.oci.tar; do
  [ "$old" = "$cache" ] || rm -f "$old"
done
log "cached as $cache"
echo "make-debian-base: timings $arch: stage1 ${stage1_s}s stage2 ${stage2_s}s import ${import_s}s" >&2
