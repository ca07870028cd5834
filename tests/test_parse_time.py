"""Parse time: a DAG file that reads a connection or Variable at top level, in a DAG-processor process.

Each test parses a real DAG folder with Airflow's own ``DagBag`` in a
subprocess whose command line is ``airflow dag-processor``, so the backend
sees the process role it has in Airflow's DAG processor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import SecretsManagerRefsBackend
from airflow_sm_refs._compat import HAS_TASK_SDK, ProcessRole, process_role
from standins.aws import AwsStandIn
from tests.conftest import configure_backend, set_conn

pytestmark = pytest.mark.compat

PASSWORD = "parse-pass-61c0ffee"

_PARSE = """
import json, sys
sys.argv = ["airflow", "dag-processor"]
try:  # Airflow 3: a DAG-processor child holds a supervisor connection (here one that answers nothing)
    from airflow.sdk.execution_time import task_runner

    class _SilentComms:
        def send(self, msg):
            return None

    task_runner.SUPERVISOR_COMMS = _SilentComms()
except ImportError:
    pass
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.stdin.readline().strip())
print("RESULT " + json.dumps({"dags": sorted(bag.dag_ids), "errors": bag.import_errors}))
"""

_DAG_FILE = """
try:
    from airflow.sdk import DAG, BaseHook, Variable
except ImportError:
    from airflow import DAG
    from airflow.hooks.base import BaseHook
    from airflow.models import Variable

{body}

with DAG({dag_id!r}, schedule=None) as dag:
    pass
"""


def _dag(folder: Path, dag_id: str, body: str) -> None:
    # one subfolder per file, so that a file can also be parsed alone
    (folder / dag_id).mkdir()
    (folder / dag_id / f"{dag_id}.py").write_text(_DAG_FILE.format(dag_id=dag_id, body=textwrap.dedent(body)))


def _run_parser(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PARSE], input=f"{folder}\n", capture_output=True, text=True, timeout=300
    )


def _parse(folder: Path) -> dict[str, Any]:
    """Parse ``folder`` as the DAG processor does; the DAG ids found and the import errors by file name."""
    done = _run_parser(folder)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"parser process failed:\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    result["errors"] = {Path(path).stem: text for path, text in result["errors"].items()}
    return result


def _as_a_parser_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Airflow 3, what parses is the DAG processor's child: it holds a supervisor connection."""
    if HAS_TASK_SDK:
        from airflow.sdk.execution_time import task_runner

        class _SilentComms:
            def send(self, msg: Any) -> None:
                return None

        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", _SilentComms(), raising=False)


@pytest.fixture
def dags(tmp_path: Path, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> Path:
    aws.client().create_secret(Name="prod/db", SecretString=json.dumps({"password": PASSWORD}))
    set_conn(monkeypatch, "parse_db", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
    set_conn(monkeypatch, "plain_db", {"conn_type": "postgres", "password": "not-a-reference", "extra": {"a": "b\\c"}})
    monkeypatch.setenv("AIRFLOW_VAR_PARSE_TOKEN", "Bearer {{workato:sm:password:prod/db}}")
    monkeypatch.setenv("AIRFLOW_VAR_PLAIN", "just text")
    folder = tmp_path / "dags"
    folder.mkdir()
    _dag(folder, "reads_conn", 'conn = BaseHook.get_connection("parse_db")')
    _dag(folder, "reads_var", 'token = Variable.get("parse_token")')
    _dag(
        folder,
        "reads_plain",
        """
        assert BaseHook.get_connection("plain_db").password == "not-a-reference"
        assert Variable.get("plain") == "just text"
        """,
    )
    return folder


class TestParseTime:
    def test_parser_role_is_what_the_backend_sees(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _as_a_parser_child(monkeypatch)
        assert process_role(["airflow", "dag-processor"]) is ProcessRole.PARSER

    def test_reference_read_at_parse_time_is_the_files_import_error(
        self, dags: Path, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Regression: the parser stepped aside, so the lookup went on past the backend."""
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url)
        if not HAS_TASK_SDK:
            # Airflow 2's DAG file processor dies of a BaseException (DagBag catches Exception
            # only), and its lookup loop logs any Exception and asks the next backend. So the
            # refusal is logged, naming the connection, and the file gets the stored reference
            # (no value, no AWS call); the processor lives on.
            for name, what in (("reads_conn", "connection 'parse_db'"), ("reads_var", "variable 'parse_token'")):
                done = _run_parser(dags / name)
                assert done.returncode == 0, done.stderr[-3000:]
                assert f"{what} holds AWS Secrets Manager references" in done.stdout + done.stderr
                assert PASSWORD not in done.stderr + done.stdout
            assert _parse(dags / "reads_plain") == {"dags": ["reads_plain"], "errors": {}}
            assert aws.calls() == 0
            return
        result = _parse(dags)
        assert sorted(result["errors"]) == ["reads_conn", "reads_var"]
        assert "connection 'parse_db' holds AWS Secrets Manager references" in result["errors"]["reads_conn"]
        assert "resolve_at_parse_time" in result["errors"]["reads_conn"]
        assert "variable 'parse_token' holds AWS Secrets Manager references" in result["errors"]["reads_var"]
        assert result["dags"] == ["reads_plain"]  # values without references are unaffected
        assert PASSWORD not in json.dumps(result)
        assert aws.calls() == 0

    def test_resolve_at_parse_time_resolves(self, dags: Path, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        configure_backend(
            monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, resolve_at_parse_time="true"
        )
        _dag(
            dags,
            "checks_value",
            f"""
            assert BaseHook.get_connection("parse_db").password == {PASSWORD!r}
            assert Variable.get("parse_token") == "Bearer " + {PASSWORD!r}
            """,
        )
        result = _parse(dags)
        assert result["errors"] == {}
        assert result["dags"] == ["checks_value", "reads_conn", "reads_plain", "reads_var"]
        assert aws.calls() == 1  # one fetch, then the process cache

    def test_backend_in_the_parser_role(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """The same rule without a subprocess: also when the reference hides behind a JSON escape."""
        monkeypatch.setattr("sys.argv", ["airflow", "dag-processor"])
        _as_a_parser_child(monkeypatch)
        set_conn(monkeypatch, "escaped", {"conn_type": "http", "extra": '{"t": "\\u007b{workato:sm::prod/x}}"}'})
        set_conn(monkeypatch, "plain", {"conn_type": "http", "password": "p", "extra": '{"a": "b\\\\c"}'})
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=aws.endpoint_url)
        from airflow_sm_refs import ReferenceNotAllowedError
        from airflow_sm_refs._exceptions import SecretLookupAborted

        with pytest.raises((ReferenceNotAllowedError, SecretLookupAborted), match="connection 'escaped'"):
            backend.get_connection("escaped")
        assert backend.get_connection("plain").password == "p"
        assert aws.calls() == 0
