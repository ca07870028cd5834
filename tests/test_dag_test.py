"""A connection stored in the metastore, resolved inside a task run by ``dag.test()``.

The task's lookup crosses the Execution API, so this proves the backend finds
the raw connection there (later in the chain) and resolves it in the task.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from standins.aws import AwsStandIn

SECRET = {"username": "meta_user", "password": "metastore-Secret-991"}


def store_connection(conn_id: str, **fields: object) -> None:
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()
        session.add(Connection(conn_id=conn_id, **fields))


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


DAG_TEMPLATE = """
import hashlib

import structlog
from airflow.sdk import DAG, BaseHook, task

log = structlog.get_logger("airflow.task")

with DAG(dag_id="read_{conn_id}", schedule=None, catchup=False) as dag:

    @task
    def read_connection():
        conn = BaseHook.get_connection("{conn_id}")
        # The task's own logger (structlog in Airflow 3): this line must reach the console.
        log.info("task-log-line login=%s password=%s", conn.login, conn.password)  # the masker must hide the password
        got = hashlib.sha256((conn.password or "").encode()).hexdigest()
        if (got, conn.login) != ("{expected_digest}", "{expected_login}"):
            raise ValueError("the task did not receive the resolved credential")

    read_connection()
"""


def build_dag(airflow_home: Path, conn_id: str, expected_password: str = "", expected_login: str = ""):  # noqa: ANN201
    """Write a DAG file into the dags folder (dag.test() parses it from there) and load it."""
    import importlib.util

    dags = airflow_home / "dags"
    dags.mkdir(exist_ok=True)
    path = dags / f"read_{conn_id}.py"
    path.write_text(
        DAG_TEMPLATE.format(conn_id=conn_id, expected_digest=digest(expected_password), expected_login=expected_login)
    )
    spec = importlib.util.spec_from_file_location(f"read_{conn_id}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


class TestDagTest:
    def test_metastore_connection_resolved_in_task(
        self, metastore: Path, airflow_home: Path, backend_configured: AwsStandIn, capsys: pytest.CaptureFixture[str]
    ) -> None:
        backend_configured.client().create_secret(Name="meta/db", SecretString=json.dumps(SECRET))
        store_connection(
            "meta_db",
            conn_type="postgres",
            host="db.internal",
            login="{{workato:sm:username:meta/db}}",
            password="{{workato:sm:password:meta/db}}",
        )
        dag = build_dag(airflow_home, "meta_db", SECRET["password"], SECRET["username"])
        run = dag.test()
        assert run.state == "success"
        out = capsys.readouterr()
        # `dags test` prints task logs to the console unmasked (README, "Logs and
        # masking"), so the console is no proof of masking. What it proves: the
        # task ran and logged; and that very line, put through the masker a
        # worker's log file goes through, shows the password as ***.
        lines = [line for line in (out.out + out.err).splitlines() if "task-log-line" in line]
        assert lines, "the console output holds no task log line: nothing to check"
        from airflow.sdk._shared.secrets_masker import redact

        masked = redact(lines[0])
        assert "password=***" in masked
        assert SECRET["password"] not in masked
        assert backend_configured.calls() == 1

    def test_broken_reference_fails_the_task_without_handing_out_the_token(
        self, metastore: Path, airflow_home: Path, backend_configured: AwsStandIn, capsys: pytest.CaptureFixture[str]
    ) -> None:
        store_connection("meta_broken", conn_type="postgres", password="{{workato:sm:password:meta/missing}}")
        run = build_dag(airflow_home, "meta_broken").test()
        assert run.state == "failed"
        out = capsys.readouterr()
        text = out.out + out.err
        # The lookup failed the task, with the error naming the connection --
        # not the DAG's own check of a value it was handed ("did not receive").
        assert "SecretNotFoundError: connection 'meta_broken', field 'password'" in text
        assert "meta/missing" in text
        assert "the task did not receive the resolved credential" not in text
        assert "task-log-line" not in text  # get_connection never returned
        assert "password={{workato" not in text
