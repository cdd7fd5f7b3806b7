#!/usr/bin/env bash
# Fuzzes kiln's parsers of untrusted input with cargo-fuzz (libFuzzer), each
# target for SECONDS, one after the other, and prints per target the runs it
# executed and whether it crashed, hung or ran out of memory.
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 300 s, every target)
# Targets (fuzz/fuzz_targets/): parse and expand (the Dockerfile frontend),
# tar_read (the one tar reader of host and guest), layer_to_erofs (a layer
# tar to a disk image, as every pulled layer is turned on the host),
# layer_unpack (the guest agent's unpack, run on the host as root),
# manifest (manifests, indexes, configs), dockerignore and copy_patterns.
# Needs `cargo install cargo-fuzz`; uses nightly features through
# RUSTC_BOOTSTRAP unless a nightly toolchain is selected. New corpus entries
# go to fuzz/corpus/ (not committed); fuzz/seeds/ holds committed seeds,
# including inputs that once hung; tar seeds are made here with GNU tar
# (pax with xattrs, gnu long names, ustar). Findings land in fuzz/artifacts/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-300}
shift || true
suite=${CONFORMANCE_DIR:-$root/../shared/conformance/buildkit}
cd "$root/fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

seed_tars() {
  local dir=$1 work
  work=$(mktemp -d)
  mkdir -p "$work/r/d/sub" "$work/r/$(printf 'n%.0s' {1..120})"
  echo hello >"$work/r/d/f" && ln -s f "$work/r/d/l" && ln "$work/r/d/f" "$work/r/d/h" && mkfifo "$work/r/p"
  setfattr -n user.blob -v 0x010a00 "$work/r/d/f" 2>/dev/null || true
  tar --format=pax --xattrs -cf "$dir/pax.tar" -C "$work/r" .
  tar --format=gnu -cf "$dir/gnu.tar" -C "$work/r" .
  tar --format=ustar -cf "$dir/ustar.tar" -C "$work/r" d
  rm -rf "$work"
}

status=0
for t in "${targets[@]}"; do
  corpus=corpus/$t
  mkdir -p "$corpus"
  seeds=()
  [ -d "seeds/$t" ] && seeds+=("seeds/$t")
  case $t in
    parse)
      # BuildKit's parser corpus makes good extra seeds when it is around.
      if [ -d "$suite/parser" ]; then
        for c in "$suite"/parser/*/*/; do seeds+=("$c"); done
      fi ;;
    tar_read|layer_to_erofs|layer_unpack) seed_tars "$corpus" ;;
    manifest)
      printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%064d","size":1,"platform":{"os":"linux","architecture":"arm64"}}]}' 0 >"$corpus/index.json"
      printf '{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{"type":"layers","diff_ids":[]}}' >"$corpus/config.json" ;;
    dockerignore) printf 'app/main.rs\n*.md\n!README.md\n**/target\n[a-c]?/x\n' >"$corpus/seed" ;;
    copy_patterns) printf '[a-c]*/**.rs\nbin/run.rs' >"$corpus/seed" ;;
  esac
  max_len=8192
  case $t in expand) max_len=2048 ;; tar_read|layer_to_erofs|layer_unpack) max_len=65536 ;; esac
  log=$(mktemp)
  echo "fuzz: $t for ${secs}s" >&2
  rc=0
  cargo fuzz run -O "$t" "$corpus" "${seeds[@]}" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=$max_len >"$log" 2>&1 || rc=$?
  # libFuzzer ends with "Done N runs in S second(s)"; a crash leaves only "#N" status lines.
  runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || true)
  [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $t: ${runs:-?} runs in ${secs}s, no crash"
  else
    status=1
    echo "fuzz: $t: FAILED after ${runs:-?} runs (exit $rc); artifacts in fuzz/artifacts/$t/; log tail:"
    tail -30 "$log"
  fi
  rm -f "$log"
done
exit $status
