#!/usr/bin/env bash
# Builds .venv-compat/<version>: the project and its [test] extra installed on
# an older Airflow line, pinned by constraints/airflow-<version>.txt.
#
#   bash .ci/compat-venv.sh VERSION
#
# With uv when it can be had (several times faster), else with venv + pip.
# Idempotent: a stamp holds a hash of the constraints file and pyproject.toml,
# and a re-run with both unchanged does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ]; then
    echo "usage: $0 AIRFLOW_VERSION" >&2
    exit 2
fi
line=$1
constraints=constraints/airflow-$line.txt
venv=.venv-compat/$line
stamp=$venv/.installed
python=${PYTHON:-python3}

if [ ! -f "$constraints" ]; then
    echo "$constraints not found (make it with .ci/compile-compat-constraints.sh $line)" >&2
    exit 2
fi

key=$(cat "$constraints" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && "$venv/bin/python" -c '' 2>/dev/null; then
    echo "$venv: up to date"
    exit 0
fi

# Some uv: on PATH, else the one `make venv` puts in .venv.
uv=
if command -v uv >/dev/null 2>&1; then
    uv=$(command -v uv)
elif [ -x .venv/bin/uv ]; then
    uv=.venv/bin/uv
fi

install_with_uv() {
    [ -n "$uv" ] || return 1
    # Never fetch a Python of uv's own: use the machine's.
    UV_PYTHON_DOWNLOADS=never "$uv" venv -q --python "$(command -v "$python")" "$venv" &&
        "$uv" pip install -q --python "$venv/bin/python" -c "$constraints" -e '.[test]'
}

install_with_pip() {
    "$python" -m venv "$venv" &&
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" -e '.[test]'
}

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
start=$SECONDS
if install_with_uv; then
    how=uv
else
    echo "$venv: uv unavailable or failed; installing with pip" >&2
    rm -rf "$venv"
    install_with_pip
    how=pip
fi
echo "$key" >"$stamp"
echo "$venv: Airflow $line installed with $how in $((SECONDS - start)) s"
