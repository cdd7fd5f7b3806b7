#!/usr/bin/env bash
# Benchmark: build examples/nginx for linux/arm64 with kiln (full-system
# emulation) and with `buildah bud` (qemu-user through binfmt_misc, what
# buildx and buildah use), from the same Debian base image served by a local
# registry, cold and warm, and print the times and ratios.
#
# Usage: scripts/bench-nginx.sh            (both tools)
#        BENCH_TOOLS=buildah scripts/bench-nginx.sh   (one tool: kiln or buildah)
#
# - Base image: kiln.local/debian:bookworm-arm64 from scripts/make-debian-base.sh
#   (cached after its first run), pushed to docker-registry on
#   127.0.0.1:$BENCH_REGISTRY_PORT (default 5000) as debian:bookworm-arm64.
#   Both tools pull it from there.
# - Cold: kiln with empty KILN_DATA_DIR/KILN_CACHE_DIR (only the guest kernels
#   are kept, as a real user has them after `kiln kernel fetch`); buildah with
#   a fresh vfs storage root. Warm: the same build again on that state.
# - buildah needs qemu-user-static registered in binfmt_misc. This script
#   registers qemu-aarch64 only for its run and restores the previous state
#   on exit (also on failure or Ctrl-C). Needs root for that, for apt-get
#   (buildah, qemu-user-static and docker-registry are installed if
#   missing) and for buildah.
#
# Environment: KILN (kiln binary; default: cargo build --release, then
# target/release/kiln), BENCH_TOOLS, BENCH_REGISTRY_PORT, KILN_DEBIAN_MIRROR,
# BENCH_LOG_DIR (keep every build's log there).
#
# The machine's load average is printed with the results: other work on the
# host slows both tools, so compare numbers from one quiet run.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ -n "${KILN:-}" ]; then
  kiln="$KILN"
else
  # Measure what the tree builds now, optimised (as bench-pull.sh does).
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin kiln
  kiln="$root/target/release/kiln"
fi
tools="${BENCH_TOOLS:-kiln buildah}"
port="${BENCH_REGISTRY_PORT:-5000}"
platform=linux/arm64
base_local=kiln.local/debian:bookworm-arm64
base_remote="127.0.0.1:$port/debian:bookworm-arm64"
context="$root/examples/nginx"

log() { echo "bench-nginx: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
wants() { case " $tools " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

need_pkgs=()
command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
command -v curl >/dev/null || need_pkgs+=(curl)
if wants buildah; then
  command -v buildah >/dev/null || need_pkgs+=(buildah)
  [ -x /usr/bin/qemu-aarch64-static ] || need_pkgs+=(qemu-user-static)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-nginx.XXXXXX")"
registry_pid=""
binfmt_mounted_by_us=0
binfmt=/proc/sys/fs/binfmt_misc
# Whether qemu-aarch64 was registered before this script (installing
# qemu-user-static may register it; we undo that too).
had_qemu_aarch64=0
[ -e "$binfmt/qemu-aarch64" ] && had_qemu_aarch64=1

cleanup() {
  set +e
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null; fi
  if [ "$had_qemu_aarch64" = 0 ] && [ -e "$binfmt/qemu-aarch64" ]; then
    echo -1 > "$binfmt/qemu-aarch64" && log "unregistered qemu-aarch64 from binfmt_misc"
  fi
  if [ "$binfmt_mounted_by_us" = 1 ]; then umount "$binfmt"; fi
  if [ -n "${BENCH_LOG_DIR:-}" ]; then mkdir -p "$BENCH_LOG_DIR" && cp "$work"/*.log "$BENCH_LOG_DIR"/ 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2
fi

# The base image: built once by make-debian-base.sh (then loaded from its cache).
if ! "$kiln" inspect "$base_local" >/dev/null 2>&1; then
  KILN="$kiln" "$root/scripts/make-debian-base.sh" arm64 "$base_local"
fi

# A private registry on loopback only.
mkdir -p "$work/registry"
cat > "$work/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; log "docker-registry did not start (port $port in use?)"; exit 1; }
  sleep 0.1
done
"$kiln" push "$base_local" "$base_remote" >&2

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
declare -A result
run_timed() { # name, then the command; its output goes to $work/<name>.log
  local name="$1"; shift
  local t0 t1
  t0=$(now)
  if ! "$@" > "$work/$name.log" 2>&1; then
    tail -n 40 "$work/$name.log" >&2
    log "$name failed (log above)"
    exit 1
  fi
  t1=$(now)
  result[$name]=$(elapsed "$t0" "$t1")
  log "$name: ${result[$name]}s"
}

if wants buildah; then
  if [ ! -d "$binfmt" ] || [ ! -e "$binfmt/register" ]; then
    mount -t binfmt_misc binfmt_misc "$binfmt"
    binfmt_mounted_by_us=1
  fi
  if [ ! -e "$binfmt/qemu-aarch64" ]; then
    # Debian's own registration line for qemu-user-static, with F (fix
    # binary) so it works in buildah's chroot.
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -r "$conf" ] || { log "$conf is missing: is qemu-user-static installed?"; exit 1; }
    grep -v '^#' "$conf" | head -n1 > "$binfmt/register"
  fi
  log "binfmt_misc: $(tr '\n' ' ' < "$binfmt/qemu-aarch64")"
  b_root="$work/buildah"
  buildah_bud() {
    buildah --root "$b_root/root" --runroot "$b_root/runroot" --storage-driver vfs \
      bud --platform "$platform" --isolation chroot --layers --tls-verify=false \
      --build-arg "BASE=$base_remote" -t nginx-arm64 "$context"
  }
  run_timed buildah-cold buildah_bud
  run_timed buildah-warm buildah_bud
  buildah --root "$b_root/root" --runroot "$b_root/runroot" --storage-driver vfs \
    inspect --format '{{.OCIv1.Architecture}} {{.OCIv1.Config.Cmd}}' nginx-arm64 >&2
  buildah --root "$b_root/root" --runroot "$b_root/runroot" --storage-driver vfs rm -a >/dev/null 2>&1 || true
  # Unregister right away: kiln must not (and does not) need it.
  if [ "$had_qemu_aarch64" = 0 ]; then echo -1 > "$binfmt/qemu-aarch64"; fi
fi

if wants kiln; then
  if ! "$kiln" build --help >/dev/null 2>&1; then
    log "this kiln has no 'build' command yet: skipping the kiln half"
  else
    k_data="$work/kiln-data"
    k_cache="$work/kiln-cache"
    mkdir -p "$k_cache"
    # Keep the downloaded guest kernels (they are pinned and verified).
    user_cache="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
    [ -d "$user_cache/kernels" ] && cp -a "$user_cache/kernels" "$k_cache/kernels"
    kiln_build() {
      KILN_DATA_DIR="$k_data" KILN_CACHE_DIR="$k_cache" "$kiln" build --platform "$platform" -t nginx-arm64 \
        --build-arg "BASE=$base_remote" "$context"
    }
    run_timed kiln-cold kiln_build
    run_timed kiln-warm kiln_build
    KILN_DATA_DIR="$k_data" "$kiln" inspect nginx-arm64 | grep -E '"(architecture|Cmd)"' -A1 >&2 || true
  fi
fi

echo
echo "nginx example, $platform, base $base_remote (kiln: $kiln)"
echo "load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
printf '%-10s %10s %10s\n' tool cold_s warm_s
for t in kiln buildah; do
  [ -n "${result[$t-cold]:-}" ] && printf '%-10s %10s %10s\n' "$t" "${result[$t-cold]}" "${result[$t-warm]}"
done
if [ -n "${result[kiln-cold]:-}" ] && [ -n "${result[buildah-cold]:-}" ]; then
  echo "ratio kiln/buildah: cold $(ratio "${result[kiln-cold]}" "${result[buildah-cold]}"), warm $(ratio "${result[kiln-warm]}" "${result[buildah-warm]}")"
fi
