#!/usr/bin/env bash
# Make a tiny root filesystem tar for guest tests from Debian's busybox-static.
#
# Usage: scripts/make-busybox-rootfs.sh ARCH OUT.tar
#   ARCH: a Debian or OCI architecture name: arm64 (aarch64), amd64 (x86_64),
#   armhf (arm, armv7), i386 (386), armel (armv6, armv5: Debian's armel is ARMv5TE),
#   ppc64el (ppc64le), s390x, riscv64 (from trixie: riscv64 is official since then)
#
# The .deb of the foreign architecture is downloaded with apt's own mirror and
# signature checks, into private apt state under .cache/ (the system's apt
# configuration and package lists are not touched), and kept in .cache/debs/.
# Needs no root: ownership (root:root) and modes are set by tar.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
die() { printf 'make-busybox-rootfs: %s\n' "$*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 ARCH OUT.tar"
case "$1" in
  arm64|aarch64) arch=arm64 ;;
  amd64|x86_64) arch=amd64 ;;
  armhf|arm|armv7) arch=armhf ;;
  i386|386|i686) arch=i386 ;;
  armel|armv6|armv5) arch=armel ;;
  ppc64el|ppc64le) arch=ppc64el ;;
  s390x) arch=s390x ;;
  riscv64) arch=riscv64 ;;
  *) die "unsupported architecture $1 (arm64, amd64, armhf, i386, armel, ppc64el, s390x, riscv64)" ;;
esac
# The suite apt's own sources name, unless the architecture needs a newer one.
suite=
[ "$arch" != riscv64 ] || suite=trixie
out="$2"
for tool in apt-get dpkg-deb tar; do command -v "$tool" >/dev/null || die "needs $tool"; done

debs="$root/.cache/debs"
mkdir -p "$debs"
deb=$(ls "$debs"/busybox-static_*_"$arch".deb 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$deb" ]; then
  state="$root/.cache/apt-$arch"
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
  o=(-oAPT::Architecture="$arch" -oAPT::Architectures="$arch"
     -oDir::State::Lists="$state/lists" -oDir::Cache="$state/cache" -oDebug::NoLocking=1)
  if [ -n "$suite" ]; then
    # A private sources list for that suite, on the mirror apt uses.
    # shellcheck source=lib/debian-mirror.sh
    . "$root/scripts/lib/debian-mirror.sh"
    mirror="${KILN_DEBIAN_MIRROR:-$(debian_mirror "$suite")}"
    [ -n "$mirror" ] || die "no Debian mirror in apt's sources; set KILN_DEBIAN_MIRROR"
    mkdir -p "$state/parts"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" > "$state/sources.list"
    o+=(-oDir::Etc::SourceList="$state/sources.list" -oDir::Etc::SourceParts="$state/parts")
  fi
  # As root, apt would hand downloads to the _apt user, who cannot write into the checkout.
  [ "$(id -u)" != 0 ] || o+=(-oAPT::Sandbox::User=root)
  echo "==> downloading busybox-static:$arch" >&2
  # One unreachable or mid-sync suite (e.g. security) must not stop us when
  # the suite carrying busybox-static is fine; apt says what failed.
  apt-get "${o[@]}" -qq update >/dev/null || echo "make-busybox-rootfs: apt-get update for $arch reported errors; trying the download anyway" >&2
  ( cd "$debs" && apt-get "${o[@]}" -qq download "busybox-static:$arch" >/dev/null ) || die "apt-get download busybox-static:$arch failed"
  deb=$(ls "$debs"/busybox-static_*_"$arch".deb | sort -V | tail -n1)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/deb"
# bookworm ships bin/busybox, trixie (merged /usr) usr/bin/busybox.
bin="$work/deb/bin/busybox"
[ -x "$bin" ] || bin="$work/deb/usr/bin/busybox"
[ -x "$bin" ] || die "$deb has no bin/busybox or usr/bin/busybox"

fs="$work/rootfs"
mkdir -p "$fs"/{bin,etc,tmp,proc,sys,dev,root,usr/bin,var}
cp "$bin" "$fs/bin/busybox"
chmod 0755 "$fs/bin/busybox"
# Common applets; a foreign busybox cannot be asked for its list on this host.
for applet in sh ash awk basename cat chmod chown cp cut date dd df dirname du echo env \
              expr false find grep gunzip gzip head hostname id kill ln ls mkdir mktemp mount \
              mv od printf ps pwd readlink rm rmdir sed seq sha256sum sleep sort stat sync tail \
              tar tee test touch tr true umount uname uniq vi wc wget which xargs yes '['; do
  ln -s busybox "$fs/bin/$applet"
done
ln -s ../../bin/busybox "$fs/usr/bin/env"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$fs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$fs/etc/group"
chmod 1777 "$fs/tmp"
chmod 0700 "$fs/root"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out.tmp" -C "$fs" .
mv "$out.tmp" "$out"
version=$(dpkg-deb -f "$deb" Version)
echo "$out: busybox-static $version for $arch"
