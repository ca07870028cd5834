"""One task that reads a referenced connection, for tests/test_compat_bad_option.py (a mistyped backend option)."""

from __future__ import annotations

from datetime import datetime

from tests.airflow_names import DAG, BaseHook, PythonOperator
from tests.compat_triggers import raw_fields


def read_connection() -> None:
    """Must fail: with a bad backend option the task fails closed rather than get the stored text."""
    conn = BaseHook.get_connection("compat_bad_meta")
    print(f"COMPAT_UNEXPECTED_SUCCESS raw_fields={raw_fields(conn)}")


with DAG(
    dag_id="compat_bad_option",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["compat"],
):
    PythonOperator(task_id="reads_connection", python_callable=read_connection)
