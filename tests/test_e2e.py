"""The real thing: scheduler, API server, dag processor and LocalExecutor task processes.

``airflow.cfg`` sets ``[secrets] backend`` to this plugin, the connections
live in the metastore holding references only, and the example DAGs run
against a real PostgreSQL server, a real HTTP API and a moto server counting
every AWS call. Run alone with ``make e2e``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from standins.http_api import BearerTokenApi
from tests.conftest import postgres_server

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parent.parent / "example_dags"
DB_USER = "wh_reader_77"
DB_PASSWORD = "e2e-Pg-password-90210"
API_TOKEN = "e2e-api-token-31337"
ROTATING = "e2e-rotating-password-5150"
ROTATED = "e2e-rotated-password-8086"


@pytest.fixture(scope="module")
def postgres_if_installed() -> Iterator[Any]:
    """The PostgreSQL server, or ``None`` where it is not installed (CI requires it).

    Only the PostgreSQL examples need it: the HTTP, rotation and server-side
    checks run without it.
    """
    from standins.postgres import find_pg_bindir

    try:
        find_pg_bindir()
    except RuntimeError:
        if os.environ.get("AIRFLOW_SM_REFS_REQUIRE_POSTGRES"):
            raise
        yield None
        return
    with postgres_server(user=DB_USER, password=DB_PASSWORD, database="warehouse") as server:
        yield server


@pytest.fixture
def postgres(postgres_if_installed: Any) -> Any:
    if postgres_if_installed is None:
        pytest.skip("PostgreSQL server binaries not installed")
    return postgres_if_installed


@pytest.fixture(scope="module")
def services(aws_server: AwsStandIn) -> Iterator[tuple[AwsStandIn, BearerTokenApi]]:
    aws_server.reset()
    client = aws_server.client()
    client.create_secret(Name="warehouse/db", SecretString=json.dumps({"username": DB_USER, "password": DB_PASSWORD}))
    client.create_secret(Name="partner/api", SecretString=json.dumps({"token": API_TOKEN}))
    client.create_secret(Name="demo/rotating", SecretString=json.dumps({"password": ROTATING}))
    with BearerTokenApi(API_TOKEN) as api:
        yield aws_server, api


@pytest.fixture(scope="module")
def airflow(
    services: tuple[AwsStandIn, BearerTokenApi], postgres_if_installed: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from standins.airflow_standalone import AirflowStandalone

    aws, api = services
    postgres = postgres_if_installed
    root = tmp_path_factory.mktemp("e2e")
    dags = root / "dags"
    dags.mkdir()
    for path in EXAMPLES.glob("example_*.py"):
        shutil.copy(path, dags / path.name)
    cache_dir = root / "worker-cache"
    kwargs = {
        "region_name": "us-east-1",
        "endpoint_url": aws.endpoint_url,
        "cache_ttl_seconds": 300,
        "shared_cache_dir": str(cache_dir),
        "allowed_secrets": ["warehouse/*", "partner/*", "demo/*"],
    }
    config = {
        ("secrets", "backend"): "airflow_sm_refs.backend.SecretsManagerRefsBackend",
        ("secrets", "backend_kwargs"): json.dumps(kwargs),
    }
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    connections = {
        "warehouse_db": {
            "conn_type": "postgres",
            # without PostgreSQL (the tests that use it skip): a port nothing listens on
            "host": postgres.host if postgres else "127.0.0.1",
            "port": postgres.port if postgres else 9,
            "schema": postgres.database if postgres else "warehouse",
            "login": "{{workato:sm:username:warehouse/db}}",
            "password": "{{workato:sm:password:warehouse/db}}",
        },
        "partner_api": {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": api.port,
            "schema": "http",
            "extra": json.dumps({"Authorization": "Bearer {{workato:sm:token:partner/api}}"}),
        },
        "rotation_demo": {"conn_type": "generic", "password": "{{workato:sm:password:demo/rotating}}"},
    }
    conn_file = root / "connections.json"
    conn_file.write_text(json.dumps(connections))
    with AirflowStandalone(home=root / "home", dags_folder=dags, config=config, env=env) as af:
        af.run_cli("connections", "import", str(conn_file))
        af.wait_ready(timeout=240)
        af.worker_cache_dir = cache_dir  # type: ignore[attr-defined]
        yield af


def run_and_wait(af: Any, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, str]:
    run_id = af.trigger(dag_id, conf=conf)
    return run_id, af.wait_for_run(dag_id, run_id, timeout=240)


def task_logs(af: Any, dag_id: str, run_id: str) -> str:
    files = af.task_log_files(dag_id, run_id)
    assert files, f"no task log files for {dag_id}"
    return "\n".join(p.read_text(errors="replace") for p in files)


SECRET_VALUES = (DB_USER, DB_PASSWORD, API_TOKEN, ROTATING, ROTATED)


def clear_worker_cache(af: Any) -> None:
    """Empty the worker's shared cache with the CLI a user would run (none yet: nothing to clear)."""
    if not Path(af.worker_cache_dir).exists():
        return  # `cache clear --dir` of a missing directory is an error, rightly
    cli = Path(sys.executable).parent / "airflow-sm-refs"
    done = subprocess.run(
        [str(cli), "cache", "clear", "--dir", str(af.worker_cache_dir)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


def fingerprint(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()[:12]


class TestFullAirflowRun:
    def test_mapped_tasks_make_one_aws_call_per_secret(self, airflow: Any, services: Any, postgres: Any) -> None:
        aws, _ = services
        clear_worker_cache(airflow)  # cold, whatever ran before: this test owns what it counts
        aws.reset_counts()
        run_id, state = run_and_wait(airflow, "example_mapped_tasks", {"tasks": 8})
        states = airflow.task_states("example_mapped_tasks", run_id)
        assert state == "success", states
        assert sum(1 for t in states if t.startswith("query_shard")) == 8
        # 8 task processes, one secret, a cold worker cache: one fetch on this
        # worker, counted at the moto side
        assert aws.calls() == 1
        logs = task_logs(airflow, "example_mapped_tasks", run_id)
        assert "from worker cache" in logs

    def test_postgres_example_succeeds_and_logs_are_masked(self, airflow: Any, postgres: Any) -> None:
        run_id, state = run_and_wait(airflow, "example_postgres_query")
        assert state == "success", airflow.task_states("example_postgres_query", run_id)
        logs = task_logs(airflow, "example_postgres_query", run_id)
        for value in SECRET_VALUES:
            assert value not in logs
        assert "***" in logs  # current_user is the login from the secret, masked in the returned rows

    def test_http_example_succeeds_and_logs_are_masked(self, airflow: Any, services: Any) -> None:
        _, api = services
        run_id, state = run_and_wait(airflow, "example_http_bearer_token")
        assert state == "success", airflow.task_states("example_http_bearer_token", run_id)
        assert api.rejected == 0 and api.requests >= 1
        logs = task_logs(airflow, "example_http_bearer_token", run_id)
        assert API_TOKEN not in logs
        assert "Authorization header: ***" in logs

    def test_rotation_is_picked_up(self, airflow: Any, services: Any) -> None:
        aws, _ = services

        def run_fingerprint() -> str:
            run_id, state = run_and_wait(airflow, "example_rotation")
            assert state == "success", airflow.task_states("example_rotation", run_id)
            logs = task_logs(airflow, "example_rotation", run_id)
            assert ROTATING not in logs and ROTATED not in logs
            found = re.findall(r"rotation_demo password fingerprint: ([0-9a-f]{12})", logs)
            assert found, "the task logged no fingerprint"
            return found[-1]

        clear_worker_cache(airflow)
        aws.client().put_secret_value(SecretId="demo/rotating", SecretString=json.dumps({"password": ROTATING}))
        assert run_fingerprint() == fingerprint(ROTATING)
        aws.client().put_secret_value(SecretId="demo/rotating", SecretString=json.dumps({"password": ROTATED}))
        # Within cache_ttl_seconds (300 here) the worker still serves what it fetched ...
        assert run_fingerprint() == fingerprint(ROTATING)
        # ... and once the entry is gone (expiry, or `airflow-sm-refs cache clear`
        # after a rotation by hand), the next run fetches the new value.
        aws.reset_counts()
        clear_worker_cache(airflow)
        assert run_fingerprint() == fingerprint(ROTATED)
        assert aws.calls() == 1

    def test_server_processes_never_resolved(self, airflow: Any, services: Any) -> None:
        aws, _ = services
        # The API server hands out the stored reference, not the credential,
        # and makes no AWS call for it (counted at the stand-in, around the requests).
        clear_worker_cache(airflow)
        aws.reset_counts()
        conn = airflow._request("GET", "/api/v2/connections/warehouse_db")
        listed = airflow._request("GET", "/api/v2/connections")
        assert aws.total_calls() == 0
        assert conn["login"] == "{{workato:sm:username:warehouse/db}}"
        assert conn["password"] in (None, "", "***") or conn["password"] == "{{workato:sm:password:warehouse/db}}"
        api_conn = next(c for c in listed["connections"] if c["connection_id"] == "partner_api")
        assert API_TOKEN not in (api_conn.get("extra") or "")  # the API redacts Authorization: "***"
        # (The scheduler's stdout also carries the task logs LocalExecutor
        # echoes there, unmasked by Airflow for its own passwords too, so values
        # are only checked for in the API server's output.)
        api_log = airflow.component_logs()["api-server"].read_text(errors="replace")
        for value in SECRET_VALUES:
            assert value not in api_log
