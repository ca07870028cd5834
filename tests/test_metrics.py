"""Metrics reach a real StatsD listener through Airflow's own Stats.

A UDP socket on loopback plays StatsD. A fresh interpreter with
``[metrics] statsd_on`` pointing at it (so Airflow builds its Stats from that
configuration, as in a deployment) looks connections up against moto:
cold, from the process cache, from the worker cache, a missing secret twice,
and an expired value while AWS throttles.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from standins.aws import THROTTLING, AwsStandIn
from tests.conftest import BACKEND
from tests.worker_proc import REPO

pytestmark = pytest.mark.compat

pytest.importorskip("statsd", reason="Airflow's StatsD logger needs the statsd package")

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from airflow_sm_refs._compat import base_hook, initialize_stats_as_a_task_runner
    from airflow_sm_refs.resolver import clear_process_cache

    initialize_stats_as_a_task_runner()

    def look(conn_id):
        try:
            base_hook().get_connection(conn_id).password
        except BaseException as exc:
            print("failed", conn_id, type(getattr(exc, "error", exc)).__name__, flush=True)

    look("db")             # cold: fetched from AWS
    look("db")             # from the process cache
    clear_process_cache()
    look("db")             # from the worker cache
    look("missing")        # not found
    look("missing")        # remembered: no call
    look("fleeting")       # fetched, with a 4 s TTL
    time.sleep(4.2)
    clear_process_cache()
    print("expired", flush=True)
    sys.stdin.readline()   # the test makes AWS throttle
    look("fleeting")       # the expired value, served stale
    print("done", flush=True)
    """
)


def statsd_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    return sock


def received(sock: socket.socket) -> list[str]:
    lines: list[str] = []
    while True:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return lines
        lines += data.decode().splitlines()


def test_metric_names_reach_statsd(aws: AwsStandIn, tmp_path: Path) -> None:
    client = aws.client()
    client.create_secret(Name="prod/db", SecretString='{"password": "metrics-pw-1"}')
    client.create_secret(Name="short/lived", SecretString='{"password": "metrics-pw-2"}')
    sock = statsd_listener()
    port = sock.getsockname()[1]
    kwargs = {
        "region_name": "us-east-1",
        "endpoint_url": aws.endpoint_url,
        "shared_cache_dir": str(tmp_path / "cache"),
        "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
        "cache_ttl_seconds": 4,
        "stale_if_error_seconds": 300,
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__SECRETS__BACKEND": BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
        "AIRFLOW_CONN_DB": json.dumps({"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"}),
        "AIRFLOW_CONN_MISSING": json.dumps({"conn_type": "postgres", "password": "{{workato:sm:password:no/such}}"}),
    }
    script = tmp_path / "lookups.py"
    script.write_text(SCRIPT)
    env["AIRFLOW_CONN_FLEETING"] = json.dumps({"conn_type": "postgres", "password": "{{workato:sm:password:short/lived}}"})
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.log", "wb"),  # noqa: SIM115
        env=env,
        cwd=REPO,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        out = []
        for line in proc.stdout:
            out.append(line.strip())
            if line.strip() == "expired":
                break
        assert out[-1:] == ["expired"], (out, (tmp_path / "stderr.log").read_text()[-3000:])
        with aws.failing(THROTTLING):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            rest = proc.stdout.read()
            proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out += rest.split()
    assert "done" in out, (out, (tmp_path / "stderr.log").read_text()[-3000:])
    lines = received(sock)
    names = {line.split(":", 1)[0] for line in lines}
    for name in (
        "airflow.sm_refs.aws_fetch",
        "airflow.sm_refs.aws_request",
        "airflow.sm_refs.aws_latency",
        "airflow.sm_refs.cache_hit.process",
        "airflow.sm_refs.cache_hit.worker",
        "airflow.sm_refs.negative_hit",
        "airflow.sm_refs.stale_served",
        "airflow.sm_refs.error.SecretNotFoundError",
    ):
        assert name in names, (name, sorted(names))
    assert any(line.startswith("airflow.sm_refs.aws_latency:") and line.endswith("|ms") for line in lines)
    # Nothing secret in what went out: no value, no secret name.
    joined = "\n".join(lines)
    assert "metrics-pw" not in joined and "prod/db" not in joined and "no/such" not in joined
