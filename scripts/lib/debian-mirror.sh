# Sourced by the scripts that download from Debian: the mirror apt uses.
# Code and scripts read the mirror from apt's sources (or a user setting),
# never a hard-coded host.

# The first http(s) Debian mirror in apt's sources serving $1 (security archive excluded).
debian_mirror() {
  local suite="$1" f
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      # deb822 stanzas -> "URI SUITE..." lines
      awk 'BEGIN{RS=""; FS="\n"}
           { types=""; uris=""; suites=""; enabled=1
             for (i=1;i<=NF;i++) { line=$i; if (line ~ /^#/) continue
               if (line ~ /^Types:/) { sub(/^Types:[ \t]*/,"",line); types=line }
               else if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/,"",line); uris=line }
               else if (line ~ /^Suites:/) { sub(/^Suites:[ \t]*/,"",line); suites=line }
               else if (line ~ /^Enabled:[ \t]*[Nn]o/) enabled=0 }
             if (enabled && types ~ /(^| )deb( |$)/) { n=split(uris,u," "); for (j=1;j<=n;j++) print u[j], suites } }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -r "$f" ] || continue
      sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1=="deb" {print $2, $3}'
    done
  } | awk -v want="$suite" '
      $1 !~ /^https?:\/\// { next }
      { sec=1; for (i=2;i<=NF;i++) if ($i !~ /-security$/) sec=0; if (sec) next }
      { for (i=2;i<=NF;i++) if ($i==want) { print $1; exit } }
      !fallback && $1 ~ /\/debian\/?$/ { fallback=$1 }
      END { if (fallback) print fallback }' | head -n1
}
