#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries for standins/postgres.py, if missing.
# The tests start their own throwaway clusters, so any system cluster the package
# creates is stopped again. Idempotent, and silent when already installed.
set -euo pipefail

have_initdb() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if have_initdb; then
    exit 0
fi

SUDO=()
if [[ ${EUID} -ne 0 ]]; then
    SUDO=(sudo)
fi

echo "install-postgres: installing the postgresql Debian package" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null

# The package may create and start a "main" cluster; the tests never use it.
if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
        if [[ ${status} == online* ]]; then
            "${SUDO[@]}" pg_ctlcluster "${version}" "${cluster}" stop || true
        fi
    done
fi

if ! have_initdb; then
    echo "install-postgres: initdb still not found under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
