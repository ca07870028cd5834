#!/usr/bin/env bash
# Builds .venv-compat/<version>: the project's [test] extra installed on an
# older Airflow line, pinned by constraints/airflow-<version>.txt, and the
# project itself as users get it: the wheel built from this tree (one wheel,
# shared by every line), not an editable install. The real Airflow processes
# the compat tests start import the plugin from that wheel.
#
#   bash .ci/compat-venv.sh VERSION
#
# With uv when it can be had (several times faster), else with venv + pip.
# Idempotent: a stamp holds a hash of the constraints file and pyproject.toml,
# and a re-run with both unchanged keeps the venv; the wheel is rebuilt and
# reinstalled (without its dependencies, in a second) when the sources change.
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

# The wheel of this tree, built once for every line (under a lock: lines may be built in parallel).
wheel_dir=.venv-compat/wheel
source_key=$(find airflow_sm_refs pyproject.toml README.md LICENSE -type f ! -name '*.pyc' -print0 | sort -z |
    xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
build_wheel() {
    mkdir -p "$wheel_dir"
    (
        flock 9
        if [ "$(cat "$wheel_dir/.source" 2>/dev/null)" != "$source_key" ] || ! ls "$wheel_dir"/airflow_sm_refs-*.whl >/dev/null 2>&1; then
            rm -f "$wheel_dir"/airflow_sm_refs-*
            if [ -n "$uv" ]; then
                "$uv" build -q --wheel --out-dir "$wheel_dir" . >&2
            else
                "$python" -m pip wheel -q --no-deps -w "$wheel_dir" . >&2
            fi
            echo "$source_key" >"$wheel_dir/.source"
        fi
    ) 9>"$wheel_dir.lock"
    wheel=$(ls "$wheel_dir"/airflow_sm_refs-*.whl)
}

install_wheel() {
    # The plugin alone (its dependencies are in the venv already), replacing what was there.
    if [ -n "$uv" ]; then
        "$uv" pip install -q --compile-bytecode --python "$venv/bin/python" --no-deps --reinstall "$wheel"
    else
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
    fi
    echo "$source_key" >"$venv/.wheel"
}

# Some uv: on PATH, else the one `make venv` puts in .venv.
uv=
if command -v uv >/dev/null 2>&1; then
    uv=$(command -v uv)
elif [ -x .venv/bin/uv ]; then
    uv=.venv/bin/uv
fi

build_wheel
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && "$venv/bin/python" -c '' 2>/dev/null; then
    if [ "$(cat "$venv/.wheel" 2>/dev/null)" != "$source_key" ]; then
        install_wheel
        echo "$venv: up to date; the plugin reinstalled from $wheel"
    else
        echo "$venv: up to date"
    fi
    exit 0
fi

install_with_uv() {
    [ -n "$uv" ] || return 1
    # Never fetch a Python of uv's own: use the machine's. Bytecode is compiled at install:
    # with PYTHONDONTWRITEBYTECODE set (as on CI machines) every process would otherwise
    # compile Airflow's ~1000 modules again (about 3 s of CPU for each process a test starts).
    UV_PYTHON_DOWNLOADS=never "$uv" venv -q --python "$(command -v "$python")" "$venv" &&
        "$uv" pip install -q --compile-bytecode --python "$venv/bin/python" -c "$constraints" "airflow-sm-refs[test] @ file://$PWD/$wheel"
}

install_with_pip() {
    "$python" -m venv "$venv" &&
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" "airflow-sm-refs[test] @ file://$PWD/$wheel"
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
echo "$source_key" >"$venv/.wheel"
echo "$venv: Airflow $line installed with $how in $((SECONDS - start)) s"
