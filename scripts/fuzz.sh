#!/bin/sh
# Fuzzes the Dockerfile frontend with cargo-fuzz: both targets in parallel.
#   scripts/fuzz.sh [SECONDS]     (default 300 per target)
# Needs `cargo install cargo-fuzz`; uses nightly features through
# RUSTC_BOOTSTRAP unless a nightly toolchain is selected. New corpus entries
# go to fuzz/corpus/ (not committed); fuzz/seeds/ holds committed seeds,
# including inputs that once hung. Findings land in fuzz/artifacts/.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-300}
suite=${CONFORMANCE_DIR:-$root/../shared/conformance/buildkit}
cd "$root/fuzz"
mkdir -p corpus/parse corpus/expand
# BuildKit's parser corpus makes good extra seeds when it is around.
extra=""
[ -d "$suite/parser" ] && extra=$(find "$suite/parser" -mindepth 1 -maxdepth 1 -type d | tr '\n' ' ')
seeds_parse=""
for d in $extra; do for c in "$d"/*/; do seeds_parse="$seeds_parse $c"; done; done
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
status=0
# shellcheck disable=SC2086
cargo fuzz run -O parse corpus/parse seeds/parse $seeds_parse -- -max_total_time="$secs" -timeout=5 -max_len=8192 &
p1=$!
cargo fuzz run -O expand corpus/expand seeds/expand -- -max_total_time="$secs" -timeout=5 -max_len=2048 &
p2=$!
wait $p1 || status=1
wait $p2 || status=1
exit $status
