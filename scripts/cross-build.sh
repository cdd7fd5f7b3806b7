#!/usr/bin/env bash
# kiln for the hosts its VM tests do not run on (README "Other hosts"):
# Windows (x86_64-pc-windows-gnu, linked by Debian's mingw-w64) and macOS
# (aarch64 and x86_64, linked by cargo-zigbuild with zig from PyPI), built
# here from Linux and kept in target/<triple>/release/. The Windows build is
# then smoke-tested under wine:
#   - `kiln.exe --version` and `kiln.exe build --help`;
#   - a FROM scratch build (COPY, ENV, WORKDIR; no VM) to an OCI archive,
#     whose digest must equal the Linux kiln's for the same context;
#   - the unit tests that do not need Unix file metadata.
# scripts/setup-host.sh installs what this needs. Prints one size line per binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# mingw's gcc leaves empty cc* files in the temp folder: keep them in ours.
mkdir "$work/tmp"
TMPDIR="$work/tmp" cargo build --quiet --release --target x86_64-pc-windows-gnu
for t in aarch64-apple-darwin x86_64-apple-darwin; do
  TMPDIR="$work/tmp" cargo zigbuild --quiet --release --target "$t" 2>/dev/null \
    || TMPDIR="$work/tmp" cargo zigbuild --release --target "$t"
done
for t in x86_64-pc-windows-gnu/release/kiln.exe aarch64-apple-darwin/release/kiln x86_64-apple-darwin/release/kiln; do
  echo "cross-build: target/$t: $(stat -c %s "target/$t") bytes ($(file -b "target/$t" | cut -d, -f1))" >&2
done

wine64=$(command -v wine64 || echo /usr/lib/wine/wine64)
[ -x "$wine64" ] || { echo "cross-build: wine64 is not installed (scripts/setup-host.sh)" >&2; exit 1; }
# Debian 12's wine lacks bcryptprimitives.dll, which Rust's std imports on Windows 10+.
x86_64-w64-mingw32-gcc -O2 -shared -o "$work/bcryptprimitives.dll" \
  scripts/wine/bcryptprimitives.c scripts/wine/bcryptprimitives.def -ladvapi32
export WINEPREFIX="$root/target/wine-prefix" WINEDEBUG=-all WINEPATH="Z:${work//\//\\}"
win() { "$wine64" "$@"; }
exe=target/x86_64-pc-windows-gnu/release/kiln.exe

version="$(win "$exe" --version | tr -d '\r')"
# The same line as the Linux kiln's: version and, when known, the commit.
expected="$(cargo run --quiet -- --version)"
case "$expected" in "kiln $(cargo pkgid | sed 's/.*[#@]//')"*) ;; *) echo "cross-build: kiln --version said '$expected'" >&2; exit 1 ;; esac
[ "$version" = "$expected" ] || { echo "cross-build: kiln.exe --version said '$version', the Linux kiln '$expected'" >&2; exit 1; }
win "$exe" build --help | grep -q -- '--cache-to' || { echo "cross-build: kiln.exe build --help lacks --cache-to" >&2; exit 1; }

mkdir -p "$work/ctx"
printf 'FROM scratch\nCOPY hello.txt /greeting/hello.txt\nENV GREETING=hi\nWORKDIR /app\n' > "$work/ctx/Dockerfile"
echo hello > "$work/ctx/hello.txt"
digest() { sed -n 's/.*"containerimage.digest": "\(sha256:[0-9a-f]*\)".*/\1/p' "$1"; }
(cd "$work/ctx" && KILN_DATA_DIR='data-win' win "$root/$exe" build -q --platform linux/arm64 \
   --build-arg SOURCE_DATE_EPOCH=1700000000 --metadata-file win.json -o type=oci,dest=win.tar . >/dev/null)
KILN_DATA_DIR="$work/data-linux" cargo run --quiet -- build -q --platform linux/arm64 \
  --build-arg SOURCE_DATE_EPOCH=1700000000 --metadata-file "$work/linux.json" -o "type=oci,dest=$work/linux.tar" "$work/ctx" >/dev/null
[ -n "$(digest "$work/ctx/win.json")" ] && [ "$(digest "$work/ctx/win.json")" = "$(digest "$work/linux.json")" ] \
  || { echo "cross-build: kiln.exe built $(digest "$work/ctx/win.json"), the Linux kiln $(digest "$work/linux.json")" >&2; exit 1; }
echo "cross-build: kiln.exe under wine built the same image as the Linux kiln ($(digest "$work/linux.json"))" >&2

TMPDIR="$work/tmp" CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$wine64" cargo test --quiet --release --target x86_64-pc-windows-gnu --lib 2>&1 \
  | tr -d '\r' | grep -E '^test result|FAILED|panicked' >&2
