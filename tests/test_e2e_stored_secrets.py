"""The drop-in ``SecretsManagerBackend`` under a real scheduler: API server, scheduler, DAG processor, LocalExecutor.

``[secrets] backend = airflow_sm_refs.backend.SecretsManagerBackend`` with the Amazon provider's
defaults, nothing in the metastore: the connections and Variables of
tests/compat_dags/stored_secrets.py are stored whole in Secrets Manager (the stand-in, which
counts reads per secret id), and ``aws_default`` is stored nowhere. One Airflow start and one run;
its two tasks are separate task processes sharing the worker's cache.

Newest line only: every line runs the same DAG with ``dag.test()`` in
tests/test_stored_secrets_dag_test.py; an Airflow start costs more than that on each older line,
and the existing standalone run there (tests/test_compat_standalone.py) configures the other
backend class, which one Airflow cannot have beside this one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from standins.aws import AwsStandIn
from tests.stored_secrets_data import (
    APP_SECRET,
    ASKED,
    BACKEND,
    BROKEN_REFERENCE,
    EXPECTED_SHA256,
    PLAINTEXTS,
    seed,
)
from tests.test_compat_standalone import messages

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DAG_FILE = Path(__file__).resolve().parent / "compat_dags" / "stored_secrets.py"
DAG_ID = "stored_secrets"


@dataclass
class StoredRun:
    """One finished run of the DAG and what it left behind."""

    af: Any
    aws: AwsStandIn
    state: str
    states: dict[str, str | None]
    #: Secrets Manager reads by secret id, over the whole Airflow start and run
    reads: dict[str, int]
    logs: dict[str, str] = field(default_factory=dict)
    log_files: list[Path] = field(default_factory=list)

    def log(self, task_id: str) -> list[str]:
        assert task_id in self.logs, f"no log file for {task_id}: {[str(p) for p in self.log_files]}"
        return messages(self.logs[task_id])

    def diag(self, task_id: str) -> str:
        tail = [m[:400] for m in messages(self.logs.get(task_id, ""))[-40:]]
        return f"run {self.state}, states {self.states}, reads {self.reads}\n" + "\n".join(tail)


@pytest.fixture(scope="module")
def stored_run(aws_server: AwsStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoredRun]:
    from standins.airflow_standalone import AirflowStandalone

    t0 = time.monotonic()
    aws = aws_server
    aws.reset()
    seed(aws.client())
    root = tmp_path_factory.mktemp("stored-standalone")
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    cache_dir = root / "worker-cache"
    aws.reset_counts()  # reads are counted from the Airflow start on
    # The provider's defaults (connections_prefix airflow/connections, ...): none given.
    kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache_dir": str(cache_dir)}
    config = {("secrets", "backend"): BACKEND, ("secrets", "backend_kwargs"): json.dumps(kwargs)}
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "STORED_EXPECTED_SHA256": json.dumps(EXPECTED_SHA256),
        "STORED_MASK_PROBE": "1",
    }
    with AirflowStandalone(home=root / "home", dags_folder=dags, config=config, env=env, triggerer=False) as af:
        af.wait_ready(timeout=300)
        ready = time.monotonic() - t0
        run_id = af.trigger(DAG_ID, timeout=180)
        state = af.wait_for_run(DAG_ID, run_id, timeout=300)
        run = StoredRun(af=af, aws=aws, state=state, states=af.task_states(DAG_ID, run_id), reads=aws.secret_reads())
        run.log_files = af.task_log_files(DAG_ID, run_id)
        for path in run.log_files:
            task_id = next(p.split("=", 1)[1] for p in path.parts if p.startswith("task_id="))
            run.logs[task_id] = run.logs.get(task_id, "") + path.read_text(errors="replace")
        took = time.monotonic() - t0 - ready
        print(f"\nSTORED STANDALONE Airflow {af.line.version}: ready {ready:.1f} s, run {took:.1f} s")
        yield run


def test_stored_connection_and_variables_arrive_resolved_in_the_task(stored_run: StoredRun) -> None:
    """airflow/connections/stored_db (password and extra.api_key refer to stored/app) and two
    stored Variables (one holding a reference), read by task code: the task checked their hashes."""
    assert stored_run.states.get("read_stored") == "success", stored_run.diag("read_stored")
    checked = [m for m in stored_run.log("read_stored") if "STORED_CHECKED" in m]
    assert checked and checked[0].endswith("wrong=[] raw=[]"), stored_run.diag("read_stored")


def test_resolved_values_show_masked_in_the_task_log(stored_run: StoredRun) -> None:
    probe = [m for m in stored_run.log("read_stored") if m.startswith("STORED_MASK_PROBE")]
    assert probe, stored_run.diag("read_stored")
    shown = probe[0].split()
    for masked in ("password=***", "extra.api_key=***"):
        assert masked in shown, shown
    assert re.search(r"var\.stored_token=(Bearer )?\*\*\*", probe[0]), shown
    # What is no secret stays readable: the stored login and the plain Variable.
    assert "login=svc_stored" in shown and "var.stored_plain=plain-stored-variable-41" in shown, shown


def test_aws_default_stored_nowhere_is_read_once_for_two_task_processes(stored_run: StoredRun) -> None:
    """Every AWS hook asks for aws_default: stored nowhere, the hook goes on without it, and the
    second task process is answered from the worker's cache (missing_cache_seconds).

    Found nowhere, the id is then asked of the API server (the Execution API), whose own
    backend looks it up once in its own memory: a server keeps no stored secret in the
    worker cache of its host. One read by the worker's tasks, one by the API server process.
    """
    for task_id in ("read_stored", "broken_reference_fails"):
        assert "STORED_AWS_DEFAULT found=False" in stored_run.log(task_id), stored_run.diag(task_id)
    assert stored_run.reads.get("airflow/connections/aws_default") == 2, stored_run.reads
    # And every stored secret, and the secret they refer to, once for the whole run.
    found = {k: n for k, n in stored_run.reads.items() if k != "airflow/connections/aws_default"}
    assert set(stored_run.reads) == set(ASKED) and all(n == 1 for n in found.values()), stored_run.reads


def test_broken_reference_in_a_stored_connection_fails_the_task_on_one_line(stored_run: StoredRun) -> None:
    task_id = "broken_reference_fails"
    assert stored_run.states.get(task_id) == "failed", stored_run.diag(task_id)
    log = stored_run.log(task_id)
    assert not [m for m in log if m.startswith("STORED_UNEXPECTED_SUCCESS")], stored_run.diag(task_id)
    # Named without its braces: Airflow masks the stored password text, braces and all.
    named = BROKEN_REFERENCE.strip("{}")
    message = (
        f"connection 'stored_broken', field 'password', reference '{named}': "
        "secret 'stored/app' (AWSCURRENT) has no key 'pasword'"
    )
    # What the task failed with (3.x: the exception of the log's error record), whole on one line ...
    assert [m for m in log if m.endswith(message)], stored_run.diag(task_id)
    # ... and the plugin's own line for the lookup: connection, field, secret and key, no value.
    prefix = "connection 'stored_broken' field 'password': secret stored/app key 'pasword' (AWSCURRENT): failed"
    assert [m for m in log if m.startswith(prefix)], stored_run.diag(task_id)


def test_no_secret_value_in_the_task_logs_or_any_component_log(stored_run: StoredRun) -> None:
    af = stored_run.af
    assert stored_run.log_files
    assert set(APP_SECRET.values()) <= stored_run.aws.served_values, "sanity: the stand-in saw stored/app being served"
    paths = [*af.component_logs().values(), *(p for p in (af.home / "logs").rglob("*") if p.is_file())]
    assert set(stored_run.log_files) <= set(paths)
    for path in paths:
        lines = path.read_text(errors="replace").splitlines()
        if path.parent == af.home:
            # LocalExecutor's supervisor also echoes every record of the task's log into the
            # scheduler's own log, with the task's context and without Airflow's masker (for its
            # own connection passwords too; docs/errors.md). The probe above logs values on
            # purpose; the task log files, written by the same supervisor, are masked and scanned.
            lines = [line for line in lines if not (f"dag_id={DAG_ID}" in line and "ti_id=" in line)]
        leaked = [v for v in PLAINTEXTS if any(v in line for line in lines)]
        assert not leaked, f"{len(leaked)} secret value(s) in {path}"
