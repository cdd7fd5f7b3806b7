#!/usr/bin/env bash
# Make a foreign Rust standard library available for the guest agent.
# Usage: scripts/setup-cross-rust.sh [arm64|armhf]   (Debian architecture; default arm64)
#
# Preferred: rustup's target (works on a normal developer machine).
# Fallback (this project's CI machines, where rustup cannot download targets):
# Debian's rustc-web and its foreign standard library, unpacked into
# .cache/cross-rust (one rustc, one libstd per architecture under usr/lib/rustlib).
# Prints nothing on success; scripts/build-agents.sh reads the result.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/cross-rust"
arch="${1:-arm64}"
case "$arch" in
  arm64) triple=aarch64-unknown-linux-gnu ;;
  armhf) triple=armv7-unknown-linux-gnueabihf ;;
  *) echo "setup-cross-rust: unknown architecture $arch (arm64, armhf)" >&2; exit 2 ;;
esac

if rustup target list --installed 2>/dev/null | grep -qx "$triple"; then exit 0; fi
if rustup target add "$triple" >/dev/null 2>&1; then exit 0; fi
if [ -x "$dest/usr/bin/rustc" ] && [ -d "$dest/usr/lib/rustlib/$triple" ]; then exit 0; fi

echo "==> unpacking Debian's rustc-web with the $arch standard library into $dest" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
o="-oAPT::Architecture=$arch -oAPT::Architectures=$arch -oDir::State::Lists=$work/lists -oDir::Cache=$work/cache"
# As root, apt would hand downloads to the _apt user, who cannot write into the temp dir.
[ "$(id -u)" != 0 ] || o="$o -oAPT::Sandbox::User=root"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
( cd "$work/debs"
  apt-get download rustc-web libstd-rust-web-1.96 libstd-rust-web-dev libllvm22 >/dev/null
  apt-get $o update >/dev/null || echo "setup-cross-rust: apt-get update for $arch reported errors; trying the download anyway" >&2
  apt-get $o download "libstd-rust-web-dev:$arch" >/dev/null )
# Unpack next to what is there, so the other architecture's libstd stays.
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
[ ! -d "$dest" ] || cp -a "$dest/." "$dest.tmp/"
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$dest.tmp"; done
rm -rf "$dest" && mv "$dest.tmp" "$dest"
