#!/usr/bin/env bash
# Checks that .venv-compat/<version> really works, without the test suite:
# `airflow version`, `airflow db migrate` on a fresh SQLite home, and the
# imports the plugin and its tests lean on (moto's server, boto3, the Amazon
# provider's base hook).
#
#   bash .ci/compat-smoke.sh VERSION...
#
# COMPAT_VENV_ROOT (default .venv-compat) points it at other venvs, e.g. ones
# installed from a constraints file alone, to tell the pins from the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
    echo "usage: $0 AIRFLOW_VERSION..." >&2
    exit 2
fi
failed=()
for line in "$@"; do
    bin=${COMPAT_VENV_ROOT:-.venv-compat}/$line/bin
    home=$(mktemp -d)
    echo "== Airflow $line"
    if (
        set -e
        # Keep Airflow off the machine's own config and out of the example DAGs.
        export AIRFLOW_HOME=$home AIRFLOW__CORE__LOAD_EXAMPLES=False
        got=$("$bin/airflow" version 2>/dev/null | tail -n1)
        echo "airflow version: $got"
        [ "$got" = "$line" ]
        "$bin/airflow" db migrate >"$home/migrate.log" 2>&1 ||
            { tail -n 40 "$home/migrate.log"; exit 1; }
        echo "airflow db migrate: ok"
        "$bin/python" -c "import moto.server, boto3, airflow.providers.amazon.aws.hooks.base_aws"
        echo "imports: ok"
    ); then
        :
    else
        failed+=("$line")
    fi
    rm -rf "$home"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "smoke failed on: ${failed[*]}" >&2
    exit 1
fi
echo "smoke passed on: $*"
