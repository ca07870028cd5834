"""
Check every reference in Airflow's connections and Variables, from a worker, with no shell.

``airflow-sm-refs check`` finds each connection where a task would, resolves
every reference in it with the worker's AWS settings and role, and prints a
table: field, secret, key, version, and ``ok`` or the error. It never prints
a value. Where you have no shell on a worker (Amazon MWAA), this DAG runs it
for you: the table goes to the task log, and the task fails if any reference
is broken, naming each one.

Run it after editing connections, or on a schedule to hear of a deleted
secret, a renamed key or a revoked grant before the tasks that need them do.
Trigger with ``{"conn_ids": ["partner_api", "warehouse_db"]}`` to check only
those connections; by default it checks them all (``check --all``).

Airflow 3 keeps task processes out of the metastore, and the command a task
starts inherits that: there ``--all`` stops with a message saying it cannot
list the metastore. Run ``airflow-sm-refs check --all`` where the metastore
is reachable instead. Airflow 2 workers (MWAA) read it directly.
"""

from __future__ import annotations

import logging
import subprocess
import sys

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2 (what Amazon MWAA runs)
    from airflow import DAG
    from airflow.decorators import task

log = logging.getLogger(__name__)

# The package's command line, run by this worker's Python: the same Airflow
# configuration, secrets backend and AWS role as the worker's tasks.
CHECK = [sys.executable, "-m", "airflow_sm_refs.cli", "check"]

def broken_references(table: str) -> list[str]:
    """Each ``ERROR`` row of ``check``'s table, on one line with the connection or Variable it is in."""
    broken, owner = [], ""
    for line in table.splitlines():
        if not line.startswith(" "):  # "connection 'x': 2 references", or a whole-connection error
            owner = line.split(":", 1)[0]
        if "ERROR" in line:
            row = " ".join(line.split())
            broken.append(row if row.startswith(owner) else f"{owner}: {row}")
    return broken


with DAG(
    dag_id="sm_refs_check",
    schedule=None,
    catchup=False,
    tags=["airflow-sm-refs", "maintenance"],
    params={"conn_ids": []},
    doc_md=__doc__,
) as dag:

    @task
    def check_references(**context) -> None:  # noqa: ANN003
        conn_ids = [str(conn_id) for conn_id in context["params"]["conn_ids"] or []]
        result = subprocess.run([*CHECK, *(conn_ids or ["--all"])], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            log.info("%s", line)
        if result.returncode == 0:
            return
        # Airflow's own logging goes to stderr too: its last lines say what stopped the command.
        for line in result.stderr.splitlines()[-20:]:
            log.error("%s", line)
        reason = "; ".join(broken_references(result.stdout)) or (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"airflow-sm-refs check failed (exit {result.returncode}): {reason}")

    check_references()
