"""The drop-in ``SecretsManagerBackend`` as ``[secrets] backend``, in tasks run by ``dag.test()``, on every line.

Connections and Variables stored whole in Secrets Manager (the Amazon provider's layout), with
references inside, read by the tasks of tests/compat_dags/stored_secrets.py through Airflow's own
lookup (``BaseHook.get_connection``, ``Variable.get``, an AWS hook). The same DAG runs under a real
scheduler on the newest line in tests/test_e2e_stored_secrets.py, which also checks the task log
files; ``dag.test()`` runs it on every line for a few seconds (1 s on 2.x, 5-9 s on 3.x, most of it
Airflow starting its in-process Execution API and running each task).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from standins.aws import AwsStandIn
from tests.conftest import import_dag_file, reset_airflow_secrets_cache
from tests.stored_secrets_data import ASKED, BACKEND, BROKEN_REFERENCE, EXPECTED_SHA256, PLAINTEXTS, seed

pytestmark = pytest.mark.compat

DAG_FILE = Path(__file__).resolve().parent / "compat_dags" / "stored_secrets.py"


@pytest.fixture
def no_aws_default(metastore: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``aws_default`` stored nowhere: not in the environment, and not in the metastore, where
    Airflow 2's ``db migrate`` creates it (put back afterwards)."""
    from airflow.models import Connection
    from airflow.utils.session import create_session

    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT", raising=False)
    with create_session() as session:
        row = session.query(Connection).filter(Connection.conn_id == "aws_default").one_or_none()
        saved = None if row is None else {"conn_type": row.conn_type, "extra": row.extra}
        if row is not None:
            session.delete(row)
    yield
    if saved is not None:
        with create_session() as session:
            if session.query(Connection).filter(Connection.conn_id == "aws_default").one_or_none() is None:
                session.add(Connection(conn_id="aws_default", **saved))


def task_states(dag_id: str) -> dict[str, str | None]:
    """The task states of the DAG's latest run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
        assert run is not None, f"{dag_id} has no run"
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        return {ti.task_id: getattr(ti.state, "value", ti.state) for ti in rows}


def test_stored_connection_and_variables_resolve_and_a_broken_reference_fails_the_task(
    metastore: Path,
    aws: AwsStandIn,
    no_aws_default: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow_sm_refs._exceptions import SecretLookupAborted, SecretReferenceError

    seed(aws.client())
    capsys.readouterr()  # the seeding's own output (botocore's debug lines show what it wrote)
    caplog.clear()
    module = import_dag_file(metastore, DAG_FILE, "stored_secrets")
    raised: list[str] = []
    render = SecretReferenceError._render

    def recording_render(self: SecretReferenceError) -> str:
        raised.append(render(self))
        return raised[-1]

    monkeypatch.setattr(SecretReferenceError, "_render", recording_render)

    escaped: SecretLookupAborted | None = None
    kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}
    kwargs["shared_cache_dir"] = str(tmp_path / "cache")
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", BACKEND)
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps(kwargs))
    monkeypatch.setenv("STORED_EXPECTED_SHA256", json.dumps(EXPECTED_SHA256))
    reset_airflow_secrets_cache()
    aws.reset_counts()
    try:
        module.dag.test()
    except SecretLookupAborted as exc:
        # Airflow 2's dag.test() catches Exception only: the lookup's BaseException (no
        # authoritative deny there) leaves it once the task is marked failed, where the
        # `airflow tasks run` of a real worker exits failed. The broken task runs last.
        escaped = exc
    counts = aws.secret_reads()
    out = capsys.readouterr()
    records = [r for r in caplog.records if not r.name.startswith(("botocore", "boto3", "urllib3"))]
    logged = [r.getMessage() for r in records]
    states = task_states(module.DAG_ID)

    # The stored connection (password and extra.api_key refer to stored/app) and both stored
    # Variables arrived resolved: the task checked their hashes and raised otherwise.
    assert states.get("read_stored") == "success", (states, logged[-40:])
    assert [m for m in logged if m.startswith("STORED_CHECKED") and m.endswith("wrong=[] raw=[]")], logged[-40:]
    # aws_default, stored nowhere: the AWS hook of each task went on without it, and the id was
    # read once for both.
    assert logged.count("STORED_AWS_DEFAULT found=False") == 2, logged[-40:]
    assert counts.get("airflow/connections/aws_default") == 1, counts
    # Every stored secret, and the one they refer to: read once for the whole run.
    assert set(counts) == set(ASKED) and all(n == 1 for n in counts.values()), counts

    # The broken reference inside the stored connection failed its task; it was never handed out.
    assert states.get("broken_reference_fails") == "failed", (states, logged[-40:])
    assert not [m for m in logged if m.startswith("STORED_UNEXPECTED_SUCCESS")], logged[-40:]
    # Its error: one line naming the connection, the field and the reference (without its braces:
    # Airflow masks the stored password text, braces and all), the key missing, and no value ...
    named = BROKEN_REFERENCE.strip("{}")
    message = (
        f"connection 'stored_broken', field 'password', reference '{named}': "
        "secret 'stored/app' (AWSCURRENT) has no key 'pasword'"
    )
    assert message in raised, raised
    assert escaped is None or str(escaped) == message
    # ... which is what the task failed with, on the console (3.0's rich traceback wraps it) ...
    console = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", out.out + out.err + str(escaped or "")).split())
    assert message in console or any(message in (r.exc_text or "") for r in records), console[-3000:]
    # ... and the plugin's own record of the failed lookup, one line too.
    assert any(
        m.startswith("connection 'stored_broken' field 'password': secret stored/app key 'pasword'") and "\n" not in m
        for m in logged
    ), logged[-40:]

    # The DAG logs no value and the plugin none: no value of the referenced secret in the output.
    # (Not each string the stand-in served: the stored JSON's login and conn_type are no secret.)
    # Airflow 3.0's in-process supervisor echoes the masker's registrations at debug level
    # ("MaskSecret(value=...)", Airflow's own; docs/errors.md): left out.
    text = "\n".join([out.out, out.err, *(caplog.handler.format(r) for r in records)])
    lines = [line for line in text.splitlines() if "MaskSecret(" not in line]
    assert not [v for v in PLAINTEXTS if any(v in line for line in lines)], "a secret value is in the output"
