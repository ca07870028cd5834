#!/usr/bin/env bash
# Regenerates constraints/airflow-<version>.txt for one older Airflow line (or
# every line with no argument): a full pin set as of shortly after that
# release, like Airflow's own constraint files. Needs uv and a package index.
#
#   bash .ci/compile-compat-constraints.sh [VERSION...]
#
# The input is the project's own requirements, written out (a compiled
# constraints file can't hold `-e .`): pyproject's dependencies, its [test]
# extra and psutil, with apache-airflow pinned to the line. Holds that a line
# needs beyond the date are listed in HOLDS and land in the file header.
set -euo pipefail
cd "$(dirname "$0")/.."

# Upload day of each release (the first --exclude-newer date that finds it)
# plus a few days, so providers released alongside it are in.
declare -A DATE=(
    [2.10.3]=2024-11-08   # released 2024-11-04
    [2.11.0]=2025-05-23   # released 2025-05-19
    [3.0.6]=2025-09-01    # released 2025-08-28
    [3.1.8]=2026-03-14    # released 2026-03-10
    [3.2.1]=2026-04-25    # released 2026-04-21
)
# Extra requirement lines per line, each "spec  # why" (kept in the header).
declare -A HOLDS=(
    # 3.0.6's Execution API fails against the releases after these; the date
    # alone keeps them out today, the holds keep them out of any recompile.
    [3.0.6]="cadwyn<5.5|fastapi<0.117|pydantic<2.12|starlette<0.48"
)
PYTHON_VERSION=3.11

compile_line() {
    local v=$1 d=${DATE[$1]:-} holds=${HOLDS[$1]:-}
    if [ -z "$d" ]; then
        echo "no date known for Airflow $v: add it to DATE in $0" >&2
        return 2
    fi
    local in out tmp
    in=$(mktemp --suffix=.in)
    tmp=$(mktemp)
    out=constraints/airflow-$v.txt
    {
        echo "apache-airflow==$v"
        echo "apache-airflow-providers-amazon>=9"
        echo "boto3>=1.34"
        echo "moto[server]>=5"
        echo "pytest>=8"
        echo "pytest-timeout"
        echo "hypothesis>=6"
        echo "apache-airflow-providers-http"
        echo "apache-airflow-providers-postgres"
        echo "psycopg2-binary"
        echo "statsd"
        echo "psutil"
        if [ -n "$holds" ]; then tr '|' '\n' <<<"$holds"; fi
    } >"$in"
    local cmd=(uv pip compile --quiet --python-version "$PYTHON_VERSION"
               --exclude-newer "$d" --no-annotate --no-header "$in" -o "$tmp")
    "${cmd[@]}"
    local holds_txt="none"
    [ -n "$holds" ] && holds_txt=$(tr '|' ' ' <<<"$holds")
    mkdir -p constraints
    {
        echo "# Airflow $v, by .ci/compile-compat-constraints.sh $v: uv pip compile --python-version $PYTHON_VERSION --exclude-newer $d --no-annotate --no-header"
        echo "#   on apache-airflow==$v + pyproject deps + [test] extra + psutil; holds: $holds_txt"
        grep -v '^airflow-sm-refs==' "$tmp"
    } >"$out"
    rm -f "$in" "$tmp"
    echo "$out: $(grep -c '==' "$out") pins"
}

if [ $# -eq 0 ]; then set -- $(printf '%s\n' "${!DATE[@]}" | sort -V); fi
for v in "$@"; do compile_line "$v"; done
