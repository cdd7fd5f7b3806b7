#!/bin/sh
# Builds kiln and runs BuildKit's Dockerfile parser and shell-lexer
# conformance suites against it. Exits non-zero if anything fails.
# CONFORMANCE_DIR overrides where the corpus lives.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
suite=${CONFORMANCE_DIR:-$root/../shared/conformance/buildkit}
[ -d "$suite" ] || suite=/work/shared/conformance/buildkit
if [ ! -f "$suite/run_parser_suite.py" ]; then
    echo "conformance corpus not found (set CONFORMANCE_DIR)" >&2
    exit 2
fi
cd "$root"
cargo build --quiet --bin kiln
kiln="$root/target/debug/kiln"
status=0
echo "== BuildKit parser corpus"
python3 "$suite/run_parser_suite.py" -- "$kiln" debug dockerfile-dump || status=1
echo "== BuildKit shell lexer vectors (unix)"
python3 "$suite/run_shell_suite.py" --platform unix -- "$kiln" debug expand --jsonl || status=1
exit $status
