"""DAGs for the entry points of issue 18 that tests/test_compat_standalone.py checks on every Airflow line.

- ``compat_dag_callback``: one task that fails; the DAG's own ``on_failure_callback`` (run by
  the DAG processor, 2.x's DAG file processor) reads a referenced connection and leaves the
  SHA-256 of its password in ``COMPAT_PROBE_DIR``.
- ``compat_render``: a templated field renders ``{{ conn.compat_meta.* }}``; the task checks the
  rendering's SHA-256, the test runs ``airflow tasks render`` on it.
- ``compat_marker_subprocess``: a task starts a plain Python script with an inherited
  ``_AIRFLOW_PROCESS_CONTEXT=server`` that reads a referenced connection.
- ``compat_async`` (lines whose PythonOperator awaits a coroutine, 3.2+): an ``async def`` task
  prints resolved values; its log must show them masked.

No value is ever written: only hashes, compared with the ones in ``COMPAT_EXPECTED_SHA256``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.airflow_names import ASYNC_TASKS, DAG, BaseHook, BaseOperator, PythonOperator, task
from tests.compat_triggers import raw_fields, record_raw, sha256


def _probe_dir() -> Path:
    return Path(os.environ["COMPAT_PROBE_DIR"])


def _expected(key: str) -> str:
    return json.loads(os.environ["COMPAT_EXPECTED_SHA256"])[key]


def _leave_hash(who: str, conn: Any, conn_id: str) -> None:
    """Leave ``<who>-<conn_id>.sha256`` with the password's hash (and a raw-* marker if it is reference text)."""
    raw = raw_fields(conn)
    if raw:
        record_raw(str(_probe_dir()), who, conn_id, raw)
    (_probe_dir() / f"{who}-{conn_id}.sha256").write_text(sha256(conn.password) + "\n")


# --- a DAG-level failure callback ---------------------------------------------------------
def dag_failed(context: Any) -> None:
    """The DAG's on_failure_callback: runs in the DAG processor, not in a task."""
    _leave_hash("dag-callback", BaseHook.get_connection("compat_meta"), "compat_meta")


def fail() -> None:
    raise RuntimeError("compat_dag_callback fails on purpose, so that its DAG failure callback runs")


with DAG(
    dag_id="compat_dag_callback",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    on_failure_callback=dag_failed,
    tags=["compat"],
):
    PythonOperator(task_id="fails", python_callable=fail)


# --- a templated field, for `airflow tasks render` ------------------------------------------
class RenderedText(BaseOperator):
    """Renders ``text``; fails unless it hashes to the expected rendering (so the task resolved it)."""

    template_fields = ("text",)

    def __init__(self, *, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = text

    def execute(self, context: Any) -> None:
        matched = sha256(self.text) == _expected("compat_render:text")
        print(f"COMPAT_RENDER_CHECKED matched={matched} raw={'workato:sm:' in self.text}")
        if not matched:
            raise ValueError("the rendered text does not hold the expected values")


with DAG(
    dag_id="compat_render",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["compat"],
):
    RenderedText(
        task_id="render_conn",
        text="login={{ conn.compat_meta.login }} password={{ conn.compat_meta.password }}",
    )


# --- a script a task starts, with a server marker in its environment ------------------------
#: a plain script: reads one connection as any code would and leaves its password's hash
#: (the repo root is on the inherited PYTHONPATH)
CHILD_SCRIPT = """
import sys
from pathlib import Path
from tests.airflow_names import BaseHook
from tests.compat_triggers import raw_fields, record_raw, sha256
probe_dir, who, conn_id = sys.argv[1:4]
conn = BaseHook.get_connection(conn_id)
raw = raw_fields(conn)
if raw:
    record_raw(probe_dir, who, conn_id, raw)
(Path(probe_dir) / f"{who}-{conn_id}.sha256").write_text(sha256(conn.password) + "\\n")
print("COMPAT_CHILD_DONE")
"""


def start_script_with_server_marker(conn_id: str) -> None:
    """Run a plain Python script, as task code may, with ``_AIRFLOW_PROCESS_CONTEXT=server`` inherited."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "read_connection.py"
        script.write_text(CHILD_SCRIPT)
        env = {**os.environ, "_AIRFLOW_PROCESS_CONTEXT": "server"}
        done = subprocess.run(
            [sys.executable, str(script), str(_probe_dir()), "task-child", conn_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    # The child prints no value; its stderr tail says why it failed, if it did.
    tail = done.stderr.strip().splitlines()[-3:]
    print(f"COMPAT_CHILD rc={done.returncode} stdout={done.stdout.strip()!r} stderr_tail={tail}")
    (_probe_dir() / f"task-child-{conn_id}.rc").write_text(f"{done.returncode}\n" + "\n".join(tail) + "\n")


with DAG(
    dag_id="compat_marker_subprocess",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["compat"],
):
    PythonOperator(
        task_id="script_with_server_marker",
        python_callable=start_script_with_server_marker,
        op_args=["compat_env"],
    )


# --- an async task -------------------------------------------------------------------------
if ASYNC_TASKS:
    with DAG(
        dag_id="compat_async",
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        default_args={"retries": 0},
        tags=["compat"],
    ):

        @task(task_id="async_prints_values")
        async def async_prints_values() -> None:
            aget = getattr(BaseHook, "aget_connection", None)
            conn = await aget("compat_meta") if aget is not None else BaseHook.get_connection("compat_meta")
            client_code = conn.extra_dejson.get("client_code")
            matched = sha256(conn.password) == _expected("compat_meta:password")
            # Printed on purpose: the log must show them as ***.
            print(f"COMPAT_ASYNC_PROBE login={conn.login} password={conn.password} client_code={client_code}")
            print(f"COMPAT_ASYNC_CHECKED matched={matched} raw={raw_fields(conn)}")
            if not matched:
                raise ValueError("the async task did not get the expected password")

        async_prints_values()
