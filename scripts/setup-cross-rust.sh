#!/usr/bin/env bash
# Make an aarch64 Rust standard library available for the guest agent.
#
# Preferred: rustup's target (works on a normal developer machine).
# Fallback (this project's CI machines, where rustup cannot download targets):
# Debian's rustc-web and its arm64 libstd, unpacked into .cache/cross-rust.
# Prints nothing on success; scripts/build-agents.sh reads the result.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/cross-rust"

if rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$'; then exit 0; fi
if rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1; then exit 0; fi
if [ -x "$dest/usr/bin/rustc" ] && [ -d "$dest/usr/lib/rustlib/aarch64-unknown-linux-gnu" ]; then exit 0; fi

echo "==> unpacking Debian's rustc-web with the arm64 standard library into $dest" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
o="-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oDir::State::Lists=$work/lists -oDir::Cache=$work/cache"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
( cd "$work/debs"
  apt-get download rustc-web libstd-rust-web-1.96 libstd-rust-web-dev libllvm22 >/dev/null
  apt-get $o update >/dev/null
  apt-get $o download libstd-rust-web-dev:arm64 >/dev/null )
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$dest.tmp"; done
rm -rf "$dest" && mv "$dest.tmp" "$dest"
