#!/usr/bin/env bash
# Install what kiln's build, tests and benchmarks need on a fresh Debian 12
# (bookworm) x86_64 machine. Idempotent; run as root (kiln itself never needs root).
#
# The Debian mirror is read from the host's apt sources (or $KILN_DEBIAN_MIRROR):
# no mirror host is written in this repository.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

sources=/etc/apt/sources.list.d/debian.sources
backports=/etc/apt/sources.list.d/kiln-backports.sources

# QEMU 10 comes from bookworm-backports (the image's qemu-utils already does, so
# bookworm's own qemu-system packages fail on a dependency break).
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri="${KILN_DEBIAN_MIRROR:-}"
  if [ -z "$uri" ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' "$sources")
  fi
  keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$sources")
  log "adding bookworm-backports from $uri"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
    "$uri" "$keyring" > "$backports"
fi

need_apt=0
for bin in qemu-system-aarch64 qemu-system-arm qemu-system-x86_64 qemu-system-riscv64 qemu-system-ppc64 qemu-system-s390x \
           aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc riscv64-linux-gnu-gcc powerpc64le-linux-gnu-gcc s390x-linux-gnu-gcc docker-registry \
           skopeo umoci htpasswd oci-image-tool mke2fs zstd xz curl runc debootstrap musl-gcc unshare fsck.erofs \
           x86_64-w64-mingw32-gcc file; do
  command -v "$bin" >/dev/null 2>&1 || need_apt=1
done
[ -x /usr/lib/wine/wine64 ] || need_apt=1
if [ "$need_apt" = 1 ]; then
  log "installing Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Their firmware (opensbi for riscv64, SLOF for ppc64, s390-ccw.img) comes as dependencies.
  apt-get install -y -qq -t bookworm-backports \
    qemu-system-arm qemu-system-x86 qemu-system-riscv qemu-system-ppc qemu-system-s390x >/dev/null
  apt-get install -y -qq --no-install-recommends \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
    gcc-riscv64-linux-gnu libc6-dev-riscv64-cross gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross \
    gcc-s390x-linux-gnu libc6-dev-s390x-cross \
    docker-registry skopeo umoci oci-image-tool apache2-utils runc \
    e2fsprogs zstd xz-utils curl ca-certificates python3 debootstrap openssl musl-tools util-linux erofs-utils \
    gcc-mingw-w64-x86-64 wine64 file >/dev/null
fi

# User-space vsock (kernel vhost-vsock is unavailable here, and on macOS/Windows).
if ! command -v vhost-device-vsock >/dev/null 2>&1; then
  log "building vhost-device-vsock (about 2.5 min)"
  cargo install --locked --quiet vhost-device-vsock --version 0.3.0
fi

# kiln run -v (host directories over virtio-fs): bookworm has no virtiofsd package.
if ! command -v virtiofsd >/dev/null 2>&1; then
  log "building virtiofsd (about 3 min)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libseccomp-dev libcap-ng-dev >/dev/null
  cargo install --locked --quiet virtiofsd --version 1.14.0
fi

# The static kiln (README "Static binary") links with rustup's musl target;
# its C parts (ring, zstd, xz) build with musl-tools' musl-gcc (.cargo/config.toml).
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl >/dev/null

# kiln for Windows and macOS hosts (scripts/cross-build.sh): rustup's
# standard libraries for them; mingw-w64 (above) links the Windows build and
# wine64 smoke-tests it; zig, from PyPI through cargo-zigbuild, links macOS's.
for t in x86_64-pc-windows-gnu aarch64-apple-darwin x86_64-apple-darwin; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t" >/dev/null
done
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  log "installing cargo-zigbuild and zig from PyPI"
  python3 -m pip install --quiet ziglang cargo-zigbuild 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages ziglang cargo-zigbuild
fi

# The riscv64, ppc64le and s390x guest agents: rustup's gnu targets, linked
# statically with the cross gcc above (rustup serves no musl std for them here).
for t in riscv64gc-unknown-linux-gnu powerpc64le-unknown-linux-gnu s390x-unknown-linux-gnu; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t" >/dev/null
done

# Rust toolchains that can build the aarch64 and armv7 guest agents.
"$(dirname "$0")/setup-cross-rust.sh" arm64
"$(dirname "$0")/setup-cross-rust.sh" armhf
log "host set-up done"
