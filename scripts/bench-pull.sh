#!/usr/bin/env bash
# Pull throughput: `kiln pull` against `skopeo copy docker://... oci:...` of
# the same ~200 MB multi-layer image from a local docker-registry, in the
# same run. Prints MB/s per run, medians and the kiln/skopeo ratio.
#
# Usage: scripts/bench-pull.sh [total_MB] [layers] [runs]
# Needs: docker-registry, skopeo, python3 (Debian packages of the same names).
set -euo pipefail

TOTAL_MB=${1:-200}
LAYERS=${2:-8}
RUNS=${3:-3}

for tool in docker-registry skopeo python3 sha256sum gzip tar; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install ${tool/sha256sum/coreutils}" >&2; exit 1; }
done

root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin kiln
kiln="$root/target/release/kiln"

work=$(mktemp -d)
registry_pid=
cleanup() {
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
done

# Build an OCI layout by hand (independent of kiln): incompressible layers.
layout="$work/layout"
mkdir -p "$layout/blobs/sha256" "$work/rootfs"
layer_mb=$((TOTAL_MB / LAYERS))
diff_ids=()
layers_json=()
for i in $(seq 1 "$LAYERS"); do
    rm -rf "$work/rootfs"/*
    mkdir -p "$work/rootfs/data"
    head -c "$((layer_mb * 1024 * 1024))" /dev/urandom >"$work/rootfs/data/layer-$i.bin"
    tar -C "$work/rootfs" --mtime=@0 --owner=0 --group=0 -cf "$work/layer.tar" data
    diff_ids+=("\"sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)\"")
    gzip -1 -n -c "$work/layer.tar" >"$work/layer.tar.gz"
    digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
    size=$(stat -c %s "$work/layer.tar.gz")
    mv "$work/layer.tar.gz" "$layout/blobs/sha256/$digest"
    layers_json+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}")
done
rm -rf "$work/rootfs" "$work/layer.tar"
join() { local IFS=,; echo "$*"; }
config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$(join "${diff_ids[@]}")]}}"
printf '%s' "$config" >"$work/config.json"
cdigest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
csize=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$layout/blobs/sha256/$cdigest"
manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cdigest\",\"size\":$csize},\"layers\":[$(join "${layers_json[@]}")]}"
printf '%s' "$manifest" >"$work/manifest.json"
mdigest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
msize=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$layout/blobs/sha256/$mdigest"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
echo "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$mdigest\",\"size\":$msize,\"annotations\":{\"org.opencontainers.image.ref.name\":\"bench\"}}]}" >"$layout/index.json"

image="127.0.0.1:$port/bench/image:1"
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://$image"
bytes=$(du -cb "$layout"/blobs/sha256/* | tail -1 | cut -f1)
echo "image: $image, $LAYERS layers, $((bytes / 1000000)) MB compressed; $(nproc) cores; $RUNS runs each"

now() { date +%s.%N; }
kiln_rates=()
skopeo_rates=()
for run in $(seq 1 "$RUNS"); do
    data="$work/kiln-$run"
    t0=$(now)
    KILN_DATA_DIR="$data" DOCKER_CONFIG="$work/nodocker" "$kiln" pull "$image" >/dev/null
    t1=$(now)
    rm -rf "$data"
    out="$work/skopeo-$run"
    t2=$(now)
    skopeo copy --quiet --src-tls-verify=false "docker://$image" "oci:$out:bench"
    t3=$(now)
    rm -rf "$out"
    k=$(python3 -c "print(f'{$bytes / 1e6 / ($t1 - $t0):.1f}')")
    s=$(python3 -c "print(f'{$bytes / 1e6 / ($t3 - $t2):.1f}')")
    kiln_rates+=("$k")
    skopeo_rates+=("$s")
    printf 'run %d: kiln %7s MB/s (%.2f s)   skopeo %7s MB/s (%.2f s)\n' "$run" "$k" "$(python3 -c "print($t1 - $t0)")" "$s" "$(python3 -c "print($t3 - $t2)")"
done
python3 - "${kiln_rates[*]}" "${skopeo_rates[*]}" <<'PY'
import statistics, sys
k = statistics.median(map(float, sys.argv[1].split()))
s = statistics.median(map(float, sys.argv[2].split()))
print(f"median: kiln {k:.1f} MB/s, skopeo copy {s:.1f} MB/s, kiln/skopeo = {k / s:.2f}")
PY
