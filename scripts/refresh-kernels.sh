#!/usr/bin/env bash
# Re-pin kernels/<arch>.toml to the kernel package the Debian mirror serves now.
#
# Debian removes superseded kernel packages from the mirror, so a pin goes
# stale and kiln then fails with "the pin is stale". This script follows each
# manifest's meta_package (e.g. linux-image-cloud-arm64) to the current ABI
# package and rewrites the [package] table (name, version, path, size, sha256).
#
# Trust: the Packages index is checked against the mirror's InRelease file,
# whose signature gpgv verifies with the Debian archive keyring; the pinned
# sha256 values come from that index. KILN_INSECURE_INDEX=1 skips the signature
# check (for a mirror without InRelease); do not commit pins made that way.
#
# Usage: scripts/refresh-kernels.sh [kernels/arm64.toml ...]   (default: all)
# The mirror is $KILN_DEBIAN_MIRROR, else the host's apt sources.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
keyring="${KILN_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"

die() { printf 'refresh-kernels: %s\n' "$*" >&2; exit 1; }
for tool in curl xz awk sha256sum; do command -v "$tool" >/dev/null || die "needs $tool"; done

# shellcheck source=lib/debian-mirror.sh
. "$root/scripts/lib/debian-mirror.sh"

field() { # field FILE KEY -> value of a top-level `key = "value"` line
  sed -n "s/^$2[[:space:]]*=[[:space:]]*\"\\(.*\\)\"[[:space:]]*\$/\\1/p" "$1" | head -n1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# fetch_index MIRROR SUITE COMPONENT ARCH -> path of the verified, decompressed Packages file
fetch_index() {
  local mirror="$1" suite="$2" comp="$3" arch="$4"
  local out="$work/Packages-$suite-$comp-$arch"
  [ -s "$out" ] && { echo "$out"; return; }
  local rel="$comp/binary-$arch/Packages.xz"
  curl -fsSL "$mirror/dists/$suite/$rel" -o "$out.xz" || die "cannot download $mirror/dists/$suite/$rel"
  if [ "${KILN_INSECURE_INDEX:-0}" != 1 ]; then
    command -v gpgv >/dev/null || die "needs gpgv to verify the index (or KILN_INSECURE_INDEX=1)"
    [ -r "$keyring" ] || die "no Debian archive keyring at $keyring (set KILN_DEBIAN_KEYRING)"
    curl -fsSL "$mirror/dists/$suite/InRelease" -o "$work/InRelease-$suite" || die "cannot download $mirror/dists/$suite/InRelease"
    gpgv --quiet --keyring "$keyring" --output "$work/Release-$suite" "$work/InRelease-$suite" 2>"$work/gpgv.log" \
      || { cat "$work/gpgv.log" >&2; die "bad signature on $mirror/dists/$suite/InRelease"; }
    local want
    want=$(awk -v f="$rel" '/^SHA256:/ {s=1; next} /^[^ ]/ {s=0} s && $3==f {print $1}' "$work/Release-$suite")
    [ -n "$want" ] || die "$rel is not listed in $suite's Release file"
    [ "$(sha256sum < "$out.xz" | cut -d' ' -f1)" = "$want" ] || die "$mirror/dists/$suite/$rel does not match the signed Release file"
  fi
  xz -dc "$out.xz" > "$out"
  echo "$out"
}

# stanza PACKAGES NAME -> the paragraph of the highest version of NAME
stanza() {
  # An exact line match: names like linux-image-6.12.57+deb13-riscv64 hold regex characters.
  awk -v name="$2" 'BEGIN{RS=""} { n=split($0, l, "\n"); for (i=1;i<=n;i++) if (l[i] == "Package: " name) { print; print ""; next } }' "$1" > "$work/stanzas"
  [ -s "$work/stanzas" ] || return 1
  # Several versions can coexist; dpkg decides which is highest.
  local best="" v
  for v in $(awk '/^Version:/ {print $2}' "$work/stanzas"); do
    if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best="$v"; fi
  done
  awk -v v="$best" 'BEGIN{RS=""} { n=split($0, l, "\n"); for (i=1;i<=n;i++) if (l[i] == "Version: " v) { print; exit } }' "$work/stanzas"
}

get() { sed -n "s/^$1: //p" <<<"$2" | head -n1; }

manifests=("$@")
[ ${#manifests[@]} -gt 0 ] || manifests=("$root"/kernels/*.toml)
changed=0
for m in "${manifests[@]}"; do
  [ -f "$m" ] || die "no such manifest: $m"
  arch=$(field "$m" debian_arch); suite=$(field "$m" suite); comp=$(field "$m" component); meta=$(field "$m" meta_package)
  [ -n "$arch" ] && [ -n "$suite" ] && [ -n "$comp" ] && [ -n "$meta" ] || die "$m: needs debian_arch, suite, component, meta_package"
  grep -q '^\[package\]$' "$m" || die "$m: no [package] table"
  mirror="${KILN_DEBIAN_MIRROR:-$(debian_mirror "$suite")}"
  mirror="${mirror%/}"
  [ -n "$mirror" ] || die "no Debian mirror in the apt sources; set KILN_DEBIAN_MIRROR"
  index=$(fetch_index "$mirror" "$suite" "$comp" "$arch")
  meta_stanza=$(stanza "$index" "$meta") || die "$m: $meta is not in $suite/$comp/binary-$arch"
  pkg=$(get Depends "$meta_stanza" | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ (]*\).*/\1/p' | head -n1)
  [ -n "$pkg" ] || die "$m: $meta depends on no linux-image-* package"
  s=$(stanza "$index" "$pkg") || die "$m: $pkg (from $meta) is not in the index"
  version=$(get Version "$s"); path=$(get Filename "$s"); size=$(get Size "$s"); sha=$(get SHA256 "$s")
  [ -n "$version" ] && [ -n "$path" ] && [ -n "$size" ] && [ ${#sha} = 64 ] || die "$m: incomplete index entry for $pkg"
  old="$(field "$m" name) $(field "$m" version)"
  tmp="$m.tmp.$$"
  # Everything above [package] is hand-written and kept; the table is regenerated.
  { sed '/^\[package\]$/,$d' "$m"
    printf '[package]\nname = "%s"\nversion = "%s"\npath = "%s"\nsize = %s\nsha256 = "%s"\n' "$pkg" "$version" "$path" "$size" "$sha"
  } > "$tmp"
  if cmp -s "$tmp" "$m"; then
    rm -f "$tmp"; echo "$(basename "$m"): $pkg $version (unchanged)"
  else
    mv "$tmp" "$m"; changed=1; echo "$(basename "$m"): $old -> $pkg $version"
  fi
done
[ "$changed" = 0 ] || echo "pins changed: rebuild kiln (manifests are embedded) and commit kernels/"
