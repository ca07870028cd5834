"""Connections and Variables stored whole in Secrets Manager, read by tasks, with the drop-in backend.

Run with ``[secrets] backend = airflow_sm_refs.backend.SecretsManagerBackend`` by
tests/test_stored_secrets_dag_test.py (``dag.test()``, every Airflow line) and
tests/test_e2e_stored_secrets.py (scheduler and LocalExecutor task processes). What it reads:

- ``airflow/connections/stored_db``: a connection whose password and ``extra.api_key`` are
  references to another secret;
- ``airflow/variables/stored_token`` (a reference inside) and ``airflow/variables/stored_plain``;
- ``aws_default``, stored nowhere, asked by an AWS hook in both tasks, one after the other;
- ``airflow/connections/stored_broken``: a reference to a key its secret does not have (the second
  task, run last whatever the first did: Airflow 2's ``dag.test()`` stops at its error).

Values are checked against SHA-256 hashes in ``STORED_EXPECTED_SHA256``: no plaintext reaches
this file, and nothing is printed but field names, unless ``STORED_MASK_PROBE`` is set (a real
task's log file, where the masker must show ``***``). A lookup that must fail is not caught.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from typing import Any

from tests.airflow_names import DAG, BaseHook, PythonOperator, Variable
from tests.compat_triggers import RAW_MARKERS, raw_fields, sha256

DAG_ID = "stored_secrets"

# The task logger: a real task's log file goes through Airflow's masker (print() would also be
# echoed unmasked into the scheduler's own log by 3.3's LocalExecutor).
log = logging.getLogger("airflow.task")


def _expected(prefix: str) -> dict[str, str]:
    expected = json.loads(os.environ["STORED_EXPECTED_SHA256"])
    return {k.split(":", 1)[1]: v for k, v in expected.items() if k.startswith(prefix + ":")}


def read_stored() -> None:
    """The stored connection and both stored Variables must arrive resolved; then an AWS hook's lookup."""
    conn = BaseHook.get_connection("stored_db")
    got: dict[str, Any] = {"host": conn.host, "login": conn.login, "password": conn.password}
    got.update({f"extra.{k}": v for k, v in conn.extra_dejson.items()})
    for key in _expected("var"):
        got[f"var.{key}"] = Variable.get(key)
    expected = {**_expected("stored_db"), **{f"var.{k}": v for k, v in _expected("var").items()}}
    wrong = sorted(name for name, digest in expected.items() if sha256(got.get(name)) != digest)
    raw = raw_fields(conn) + [name for name, value in got.items() if any(m in str(value) for m in RAW_MARKERS)]
    log.info("STORED_CHECKED fields=%s wrong=%s raw=%s", sorted(expected), wrong, sorted(set(raw)))
    if os.environ.get("STORED_MASK_PROBE"):
        log.info("STORED_MASK_PROBE %s", " ".join(f"{name}={value}" for name, value in sorted(got.items())))
    if wrong or raw:
        raise ValueError(f"stored secrets not resolved as expected: wrong={wrong} raw={sorted(set(raw))}")
    use_aws_default()


def use_aws_default() -> None:
    """What every AWS hook does first: look ``aws_default`` up; stored nowhere, the hook goes on without it."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    config = AwsBaseHook(aws_conn_id="aws_default", client_type="secretsmanager").conn_config
    found = isinstance(config.conn_id, str)
    log.info("STORED_AWS_DEFAULT found=%s", found)
    if found:
        raise ValueError("aws_default was found, but it is stored nowhere")


def broken_reference() -> None:
    """After an AWS hook's lookup, the broken connection's lookup must fail the task; if it
    returns at all, say so (field names only)."""
    use_aws_default()
    conn = BaseHook.get_connection("stored_broken")
    log.info("STORED_UNEXPECTED_SUCCESS raw_fields=%s", raw_fields(conn))


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["stored"],
) as dag:
    read = PythonOperator(task_id="read_stored", python_callable=read_stored)
    # Two tasks only: dag.test() costs seconds per task on some lines.
    read >> PythonOperator(task_id="broken_reference_fails", python_callable=broken_reference, trigger_rule="all_done")
