#!/usr/bin/env bash
# Snapshot throughput, end to end: a RUN writes 500 MB in 20,000 files in an
# arm64 guest; kiln reports the time from the command's exit to the layer
# blob written (manifest walk and freeze in the guest, contents read from the
# scratch image on the host, gzip). The same tree, made by the same script on
# the host, is then archived with `tar -c | gzip` (and pigz if installed) as
# the reference, in the same run.
#
# Usage: scripts/bench-snapshot.sh [FILES] [TOTAL_MB]   (default 20000 500)
# Needs the busybox fixture (scripts/test.sh makes it) and a built kiln ($KILN).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
files="${1:-20000}"
total_mb="${2:-500}"
kiln="${KILN:-$root/target/release/kiln}"
[ -x "$kiln" ] || { echo "build kiln first (cargo build --release) or set KILN" >&2; exit 1; }
fixture="$root/.cache/fixtures/busybox-arm64.tar"
[ -s "$fixture" ] || scripts/make-busybox-rootfs.sh arm64 "$fixture"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export KILN_DATA_DIR="$work/data"
"$kiln" import --platform linux/arm64 "$fixture" bench/busybox >/dev/null

# The generator: FILES files in 100 directories, sizes cycling around
# TOTAL_MB/FILES so the total is TOTAL_MB, text-like content (compresses like
# source trees do). One awk process, so the guest's time goes to writing.
cat > "$work/gen.sh" <<GEN
#!/bin/sh
set -e
out="\$1"
mkdir -p "\$out"
i=0
while [ \$i -lt 100 ]; do mkdir -p "\$out/d\$i"; i=\$(( i + 1 )); done
awk -v out="\$out" -v n=$files -v per=$(( total_mb * 1000000 / files )) 'BEGIN {
  big = ""
  for (k = 0; length(big) < 2 * per + 1000; k++) big = big "line of generated text number " k "\\n"
  for (i = 0; i < n; i++) {
    f = out "/d" (i % 100) "/f" i
    size = int(per / 2 + (i % 7) * per / 6)
    printf "%s", substr(big, (i * 37) % 1000 + 1, size) > f
    close(f)
  }
}'
GEN
mkdir "$work/ctx"
cp "$work/gen.sh" "$work/ctx/gen.sh"
printf 'FROM bench/busybox\nCOPY gen.sh /gen.sh\nRUN sh /gen.sh /tree\n' > "$work/ctx/Dockerfile"
echo "guest: generating $files files, $total_mb MB, and snapshotting (TCG; takes a few minutes)" >&2
"$kiln" build --progress plain --platform linux/arm64 -t bench/snap "$work/ctx" 2> "$work/build.log"
kiln_line="$(grep 'snapshot:' "$work/build.log" | tail -1)"
kiln_s="$(sed -E 's/.* ([0-9.]+)s after.*/\1/' <<<"$kiln_line")"
kiln_mb="$(sed -E 's/.*snapshot: ([0-9.]+) MB in.*/\1/' <<<"$kiln_line")"

sh "$work/gen.sh" "$work/tree"
time_of() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN{printf "%.2f", b-a}'; }
sync
gzip_s="$(time_of sh -c "tar -c -C '$work/tree' . | gzip -6 > '$work/ref.tar.gz'")"
pigz_s=""
if command -v pigz >/dev/null; then pigz_s="$(time_of sh -c "tar -c -C '$work/tree' . | pigz -6 > '$work/ref.tar.gz'")"; fi

printf "\n%-44s %8s %8s %8s\n" "snapshot of $files files, $kiln_mb MB" "seconds" "MB/s" "÷ kiln"
row() { awk -v n="$1" -v s="$2" -v mb="$kiln_mb" -v k="$kiln_s" 'BEGIN{printf "%-44s %8.2f %8.1f %7.2fx\n", n, s, mb/s, s/k}'; }
row "kiln: command exit -> layer blob (gzip)" "$kiln_s"
row "host: tar -c | gzip -6 (reference)" "$gzip_s"
[ -z "$pigz_s" ] || row "host: tar -c | pigz -6" "$pigz_s"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
