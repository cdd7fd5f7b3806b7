#!/usr/bin/env bash
# kiln's main job: on an x86_64 host, with no root in kiln and no binfmt_misc,
# build the nginx example (examples/nginx) as a linux/arm64 image, the way
# `docker buildx build --platform linux/arm64 -t nginx-arm64 .` would.
#
# Set-up (idempotent, needs root): host packages, guest agents, the static
# kiln (the one binary users get: x86_64-unknown-linux-musl, the guest agents
# embedded), and a Debian bookworm base image made without any registry
# (scripts/make-debian-base.sh; cached in ~/.cache/kiln-fixtures).
# Then: kiln build, and an OCI layout of the result in target/nginx-arm64.
# Serve it with: target/x86_64-unknown-linux-musl/release/kiln run -p 8080:80 nginx-arm64
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
platform="${1:-linux/arm64}"
arch="${platform#linux/}"
scripts/setup-host.sh
scripts/build-agents.sh
cargo build --quiet --release --target x86_64-unknown-linux-musl
kiln=target/x86_64-unknown-linux-musl/release/kiln
KILN="$kiln" scripts/make-debian-base.sh "$arch" "kiln.local/debian:bookworm-$arch"
"$kiln" build --platform "$platform" -t "nginx-$arch" examples/nginx
rm -rf "target/nginx-$arch"
"$kiln" save --format oci-dir -o "target/nginx-$arch" "nginx-$arch"
skopeo inspect --override-arch "$arch" "oci:target/nginx-$arch:latest" | grep -E '"(Architecture|Os)"'
