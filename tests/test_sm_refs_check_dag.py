"""The maintenance DAG ``sm_refs_check``, run with ``dag.test()`` on every Airflow line.

Its task starts ``airflow-sm-refs check`` as a separate Python process, which
finds connections in the environment it inherits and in the session's
metastore (AIRFLOW_HOME is set by ``tests/conftest.py`` before Airflow starts,
so the child reads the same ``airflow.cfg`` and sqlite file).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.conftest import configure_backend, import_dag_file, set_conn

pytestmark = pytest.mark.compat

DAG_FILE = Path(__file__).resolve().parent.parent / "example_dags" / "sm_refs_check.py"
SECRET = {"username": "check_user", "password": "Check-dag-Secret-5521"}


def check_supports_all() -> bool:
    """Whether the installed ``check`` takes ``--all`` (else the DAG is given the connection ids)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "airflow_sm_refs.cli", "check", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--all" in help_text


@pytest.fixture
def check_dag(metastore: Path) -> Any:
    return import_dag_file(metastore, DAG_FILE, "sm_refs_check").dag


@pytest.fixture
def only_these_connections(metastore: Path) -> Iterator[None]:
    """No connection or Variable in the metastore but the test's: ``--all`` checks every one there."""
    from airflow.models import Connection, Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).delete()
        session.query(Variable).delete()
    yield
    with create_session() as session:
        session.query(Connection).delete()


@pytest.fixture
def backend(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> AwsStandIn:
    # No per-worker cache: the command runs in a child process, which the
    # tests' private cache directory (patched in this process) does not reach.
    configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False)
    aws.client().create_secret(Name="check/db", SecretString=json.dumps(SECRET))
    return aws


def store_connection(conn_id: str, **fields: Any) -> None:
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(Connection(conn_id=conn_id, **fields))


def run_check(dag: Any, conn_ids: list[str], *, named: bool = False) -> Any:
    """Run the DAG: ``check --all`` where the command has it (unless ``named``), else ``check`` of ``conn_ids``."""
    return dag.test(run_conf=None if check_supports_all() and not named else {"conn_ids": conn_ids})


def task_log(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """What the task logged: records (where Airflow hands them to logging) and the console (where it prints them)."""
    out = capfd.readouterr()
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join([caplog.text, out.out, out.err]))  # 3.0 prints in colour


class TestSmRefsCheckDag:
    def test_good_references_pass_and_the_log_shows_the_table_without_values(
        self,
        check_dag: Any,
        only_these_connections: None,
        backend: AwsStandIn,
        monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        set_conn(
            monkeypatch,
            "check_env_db",
            {"conn_type": "postgres", "host": "db.internal", "password": "{{workato:sm:password:check/db}}"},
        )
        store_connection("check_meta_db", conn_type="postgres", login="{{workato:sm:username:check/db}}")
        run = run_check(check_dag, ["check_env_db", "check_meta_db"])
        text = task_log(capfd, caplog)
        assert run.state == "success", text[-3000:]
        # The table of both connections, the environment's and the metastore's: the child reached both.
        assert "connection 'check_env_db': 1 reference" in text
        assert "connection 'check_meta_db': 1 reference" in text
        table = [line for line in text.splitlines() if "check/db" in line and "ok (" in line]
        assert any("password" in line for line in table) and any("username" in line for line in table), text[-3000:]
        assert "FIELD" in text and "RESULT" in text
        for value in SECRET.values():
            assert value not in text

    @pytest.mark.parametrize("named", [False, True], ids=["all", "named"])
    def test_a_missing_key_fails_the_task_naming_it(
        self,
        named: bool,
        check_dag: Any,
        only_these_connections: None,
        backend: AwsStandIn,
        monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        set_conn(monkeypatch, "check_good", {"conn_type": "generic", "password": "{{workato:sm:password:check/db}}"})
        set_conn(monkeypatch, "check_broken", {"conn_type": "generic", "password": "{{workato:sm:api_key:check/db}}"})
        run = run_check(check_dag, ["check_good", "check_broken"], named=named)
        text = task_log(capfd, caplog)
        assert run.state == "failed", text[-3000:]
        # The task's own error names the connection's broken reference and the missing key ...
        # (3.0 wraps long lines on the console: read it as one line.)
        assert (
            "airflow-sm-refs check failed (exit 1): connection 'check_broken': "
            "password check/db api_key AWSCURRENT ERROR: secret 'check/db' (AWSCURRENT) has no key 'api_key'"
        ) in " ".join(text.split()), text[-3000:]
        # ... the good one is in the table as ok, and no value is anywhere.
        assert any("check/db" in line and "ok (" in line for line in text.splitlines())
        for value in SECRET.values():
            assert value not in text
