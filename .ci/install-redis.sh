#!/usr/bin/env bash
# Install Debian's Redis server binary for standins/redis.py (the Celery broker), if missing.
# The tests start their own throwaway servers on 127.0.0.1, so any system service the package
# starts is stopped again. Idempotent, and silent when already installed.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

SUDO=()
if [[ ${EUID} -ne 0 ]]; then
    SUDO=(sudo)
fi

echo "install-redis: installing the redis-server Debian package" >&2
"${SUDO[@]}" apt-get update -qq
# policy-rc.d exit 101: no service is started by the package (none is needed, and a system
# redis on 6379 would be one more listener than the tests ask for). Removed again afterwards.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e ${policy} ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "${policy}" >/dev/null
    "${SUDO[@]}" chmod +x "${policy}"
    created_policy=1
fi
cleanup() {
    if [[ ${created_policy} == 1 ]]; then
        "${SUDO[@]}" rm -f "${policy}"
    fi
}
trap cleanup EXIT
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null

# Where a service was started anyway (no policy-rc.d honoured), stop it: the tests never use it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    "${SUDO[@]}" systemctl stop redis-server || true
elif [[ -x /etc/init.d/redis-server ]]; then
    "${SUDO[@]}" /etc/init.d/redis-server stop >/dev/null 2>&1 || true
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "install-redis: redis-server still not found on PATH" >&2
    exit 1
fi
