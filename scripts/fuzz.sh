#!/usr/bin/env bash
# Runs kiln's fuzz targets (fuzz/fuzz_targets/) with cargo fuzz and libFuzzer,
# one after the other, each for SECONDS, and prints per target the runs
# executed and whether it found a crash (kept in fuzz/artifacts/TARGET/).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 600 s, every target)
#
# Needs a nightly Rust toolchain (rustup toolchain install nightly) and
# cargo-fuzz (cargo install cargo-fuzz --locked); both are installed when
# missing. Seeds: small tars made here with GNU tar (pax, xattrs, links,
# long names), the repo's manifests and .dockerignore-like patterns; the
# corpus grows in fuzz/corpus/TARGET/ (not committed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-600}"
shift || true
cd "$root/fuzz"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

seed_tars() {
  local dir="$1" work
  work="$(mktemp -d)"
  mkdir -p "$work/r/d/sub" && echo hello >"$work/r/d/f" && ln -s f "$work/r/d/l" && ln "$work/r/d/f" "$work/r/d/h"
  mkdir -p "$work/r/$(printf 'n%.0s' {1..120})" && mkfifo "$work/r/p"
  setfattr -n user.blob -v 0x010a00 "$work/r/d/f" 2>/dev/null || true
  tar --format=pax --xattrs -cf "$dir/pax.tar" -C "$work/r" .
  tar --format=gnu -cf "$dir/gnu.tar" -C "$work/r" .
  tar --format=ustar -cf "$dir/ustar.tar" -C "$work/r" d
  rm -rf "$work"
}

for t in "${targets[@]}"; do
  corpus="corpus/$t"
  mkdir -p "$corpus"
  case "$t" in
    tar_read|layer_to_erofs) seed_tars "$corpus" ;;
    manifest)
      find "$root/tests" "$root/src" -name '*.json' -size -64k -exec cp {} "$corpus/" \; 2>/dev/null || true
      printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%064d","size":1,"platform":{"os":"linux","architecture":"arm64"}}]}' 0 >"$corpus/index.json"
      printf '{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{"type":"layers","diff_ids":[]}}' >"$corpus/config.json" ;;
    dockerignore) printf 'app/main.rs\n*.md\n!README.md\n**/target\n[a-c]?/x\n' >"$corpus/seed" ;;
    copy_patterns) printf '[a-c]*/**.rs\nbin/run.rs' >"$corpus/seed" ;;
  esac
  log="$(mktemp)"
  echo "fuzz: $t for ${secs}s" >&2
  status=0
  cargo +nightly fuzz run "$t" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  if [ "$status" -eq 0 ]; then
    echo "fuzz: $t: ${runs:-?} runs in ${secs}s, no crash"
  else
    echo "fuzz: $t: FAILED after ${runs:-?} runs (exit $status); artifacts in fuzz/artifacts/$t/; log tail:"
    tail -30 "$log"
  fi
  rm -f "$log"
done
