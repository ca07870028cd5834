"""Every example DAG, run with ``dag.test()`` against real services, on every Airflow line.

The examples are what users copy, on Amazon MWAA (Airflow 2.10/2.11) as on
Airflow 3, so they are ``compat`` tests: ``make test-compat`` loads and runs
them on each older line too. PostgreSQL is a real server with scram-sha-256 password authentication, and
the HTTP API rejects any token but the secret's, so a passing run means the
resolved credential really reached the service.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from standins.http_api import BearerTokenApi
from tests.conftest import FakeClock, configure_backend, postgres_server, set_conn

pytestmark = pytest.mark.compat

EXAMPLES = Path(__file__).resolve().parent.parent / "example_dags"
DB_USER = "reporting"
DB_PASSWORD = "pg-Secret-'quoted'-\\-4471"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server on loopback that enforces scram-sha-256."""
    with postgres_server(user=DB_USER, password=DB_PASSWORD, database="warehouse") as server:
        yield server


@pytest.fixture(scope="module")
def example_dags(metastore: Path) -> Path:
    """The example DAG files, in the dags folder dag.test() parses."""
    dags = metastore / "dags"
    dags.mkdir(exist_ok=True)
    for path in EXAMPLES.glob("example_*.py"):
        shutil.copy(path, dags / path.name)
    return dags


def load_dag(dags: Path, dag_id: str) -> Any:
    spec = importlib.util.spec_from_file_location(dag_id, dags / f"{dag_id}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def xcom(run: Any, task_id: str) -> Any:
    """The return value a task of ``run`` pushed."""
    from airflow.utils.session import create_session

    try:
        from airflow.models.xcom import XComModel
    except ImportError:  # Airflow 2: the model is XCom, with a lookup of its own
        from airflow.models.xcom import XCom

        with create_session() as session:
            value = XCom.get_one(run_id=run.run_id, key="return_value", dag_id=run.dag_id, task_id=task_id, session=session)
        assert value is not None, f"{task_id} pushed nothing"
        return value
    with create_session() as session:
        query = XComModel.get_many(run_id=run.run_id, key="return_value", dag_ids=run.dag_id, task_ids=task_id)
        row = session.scalars(query).first()
        assert row is not None, f"{task_id} pushed nothing"
        return XComModel.deserialize_value(row)


def warehouse(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, postgres: Any, password: str = DB_PASSWORD) -> None:
    """The warehouse/db secret holding ``password``, and the connection referring to it."""
    aws.client().create_secret(Name="warehouse/db", SecretString=json.dumps({"username": DB_USER, "password": password}))
    set_conn(
        monkeypatch,
        "warehouse_db",
        {
            "conn_type": "postgres",
            "host": postgres.host,
            "port": postgres.port,
            "schema": postgres.database,
            "login": "{{workato:sm:username:warehouse/db}}",
            "password": "{{workato:sm:password:warehouse/db}}",
        },
    )


def partner_api_conn(monkeypatch: pytest.MonkeyPatch, api: BearerTokenApi) -> None:
    set_conn(
        monkeypatch,
        "partner_api",
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": api.port,
            "schema": "http",
            "extra": {"Authorization": "Bearer {{workato:sm:token:partner/api}}"},
        },
    )


class TestPostgresExample:
    def test_query_runs_with_credentials_from_the_secret(
        self, example_dags: Path, postgres: Any, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        warehouse(backend_configured, monkeypatch, postgres)
        run = load_dag(example_dags, "example_postgres_query").test()
        assert run.state == "success"
        rows = xcom(run, "who_am_i")
        assert "warehouse" in repr(rows) and DB_USER in repr(rows), rows
        assert backend_configured.calls() == 1  # login and password: one secret, one fetch

    def test_wrong_password_in_the_secret_is_rejected_by_the_server(
        self,
        example_dags: Path,
        postgres: Any,
        backend_configured: AwsStandIn,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        warehouse(backend_configured, monkeypatch, postgres, password="not-the-password")
        run = load_dag(example_dags, "example_postgres_query").test()
        assert run.state == "failed"
        out = capsys.readouterr()
        text = out.out + out.err
        # The server refused the (resolved, wrong) password -- not a lookup error, not any other failure.
        assert f'password authentication failed for user "{DB_USER}"' in text
        assert "SecretReferenceError" not in text and "SecretNotFoundError" not in text
        assert backend_configured.calls() == 1


class TestHttpExample:
    def test_bearer_token_from_extras_is_accepted(
        self, example_dags: Path, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with BearerTokenApi("partner-token-ABCDEF") as api:
            backend_configured.client().create_secret(
                Name="partner/api", SecretString=json.dumps({"token": "partner-token-ABCDEF"})
            )
            partner_api_conn(monkeypatch, api)
            run = load_dag(example_dags, "example_http_bearer_token").test()
            assert run.state == "success"
            assert (api.requests, api.rejected) == (1, 0)

    def test_wrong_token_is_rejected_by_the_api(
        self, example_dags: Path, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with BearerTokenApi("the-real-token-123") as api:
            backend_configured.client().create_secret(Name="partner/api", SecretString=json.dumps({"token": "stale-token-999"}))
            partner_api_conn(monkeypatch, api)
            run = load_dag(example_dags, "example_http_bearer_token").test()
            assert run.state == "failed"
            assert api.rejected == 1


def async_http_hook_keeps_the_session() -> bool:
    """Whether ``HttpAsyncHook.run`` reads the response inside its session (HTTP provider 5.x).

    Provider 4.x (pinned with Airflow 2.10) returns the response after closing
    the session, so a deferred ``HttpOperator`` reading the body fails at
    random with "Connection closed" (apache/airflow#45228), whatever the token.
    """
    import inspect

    from airflow.providers.http.hooks.http import HttpAsyncHook

    return "session" in inspect.signature(HttpAsyncHook.run).parameters


class TestDeferrableHttpExample:
    """The trigger, not the task, looks the connection up (``dag.test()`` runs it in-process)."""

    def test_trigger_sends_the_resolved_token(
        self, example_dags: Path, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if not async_http_hook_keeps_the_session():
            pytest.skip("this HTTP provider's deferred HttpOperator cannot read a response (apache/airflow#45228)")
        with BearerTokenApi("deferred-token-7730") as api:
            backend_configured.client().create_secret(Name="partner/api", SecretString=json.dumps({"token": "deferred-token-7730"}))
            partner_api_conn(monkeypatch, api)
            run = load_dag(example_dags, "example_deferrable_http").test()
            assert run.state == "success"
            assert (api.requests, api.rejected) == (1, 0)

    def test_broken_reference_fails_the_task_and_never_reaches_the_api(
        self,
        example_dags: Path,
        backend_configured: AwsStandIn,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        from airflow_sm_refs import SecretNotFoundError
        from airflow_sm_refs._exceptions import SecretLookupAborted

        raised: list[SecretNotFoundError] = []
        init = SecretNotFoundError.__init__

        def recording_init(self: SecretNotFoundError, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            raised.append(self)

        monkeypatch.setattr(SecretNotFoundError, "__init__", recording_init)
        with BearerTokenApi("deferred-token-7730") as api:
            partner_api_conn(monkeypatch, api)  # partner/api does not exist
            try:
                run = load_dag(example_dags, "example_deferrable_http").test()
            except SecretLookupAborted as exc:
                # Airflow 2's dag.test() runs the trigger with a bare asyncio.run(), which lets the
                # lookup's BaseException through: `airflow dags test` stops on it (a real triggerer
                # fails the task). Either way it is this reference's error, not a request.
                assert "reference 'workato:sm:token:partner/api'" in str(exc)
            else:
                assert run.state == "failed"
            assert api.requests == 0, "the raw reference must never be sent as the header"
        out = capsys.readouterr()
        text = out.out + out.err
        # Failed by the lookup: a SecretNotFoundError for this reference ...
        assert any("workato:sm:token:partner/api" in str(e) for e in raised), "no SecretNotFoundError was raised"
        # ... logged on one line naming the connection, the field and the secret, on every line ...
        logged = [r.getMessage() for r in caplog.records if r.name == "airflow_sm_refs" and r.levelname == "ERROR"]
        assert any(
            m.startswith("connection 'partner_api' field 'extra.Authorization': secret partner/api key 'token'")
            and "ResourceNotFoundException" in m
            for m in logged
        ), logged
        # ... and the raw token was never handed on as a header value.
        assert "Bearer {{workato" not in text


class TestRotationExample:
    def test_new_value_appears_after_ttl_not_before(
        self, example_dags: Path, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow_sm_refs.resolver import PROCESS_CACHE

        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False)
        clock = FakeClock()
        monkeypatch.setattr(PROCESS_CACHE, "timer", clock)
        client = aws.client()
        client.create_secret(Name="demo/rotating", SecretString=json.dumps({"password": "first-password"}))
        set_conn(monkeypatch, "rotation_demo", {"conn_type": "generic", "password": "{{workato:sm:password:demo/rotating}}"})
        dag = load_dag(example_dags, "example_rotation")

        def fingerprint() -> str:
            run = dag.test()
            assert run.state == "success"
            return xcom(run, "password_fingerprint")

        def expected(password: str) -> str:
            return hashlib.sha256(password.encode()).hexdigest()[:12]

        assert fingerprint() == expected("first-password")
        client.put_secret_value(SecretId="demo/rotating", SecretString=json.dumps({"password": "second-password"}))
        clock.advance(200)
        assert fingerprint() == expected("first-password")  # within cache_ttl_seconds (300)
        clock.advance(101)
        assert fingerprint() == expected("second-password")
        assert aws.calls() == 2


class TestMappedExample:
    def test_mapped_tasks_share_one_fetch(
        self, example_dags: Path, postgres: Any, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        warehouse(backend_configured, monkeypatch, postgres)
        run = load_dag(example_dags, "example_mapped_tasks").test(run_conf={"tasks": 6})
        assert run.state == "success"
        assert xcom(run, "total") == sum(i + 1 for i in range(6))
        assert backend_configured.calls() == 1
