"""One DAG, one task per property that tests/test_compat_standalone.py checks on every Airflow line.

Every task looks a connection up as task code does and checks what it got against SHA-256
hashes handed to the components in ``COMPAT_EXPECTED_SHA256`` (the plaintext values never reach
the DAG). A task that is ever handed reference text leaves a marker file in
``COMPAT_MARKER_DIR``. Tasks whose lookup must fail do not catch anything: the backend's error
(a ``BaseException`` on lines without the authoritative deny) fails them.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from tests.airflow_names import DAG, BaseHook, BaseOperator, PythonOperator
from tests.compat_triggers import ConnectionLookupTrigger, raw_fields, record_raw, sha256

DAG_ID = "compat_refs"


def _expected() -> dict[str, str]:
    return json.loads(os.environ["COMPAT_EXPECTED_SHA256"])


def _lookup(conn_id: str, who: str) -> Any:
    """get_connection as any task does; note it if reference text ever comes back."""
    conn = BaseHook.get_connection(conn_id)
    raw = raw_fields(conn)
    if raw:
        record_raw(os.environ["COMPAT_MARKER_DIR"], who, conn_id, raw)
        print(f"COMPAT_RAW_REFERENCE conn={conn_id} fields={raw}")
    return conn


def _field_values(conn: Any) -> dict[str, str | None]:
    values: dict[str, str | None] = {"login": conn.login, "password": conn.password}
    for key, value in conn.extra_dejson.items():
        values[f"extra.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return values


def check_resolved(conn_id: str) -> None:
    """Every field with an expected hash must hash to it; names only are printed, never values."""
    conn = _lookup(conn_id, "task")
    got = _field_values(conn)
    expected = {k.split(":", 1)[1]: v for k, v in _expected().items() if k.startswith(f"{conn_id}:")}
    assert expected, f"no expected hashes for {conn_id}"
    wrong = sorted(field for field, digest in expected.items() if sha256(got.get(field)) != digest)
    print(f"COMPAT_CHECKED conn={conn_id} fields={sorted(expected)} wrong={wrong}")
    if wrong:
        raise ValueError(f"connection {conn_id!r}: fields {wrong} do not hold the expected values")
    # Shown masked in the task log: the test checks for '***' here and for no value anywhere.
    shown = " ".join(f"{name}={value}" for name, value in got.items())
    print(f"COMPAT_MASK_PROBE conn={conn_id} {shown}")


def must_not_resolve(conn_id: str) -> None:
    """The lookup must fail; if it returns at all the task still ends, and the test sees how."""
    conn = _lookup(conn_id, "task")
    print(f"COMPAT_UNEXPECTED_SUCCESS conn={conn_id} raw_fields={raw_fields(conn)}")


class DeferToLookup(BaseOperator):
    """Defers to ConnectionLookupTrigger; fails if the trigger fails or the password did not match."""

    def __init__(self, *, conn_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def execute(self, context: Any) -> None:
        expected = _expected().get(f"{self.conn_id}:password", "no-expected-hash")
        self.defer(
            trigger=ConnectionLookupTrigger(self.conn_id, expected, os.environ["COMPAT_MARKER_DIR"]),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        print(f"COMPAT_TRIGGER_EVENT {json.dumps(event)}")
        if not event or event.get("raw"):
            raise ValueError(f"trigger for {self.conn_id!r} was handed reference text: {event}")
        if not event.get("matched"):
            raise ValueError(f"trigger for {self.conn_id!r} got a password that does not match")


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["compat"],
) as dag:
    PythonOperator(task_id="env_conn_resolved", python_callable=check_resolved, op_args=["compat_env"])
    PythonOperator(task_id="meta_conn_resolved", python_callable=check_resolved, op_args=["compat_meta"])
    PythonOperator(task_id="missing_key_fails", python_callable=must_not_resolve, op_args=["compat_missing_key"])
    PythonOperator(task_id="missing_secret_fails", python_callable=must_not_resolve, op_args=["compat_missing_secret"])
    DeferToLookup(task_id="deferred_resolved", conn_id="compat_trigger")
    DeferToLookup(task_id="deferred_broken_fails", conn_id="compat_trigger_broken")
