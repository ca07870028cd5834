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
import logging

from airflow.sdk import DAG, BaseHook, task

log = logging.getLogger("airflow.task")

with DAG(dag_id="read_{conn_id}", schedule=None, catchup=False) as dag:

    @task
    def read_connection():
        conn = BaseHook.get_connection("{conn_id}")
        log.info("login=%s password=%s", conn.login, conn.password)  # the masker must hide the password
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
        assert SECRET["password"] not in out.out + out.err
        from airflow.sdk._shared.secrets_masker import redact

        assert redact(f"password={SECRET['password']}") == "password=***"
        assert backend_configured.calls() == 1

    def test_broken_reference_fails_the_task_without_handing_out_the_token(
        self, metastore: Path, airflow_home: Path, backend_configured: AwsStandIn, capsys: pytest.CaptureFixture[str]
    ) -> None:
        store_connection("meta_broken", conn_type="postgres", password="{{workato:sm:password:meta/missing}}")
        run = build_dag(airflow_home, "meta_broken").test()
        assert run.state == "failed"
        out = capsys.readouterr()
        text = out.out + out.err
        assert "meta/missing" in text and "meta_broken" in text
        assert "password={{workato" not in text
