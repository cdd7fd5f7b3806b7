#!/usr/bin/env bash
# Benchmark: build Dockerfiles for linux/arm64 with kiln (full-system
# emulation) and with `buildah bud` (qemu-user through binfmt_misc, what
# buildx and buildah use), from the same Debian base image served by a local
# registry, cold and warm, over several rounds, and print the times, their
# medians and ratios, kiln's own breakdown of its time, and micro benchmarks
# of the emulation alone.
#
# Usage: scripts/bench-nginx.sh                       (defaults below)
#        BENCH_ROUNDS=1 BENCH_CASES=micro scripts/bench-nginx.sh
#        BENCH_TOOLS="kiln kiln-b" BENCH_KILN_B_ENV="KILN_LAYER_DISKS=off" scripts/bench-nginx.sh
#
# - Cases (BENCH_CASES, default "nginx build-essential micro"):
#     nginx            examples/nginx (apt-get install nginx, two COPYs)
#     build-essential  scripts/bench/build-essential (apt-get install of 20+ packages)
#     micro            scripts/bench/micro: RUNs that time themselves inside
#                      the build and print `bench-time NAME SECONDS`
#                      (exec-heavy, cpu-bound, apt-update); cold only, as a
#                      warm build runs nothing.
#     multistage       scripts/bench/multistage: a RUN in a first stage, then
#                      a last stage on another 150 MB base with a RUN (the
#                      second base reaches the VM after it booted). Not in the
#                      default set.
#   Every case gets the base as --build-arg BASE=<registry>/debian:bookworm-arm64;
#   multistage also BASE2=<registry>/debian-variant:bookworm-arm64, the same
#   file system plus /variant.txt as one layer of its own (made with
#   `kiln import`).
# - Sides (BENCH_TOOLS, default "kiln buildah"): kiln, buildah, and kiln-b,
#   which is kiln again with the assignments in BENCH_KILN_B_ENV (separated
#   by ';') added to its environment (e.g. "KILN_LAYER_DISKS=off" or
#   "KILN_QEMU_CPU=cortex-a76; KILN_GUEST_CMDLINE=init_on_alloc=0 mitigations=off"), to measure one lever on and off
#   in the same run; BENCH_KILN_B_ARGS adds `kiln build` options (e.g.
#   "--cpus 1"), and BENCH_KILN_B names another kiln binary for it (e.g. one
#   built from the commit before a change). kiln-b without any of them is an
#   A/A run: its difference to kiln is the noise.
# - Rounds (BENCH_ROUNDS, default 3): each round builds every case with every
#   side, cold then warm. The order of the sides turns by one every round
#   (kiln buildah kiln-b, then buildah kiln-b kiln, ...) so that neither a
#   drift in the host's load nor a warm page cache favours one side. The
#   summary gives medians over the rounds and ratios of the medians.
# - Base image: kiln.local/debian:bookworm-arm64 from scripts/make-debian-base.sh
#   (cached after its first run), pushed to docker-registry on
#   127.0.0.1:$BENCH_REGISTRY_PORT (default 5000) as debian:bookworm-arm64.
#   Both tools pull it from there.
# - Cold: kiln with empty KILN_DATA_DIR/KILN_CACHE_DIR (only the guest kernels
#   are kept, as a real user has them after `kiln kernel fetch`); buildah with
#   a fresh vfs storage root. Warm: the same build again on that state. Every
#   round starts cold again.
# - kiln runs with --progress plain; its log gives the breakdown of a cold
#   build: images (making the layers' disk images), boot (the VM), layers
#   (making the base's layers ready in the guest), run (the RUN commands),
#   snapshot (turning a RUN's changes into a layer), rest/export (the rest of
#   the wall time: start, pull, COPY, export).
# - buildah needs qemu-user-static registered in binfmt_misc. This script
#   registers qemu-aarch64 only while buildah runs and restores the previous
#   state on exit (also on failure or Ctrl-C), including entries and the
#   mount that installing qemu-user-static may add. Needs root for that, for
#   apt-get (buildah, qemu-user-static and docker-registry are installed if
#   missing) and for buildah.
#
# Environment: KILN (kiln binary; default: cargo build --release, then
# target/release/kiln), BENCH_ROUNDS, BENCH_CASES, BENCH_TOOLS,
# BENCH_KILN_B_ENV, BENCH_KILN_B_ARGS, BENCH_KILN_B, BENCH_REGISTRY_PORT, KILN_DEBIAN_MIRROR, BENCH_LOG_DIR
# (keep every build's log, and the summary, there).
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
kiln_b="${BENCH_KILN_B:-$kiln}"
tools="${BENCH_TOOLS:-kiln buildah}"
cases="${BENCH_CASES:-nginx build-essential micro}"
rounds="${BENCH_ROUNDS:-3}"
port="${BENCH_REGISTRY_PORT:-5000}"
platform=linux/arm64
base_local=kiln.local/debian:bookworm-arm64
base_remote="127.0.0.1:$port/debian:bookworm-arm64"
variant_local=kiln.local/debian-variant:bookworm-arm64
variant_remote="127.0.0.1:$port/debian-variant:bookworm-arm64"

log() { echo "bench-nginx: $*" >&2; }
die() { log "$*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { # a/b to two places, "-" when either is missing
  awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && a != "" && b != "-" && b + 0 > 0) printf "%.2f", a / b; else print "-" }'
}
median() { # decimals, then the numbers ("-" and empty ones are skipped); "-" when none
  local places="$1"; shift
  printf '%s\n' "$@" | { grep -E '^-?[0-9.]+$' || true; } | sort -g |
    awk -v p="$places" '{ v[NR] = $1 }
      END { if (NR == 0) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.*f", p, m }'
}
wants() { case " $tools " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive number, not '$rounds'"
read -r -a sides <<< "$tools"
[ ${#sides[@]} -gt 0 ] || die "BENCH_TOOLS is empty"
for s in "${sides[@]}"; do
  case "$s" in kiln | buildah | kiln-b) ;; *) die "unknown tool '$s' in BENCH_TOOLS (kiln, buildah, kiln-b)" ;; esac
done
# Assignments are separated by ';' so that a value may hold spaces
# (KILN_GUEST_CMDLINE=init_on_alloc=0 mitigations=off).
kiln_b_env=()
IFS=';' read -r -a raw_env <<< "${BENCH_KILN_B_ENV:-}"
for a in ${raw_env[@]+"${raw_env[@]}"}; do
  a="${a#"${a%%[![:space:]]*}"}"; a="${a%"${a##*[![:space:]]}"}"
  [ -z "$a" ] && continue
  [[ "$a" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "BENCH_KILN_B_ENV: '$a' is not NAME=VALUE"
  kiln_b_env+=("$a")
done
# Extra `kiln build` options for kiln-b (e.g. "--cpus 1"), split on spaces.
read -r -a kiln_b_args <<< "${BENCH_KILN_B_ARGS:-}"
read -r -a case_list <<< "$cases"
[ ${#case_list[@]} -gt 0 ] || die "BENCH_CASES is empty"
case_dir() {
  case "$1" in
    nginx) echo "$root/examples/nginx" ;;
    build-essential | micro | multistage) echo "$root/scripts/bench/$1" ;;
    *) return 1 ;;
  esac
}
for c in "${case_list[@]}"; do
  d="$(case_dir "$c")" || die "unknown case '$c' in BENCH_CASES (nginx, build-essential, micro, multistage)"
  [ -r "$d/Dockerfile" ] || die "$d/Dockerfile is missing"
done
[ -x "$kiln_b" ] || die "BENCH_KILN_B: $kiln_b is not an executable"
# The build args of a case.
case_args() {
  echo "--build-arg BASE=$base_remote"
  [ "$1" = multistage ] && echo "--build-arg BASE2=$variant_remote"
  true
}

need_pkgs=()
command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
command -v curl >/dev/null || need_pkgs+=(curl)
if wants buildah; then
  command -v buildah >/dev/null || need_pkgs+=(buildah)
  [ -x /usr/bin/qemu-aarch64-static ] || need_pkgs+=(qemu-user-static)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-nginx.XXXXXX")"
registry_pid=""
binfmt=/proc/sys/fs/binfmt_misc
# The binfmt_misc state before this script, to put back on exit: whether it
# was mounted and which entries it had (installing qemu-user-static may mount
# it and register qemu-* entries; we undo that too). Set below, once the
# cleanup trap is in place.
binfmt_was_mounted=0
[ -e "$binfmt/register" ] && binfmt_was_mounted=1
binfmt_before=" "
had_entry() { case "$binfmt_before" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

cleanup() {
  set +e
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null; fi
  if [ -e "$binfmt/register" ]; then
    for e in "$binfmt"/qemu-*; do
      [ -e "$e" ] || continue
      had_entry "${e##*/}" || { echo -1 > "$e" && log "unregistered ${e##*/} from binfmt_misc"; }
    done
    if [ "$binfmt_was_mounted" = 0 ]; then umount "$binfmt" && log "unmounted binfmt_misc"; fi
  fi
  if [ -n "${BENCH_LOG_DIR:-}" ]; then
    mkdir -p "$BENCH_LOG_DIR" && cp "$work"/*.log "$work"/summary.txt "$BENCH_LOG_DIR"/ 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if wants buildah && [ "$binfmt_was_mounted" = 0 ]; then
  # The registrations belong to the kernel, not to this mount: mount it now,
  # before anything registers, to see which entries were already there.
  mount -t binfmt_misc binfmt_misc "$binfmt"
fi
[ -e "$binfmt/register" ] && binfmt_before=" $(cd "$binfmt" && echo *) "

if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2
fi

# qemu-aarch64 in binfmt_misc only while buildah runs: kiln must not (and
# does not) need it, and a registration left on would hide it if it did.
binfmt_on() {
  if [ ! -e "$binfmt/register" ]; then mount -t binfmt_misc binfmt_misc "$binfmt"; fi
  if [ ! -e "$binfmt/qemu-aarch64" ]; then
    # Debian's own registration line for qemu-user-static, with F (fix
    # binary) so it works in buildah's chroot.
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -r "$conf" ] || die "$conf is missing: is qemu-user-static installed?"
    grep -v '^#' "$conf" | head -n1 > "$binfmt/register"
  fi
}
binfmt_off() {
  if ! had_entry qemu-aarch64 && [ -e "$binfmt/qemu-aarch64" ]; then echo -1 > "$binfmt/qemu-aarch64"; fi
}
binfmt_off

if wants kiln || wants kiln-b; then
  if ! "$kiln" build --help >/dev/null 2>&1; then
    log "this kiln has no 'build' command yet: skipping its sides"
    kept=()
    for s in "${sides[@]}"; do [ "$s" = buildah ] && kept+=("$s"); done
    [ ${#kept[@]} -gt 0 ] || exit 1
    sides=("${kept[@]}")
    tools="${sides[*]}"
  fi
fi
if wants kiln-b && [ ${#kiln_b_env[@]} -eq 0 ] && [ ${#kiln_b_args[@]} -eq 0 ] && [ "$kiln_b" = "$kiln" ]; then
  log "BENCH_KILN_B_ENV, BENCH_KILN_B_ARGS and BENCH_KILN_B are empty: kiln-b is plain kiln again (an A/A run, its difference is noise)"
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
  kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; die "docker-registry did not start (port $port in use?)"; }
  sleep 0.1
done
"$kiln" push "$base_local" "$base_remote" >&2
if [[ " $cases " == *" multistage "* ]]; then
  # The same file system as one layer of another diff_id: the base's layer
  # tar plus /variant.txt, imported.
  v="$work/variant"
  mkdir -p "$v"
  "$kiln" save --format oci-dir -o "$v/layout" "$base_local" >&2
  layer="$(ls -S "$v"/layout/blobs/sha256/* | head -n1)"
  gzip -dc "$layer" > "$v/rootfs.tar"
  echo variant > "$v/variant.txt"
  tar -rf "$v/rootfs.tar" -C "$v" variant.txt
  "$kiln" import --platform "$platform" "$v/rootfs.tar" "$variant_local" >&2
  "$kiln" push "$variant_local" "$variant_remote" >&2
  rm -rf "$v"
fi

# The guest kernels, copied once from the user's cache: every cold kiln
# state gets hard links to this private copy (cheap, and the user's cache is
# never written through them).
kernels=""
user_cache="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
if [ -d "$user_cache/kernels" ]; then
  cp -a "$user_cache/kernels" "$work/kernels"
  kernels="$work/kernels"
fi

# Results, keyed case/side/what/round; what is cold, warm, a kiln phase, or
# micro:NAME for a micro benchmark's marker.
declare -A res
phases="images boot layers run snapshot rest"
micro_names=""

run_timed() { # key, log file, then the command
  local key="$1" logf="$2"; shift 2
  local t0 t1
  t0=$(now)
  if ! "$@" > "$logf" 2>&1; then
    tail -n 40 "$logf" >&2
    die "$key failed (log above)"
  fi
  t1=$(now)
  res[$key]=$(elapsed "$t0" "$t1")
  log "$key: ${res[$key]}s"
}

# kiln's --progress plain log -> "images boot layers run snapshot" seconds.
# Steps are `#N [name]` ... `#N DONE 1.2s`; a RUN's output is `#N 3.456 text`.
# The VM boots (and the disk images are made) inside the first RUN step, so
# those steps' times are also in that RUN's DONE time: they are taken out of
# "run" once, as are the layers and snapshot seconds the RUN reports.
kiln_phases() {
  awk '
    { sub(/\r$/, "") }
    /^#[0-9]+ \[/ {
      id = $1; name = $0; sub(/^#[0-9]+ /, "", name)
      if (name ~ /^\[internal\] making disk images of /) kind[id] = "images"
      else if (name ~ /^\[internal\] booting a /) kind[id] = "boot"
      else if (name ~ /^\[[^]]*\] RUN /) kind[id] = "run"
      else kind[id] = "other"
      if (kind[id] == "images" || kind[id] == "boot") { for (r in open) if (open[r]) nested[id] = 1 }
      if (kind[id] == "run") open[id] = 1
      next
    }
    $2 == "DONE" && ($1 in kind) {
      t = $3; sub(/s$/, "", t); t += 0
      k = kind[$1]; open[$1] = 0
      if (k == "images") images += t
      else if (k == "boot") boot += t
      else if (k == "run") runs += t
      if ($1 in nested) inside += t
      next
    }
    $2 ~ /^[0-9.]+$/ && kind[$1] == "run" {
      if ($0 ~ / layers: [0-9]+ mounted from disk images, [0-9]+ unpacked, [0-9.]+s$/) {
        t = $NF; sub(/s$/, "", t); layers += t
      } else if ($0 ~ / snapshot: no changes \([0-9.]+s\)$/) {
        t = $NF; gsub(/[()s]/, "", t); snap += t
      } else if ($0 ~ / snapshot: .*, [0-9.]+s after the command exited/) {
        for (i = 4; i < NF; i++) if ($(i + 1) == "after" && $i ~ /^[0-9.]+s$/) { t = $i; sub(/s$/, "", t); snap += t }
      }
    }
    END { printf "%.1f %.1f %.1f %.1f %.1f\n", images, boot, layers, runs - inside - layers - snap, snap }
  ' "$1"
}

# `bench-time NAME SECONDS` lines of a build log -> "NAME SECONDS" lines.
# kiln prefixes RUN output with `#N T `; buildah prints it as is.
micro_markers() {
  awk '{ sub(/\r$/, ""); if ($1 ~ /^#[0-9]+$/ && $2 ~ /^[0-9.]+$/) { $1 = ""; $2 = ""; $0 = $0 }
         if ($1 == "bench-time" && NF == 3 && $3 ~ /^[0-9.]+$/) print $2, $3 }' "$1"
}

record_micro() { # case, side, round, log file
  local name secs
  while read -r name secs; do
    res[$1/$2/micro:$name/$3]=$secs
    case " $micro_names " in *" $name "*) ;; *) micro_names="${micro_names:+$micro_names }$name" ;; esac
  done < <(micro_markers "$4")
}

bench_buildah() { # case, round
  local c="$1" r="$2" b="$work/buildah-state"
  local ctx; ctx="$(case_dir "$c")"
  rm -rf "$b"
  buildah_bud() {
    buildah --root "$b/root" --runroot "$b/runroot" --storage-driver vfs \
      bud --platform "$platform" --isolation chroot --layers --tls-verify=false \
      $(case_args "$c") -t "bench-$c" "$ctx"
  }
  binfmt_on
  [ "$r" = 1 ] && log "binfmt_misc: $(tr '\n' ' ' < "$binfmt/qemu-aarch64")"
  run_timed "$c/buildah/cold/$r" "$work/$c-buildah-cold-r$r.log" buildah_bud
  [ "$c" = micro ] || run_timed "$c/buildah/warm/$r" "$work/$c-buildah-warm-r$r.log" buildah_bud
  binfmt_off
  record_micro "$c" buildah "$r" "$work/$c-buildah-cold-r$r.log"
  if [ "$r" = 1 ]; then
    buildah --root "$b/root" --runroot "$b/runroot" --storage-driver vfs \
      inspect --format "$c buildah: {{.OCIv1.Architecture}} {{.OCIv1.Config.Cmd}}{{println}}" "bench-$c" >&2
  fi
  buildah --root "$b/root" --runroot "$b/runroot" --storage-driver vfs rm -a >/dev/null 2>&1 || true
  rm -rf "$b"
}

bench_kiln() { # case, side (kiln or kiln-b), round
  local c="$1" side="$2" r="$3" k="$work/kiln-state"
  local ctx; ctx="$(case_dir "$c")"
  local extra=() args=() bin="$kiln"
  [ "$side" = kiln-b ] && extra=(${kiln_b_env[@]+"${kiln_b_env[@]}"}) && args=(${kiln_b_args[@]+"${kiln_b_args[@]}"}) && bin="$kiln_b"
  rm -rf "$k"
  mkdir -p "$k/cache"
  [ -n "$kernels" ] && cp -al "$kernels" "$k/cache/kernels"
  kiln_build() {
    env ${extra[@]+"${extra[@]}"} KILN_DATA_DIR="$k/data" KILN_CACHE_DIR="$k/cache" \
      "$bin" build --progress plain --platform "$platform" -t "bench-$c" \
      ${args[@]+"${args[@]}"} $(case_args "$c") "$ctx"
  }
  local cold_log="$work/$c-$side-cold-r$r.log"
  run_timed "$c/$side/cold/$r" "$cold_log" kiln_build
  [ "$c" = micro ] || run_timed "$c/$side/warm/$r" "$work/$c-$side-warm-r$r.log" kiln_build
  # The phases from the log; rest/export is what they leave of the wall time.
  local v
  read -r -a v <<< "$(kiln_phases "$cold_log")"
  res[$c/$side/images/$r]=${v[0]}
  res[$c/$side/boot/$r]=${v[1]}
  res[$c/$side/layers/$r]=${v[2]}
  res[$c/$side/run/$r]=${v[3]}
  res[$c/$side/snapshot/$r]=${v[4]}
  res[$c/$side/rest/$r]=$(awk -v t="${res[$c/$side/cold/$r]}" -v a="${v[0]}" -v b="${v[1]}" -v l="${v[2]}" \
    -v u="${v[3]}" -v s="${v[4]}" 'BEGIN { printf "%.1f", t - a - b - l - u - s }')
  record_micro "$c" "$side" "$r" "$cold_log"
  if [ "$r" = 1 ]; then
    echo "$c $side: $(KILN_DATA_DIR="$k/data" "$kiln" inspect "bench-$c" | grep -Eo '"architecture": *"[^"]*"' | head -n1)" >&2 || true
  fi
  rm -rf "$k"
}

vals() { # case, side, what: that figure in every round
  local r
  for r in $(seq "$rounds"); do echo "${res[$1/$2/$3/$r]:--}"; done
}
med() { # case, side, what[, decimals]: the median over the rounds
  median "${4:-1}" $(vals "$1" "$2" "$3")
}
is_kiln() { [ "$1" = kiln ] || [ "$1" = kiln-b ]; }

row_fmt='%-16s %-8s %6s %8s %8s %7s %6s %7s %7s %9s %12s\n'
header() { printf "$row_fmt" case side round cold_s warm_s images boot layers run snapshot rest/export; }
row() { # case, side, round label, then the eight figures
  printf "$row_fmt" "$@"
}
figures() { # case, side, round: the row's figures
  local c="$1" s="$2" r="$3" p out=()
  out+=("${res[$c/$s/cold/$r]:--}" "${res[$c/$s/warm/$r]:--}")
  for p in $phases; do
    if is_kiln "$s"; then out+=("${res[$c/$s/$p/$r]:--}"); else out+=(""); fi
  done
  echo "${out[@]}"
}

print_round() { # round, its order
  local r="$1" c s
  echo
  echo "round $r/$rounds (order: $2; load average at its start: ${round_load[$r]})"
  header
  for c in "${case_list[@]}"; do
    for s in "${sides[@]}"; do
      # shellcheck disable=SC2046
      row "$c" "$s" "$r" $(figures "$c" "$s" "$r")
    done
  done
  local n line seen
  for c in "${case_list[@]}"; do
    for s in "${sides[@]}"; do
      line="" seen=0
      for n in $micro_names; do
        line+=" $n ${res[$c/$s/micro:$n/$r]:--}"
        [ -n "${res[$c/$s/micro:$n/$r]:-}" ] && seen=1
      done
      if [ "$seen" = 1 ]; then echo "  $c $s bench-time:$line"; fi
    done
  done
}

load_start="$(loadavg)"
declare -A round_load
log "load average at start: $load_start ($(nproc) cores); $rounds round(s) of cases '${case_list[*]}' with '${sides[*]}'"
for r in $(seq "$rounds"); do
  # Turn the order by one each round: round 2 starts with the second side.
  order=()
  for i in $(seq 0 $((${#sides[@]} - 1))); do order+=("${sides[$(((i + r - 1) % ${#sides[@]}))]}"); done
  round_load[$r]="$(loadavg)"
  log "round $r/$rounds: ${order[*]}"
  for c in "${case_list[@]}"; do
    for s in "${order[@]}"; do
      case "$s" in
        buildah) bench_buildah "$c" "$r" ;;
        kiln | kiln-b) bench_kiln "$c" "$s" "$r" ;;
      esac
    done
  done
  print_round "$r" "${order[*]}"
done
load_end="$(loadavg)"

# Per case: every round, then the medians, then the ratios of the medians.
ratio_pairs=()
wants kiln && wants buildah && ratio_pairs+=(kiln/buildah)
wants kiln-b && wants buildah && ratio_pairs+=(kiln-b/buildah)
wants kiln && wants kiln-b && ratio_pairs+=(kiln-b/kiln)
ratios() { # case, what: "pair R, pair R"
  local out="" pair
  for pair in ${ratio_pairs[@]+"${ratio_pairs[@]}"}; do
    out+="${out:+, }$pair $(ratio "$(med "$1" "${pair%/*}" "$2" 2)" "$(med "$1" "${pair#*/}" "$2" 2)")"
  done
  echo "${out:--}"
}
for c in "${case_list[@]}"; do
  echo
  echo "== $c ($(case_dir "$c" | sed "s|^$root/||"), $platform, $rounds round(s)) =="
  header
  for s in "${sides[@]}"; do
    for r in $(seq "$rounds"); do
      # shellcheck disable=SC2046
      row "$c" "$s" "$r" $(figures "$c" "$s" "$r")
    done
    meds=("$(med "$c" "$s" cold)" "$(med "$c" "$s" warm)")
    for p in $phases; do if is_kiln "$s"; then meds+=("$(med "$c" "$s" "$p")"); else meds+=(""); fi; done
    row "$c" "$s" median "${meds[@]}"
  done
  echo "ratios of the medians, cold: $(ratios "$c" cold)"
  [ "$c" = micro ] || echo "ratios of the medians, warm: $(ratios "$c" warm)"
done
if [ -n "$micro_names" ]; then
  echo
  echo "== micro benchmarks (seconds inside the RUN, median over $rounds round(s)) =="
  printf '%-12s' metric
  for s in "${sides[@]}"; do printf ' %9s' "$s"; done
  for pair in ${ratio_pairs[@]+"${ratio_pairs[@]}"}; do printf ' %15s' "${pair//buildah/qemu-user}"; done
  echo
  for n in $micro_names; do
    printf '%-12s' "$n"
    for s in "${sides[@]}"; do printf ' %9s' "$(med micro "$s" "micro:$n" 2)"; done
    for pair in ${ratio_pairs[@]+"${ratio_pairs[@]}"}; do
      printf ' %15s' "$(ratio "$(med micro "${pair%/*}" "micro:$n" 2)" "$(med micro "${pair#*/}" "micro:$n" 2)")"
    done
    echo
  done
fi

# One block to paste into a note.
{
  echo "---- bench-nginx summary ----"
  echo "kiln: $kiln ($("$kiln" --version 2>/dev/null || echo '?'))"
  if wants buildah; then
    echo "buildah: $(buildah --version 2>/dev/null | head -n1), qemu-user-static $(dpkg-query -W -f '${Version}' qemu-user-static 2>/dev/null || echo '?')"
  fi
  wants kiln-b && echo "kiln-b: $("$kiln_b" --version) with ${BENCH_KILN_B_ENV:-(no environment)} ${BENCH_KILN_B_ARGS:-(no build options)}"
  echo "$platform, base $base_local via registry, $rounds round(s), order turned each round, $(nproc) cores"
  echo "load average: start $load_start, end $load_end"
  for c in "${case_list[@]}"; do
    line="$c median cold:"
    for s in "${sides[@]}"; do line+=" $s $(med "$c" "$s" cold)s"; done
    if [ "$c" != micro ]; then
      line+="; warm:"
      for s in "${sides[@]}"; do line+=" $s $(med "$c" "$s" warm 2)s"; done
    fi
    echo "$line"
    [ ${#ratio_pairs[@]} -gt 0 ] && echo "  ratios cold: $(ratios "$c" cold)"
    [ ${#ratio_pairs[@]} -gt 0 ] && [ "$c" != micro ] && echo "  ratios warm: $(ratios "$c" warm)"
    for s in "${sides[@]}"; do
      is_kiln "$s" || continue
      line="  $s cold breakdown (medians):"
      for p in $phases; do line+=" $([ "$p" = rest ] && echo rest/export || echo "$p") $(med "$c" "$s" "$p")"; done
      echo "$line"
    done
  done
  for n in $micro_names; do
    line="micro $n:"
    for s in "${sides[@]}"; do line+=" $s $(med micro "$s" "micro:$n" 2)s"; done
    for pair in ${ratio_pairs[@]+"${ratio_pairs[@]}"}; do
      line+=", ${pair//buildah/qemu-user} $(ratio "$(med micro "${pair%/*}" "micro:$n" 2)" "$(med micro "${pair#*/}" "micro:$n" 2)")"
    done
    echo "$line"
  done
  echo "-----------------------------"
} > "$work/summary.txt"
echo
cat "$work/summary.txt"
