"""The real thing: scheduler, API server, dag processor and LocalExecutor task processes.

``airflow.cfg`` sets ``[secrets] backend`` to this plugin, the connections
live in the metastore holding references only, and the example DAGs run
against a real PostgreSQL server, a real HTTP API and a moto server counting
every AWS call. Run alone with ``make e2e``.
"""

from __future__ import annotations

import json
import shutil
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


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    with postgres_server(user=DB_USER, password=DB_PASSWORD, database="warehouse") as server:
        yield server


@pytest.fixture(scope="module")
def services(aws_server: AwsStandIn, postgres: Any) -> Iterator[tuple[AwsStandIn, Any, BearerTokenApi]]:
    aws_server.reset()
    client = aws_server.client()
    client.create_secret(Name="warehouse/db", SecretString=json.dumps({"username": DB_USER, "password": DB_PASSWORD}))
    client.create_secret(Name="partner/api", SecretString=json.dumps({"token": API_TOKEN}))
    client.create_secret(Name="demo/rotating", SecretString=json.dumps({"password": ROTATING}))
    with BearerTokenApi(API_TOKEN) as api:
        yield aws_server, postgres, api


@pytest.fixture(scope="module")
def airflow(services: tuple[AwsStandIn, Any, BearerTokenApi], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from standins.airflow_standalone import AirflowStandalone

    aws, postgres, api = services
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
            "host": postgres.host,
            "port": postgres.port,
            "schema": postgres.database,
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
        yield af


def run_and_wait(af: Any, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, str]:
    run_id = af.trigger(dag_id, conf=conf)
    return run_id, af.wait_for_run(dag_id, run_id, timeout=240)


def task_logs(af: Any, dag_id: str, run_id: str) -> str:
    files = af.task_log_files(dag_id, run_id)
    assert files, f"no task log files for {dag_id}"
    return "\n".join(p.read_text(errors="replace") for p in files)


SECRET_VALUES = (DB_USER, DB_PASSWORD, API_TOKEN, ROTATING)


class TestFullAirflowRun:
    def test_mapped_tasks_make_one_aws_call_per_secret(self, airflow: Any, services: Any) -> None:
        aws, _, _ = services
        aws.reset_counts()
        run_id, state = run_and_wait(airflow, "example_mapped_tasks", {"tasks": 8})
        states = airflow.task_states("example_mapped_tasks", run_id)
        assert state == "success", states
        assert sum(1 for t in states if t.startswith("query_shard")) == 8
        # 8 task processes, one secret: one fetch on this worker, counted at the moto side
        assert aws.calls() == 1
        logs = task_logs(airflow, "example_mapped_tasks", run_id)
        assert "from worker cache" in logs

    def test_postgres_example_succeeds_and_logs_are_masked(self, airflow: Any) -> None:
        run_id, state = run_and_wait(airflow, "example_postgres_query")
        assert state == "success", airflow.task_states("example_postgres_query", run_id)
        logs = task_logs(airflow, "example_postgres_query", run_id)
        for value in SECRET_VALUES:
            assert value not in logs
        assert "***" in logs  # current_user is the login from the secret, masked in the returned rows

    def test_http_example_succeeds_and_logs_are_masked(self, airflow: Any, services: Any) -> None:
        _, _, api = services
        run_id, state = run_and_wait(airflow, "example_http_bearer_token")
        assert state == "success", airflow.task_states("example_http_bearer_token", run_id)
        assert api.rejected == 0 and api.requests >= 1
        logs = task_logs(airflow, "example_http_bearer_token", run_id)
        assert API_TOKEN not in logs
        assert "Authorization header: ***" in logs

    def test_rotation_example_succeeds(self, airflow: Any) -> None:
        run_id, state = run_and_wait(airflow, "example_rotation")
        assert state == "success"
        logs = task_logs(airflow, "example_rotation", run_id)
        assert "password fingerprint" in logs and ROTATING not in logs

    def test_server_processes_never_resolved(self, airflow: Any) -> None:
        # The API server hands out the stored reference, not the credential...
        conn = airflow._request("GET", "/api/v2/connections/warehouse_db")
        assert conn["login"] == "{{workato:sm:username:warehouse/db}}"
        # ...and neither it nor the scheduler ever fetched a secret. (The
        # scheduler's stdout also carries the task logs LocalExecutor echoes
        # there: those lines name a task_id, and Airflow does not mask that
        # echo, not even for its own connection passwords, so values are only
        # checked for in the API server's output.)
        for name in ("api-server", "scheduler"):
            text = airflow.component_logs()[name].read_text(errors="replace")
            fetches = [line for line in text.splitlines() if "airflow_sm_refs" in line and "task_id=" not in line]
            assert not fetches, (name, fetches[:3])
        api_log = airflow.component_logs()["api-server"].read_text(errors="replace")
        for value in SECRET_VALUES:
            assert value not in api_log
