"""End-to-end check of the AirflowStandalone harness: real scheduler, API server/webserver, tasks.

Runs on every Airflow line the harness supports (3.x: api-server, dag-processor, LocalExecutor;
2.x: webserver, SequentialExecutor, the scheduler parses).
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from standins.airflow_standalone import AirflowStandalone

pytestmark = pytest.mark.e2e

DAG_ID = "harness_smoke"
HOST = "demo-host.invalid"

DAG_SOURCE = textwrap.dedent(
    f'''
    """Two tasks: one reads a connection from the metadata DB, one runs after it."""
    from __future__ import annotations

    import os

    try:  # Airflow 3.1+
        from airflow.sdk import BaseHook
    except ImportError:  # 2.x, 3.0
        from airflow.hooks.base import BaseHook
    try:  # Airflow 3
        from airflow.sdk import dag, task
    except ImportError:  # 2.x
        from airflow.decorators import dag, task


    @dag(dag_id="{DAG_ID}", schedule=None, catchup=False)
    def harness_smoke():
        @task
        def read_conn() -> str:
            conn = BaseHook.get_connection("demo_conn")
            print(f"DEMO_CONN_HOST={{conn.host}}")
            # Reported by the test: what context/env a LocalExecutor task process really has.
            print(f"TASK_PROCESS_CONTEXT={{os.environ.get('_AIRFLOW_PROCESS_CONTEXT')!r}}")
            print(f"TASK_PIDS pid={{os.getpid()}} ppid={{os.getppid()}} pgid={{os.getpgid(0)}}")
            return conn.host

        @task
        def after(host: str) -> None:
            print(f"AFTER_GOT={{host}}")

        after(read_conn())


    harness_smoke()
    '''
)


def _alive(proc: psutil.Process) -> bool:
    """True if the process still runs (zombies awaiting reaping do not count)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_standalone_runs_a_dag_that_reads_a_connection(tmp_path: Path) -> None:
    """Start the harness, add a connection via the CLI, run the DAG, check states and task logs."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "harness_smoke.py").write_text(DAG_SOURCE)

    t_start = time.monotonic()
    with AirflowStandalone(home=tmp_path / "home", dags_folder=dags) as af:
        # Overlaps with component start-up: the CLI only needs the DB, which start() created.
        af.run_cli("connections", "add", "demo_conn", "--conn-type", "http", "--conn-host", HOST)
        af.wait_ready(timeout=180)
        t_ready = time.monotonic()

        run_id = af.trigger(DAG_ID)
        state = af.wait_for_run(DAG_ID, run_id, timeout=180)
        t_done = time.monotonic()

        states = af.task_states(DAG_ID, run_id)
        assert state == "success", (states, af.component_logs())
        assert states == {"read_conn": "success", "after": "success"}

        t_logs = time.monotonic()
        logs = af.task_log_files(DAG_ID, run_id)
        t_logs = time.monotonic() - t_logs
        assert {p.parent.name for p in logs} == {"task_id=read_conn", "task_id=after"}
        read_log = next(p for p in logs if p.parent.name == "task_id=read_conn").read_text()
        assert f"DEMO_CONN_HOST={HOST}" in read_log

        # A second run shows the steady-state cost once everything is warm.
        t2 = time.monotonic()
        run2 = af.trigger(DAG_ID)
        assert af.wait_for_run(DAG_ID, run2, timeout=180) == "success"
        t2_done = time.monotonic()

        running = af.running_processes()
        home = af.home
    t_stopped = time.monotonic()

    # Nothing we started survives stop(): no component, no LocalExecutor worker, no task runner.
    # (sanity: the sweep did see the live components: 4 on 3.x, 3 on 2.x where the scheduler parses)
    assert len(running) >= len(af.component_logs()) >= (3 if af.line.is_airflow2 else 4), running
    assert not [p for p in running if _alive(p)]
    assert not af.running_processes()

    context_line = next(line for line in read_log.splitlines() if "TASK_PROCESS_CONTEXT=" in line)
    report = {
        "airflow": af.line.version,
        "db_init_s": round(af.timings["db_init"], 2),
        "stop_s_internal": round(af.timings["stop"], 2),
        "start_to_ready_s": round(af.timings["ready"], 2),
        "ready_wall_incl_cli_s": round(t_ready - t_start, 2),
        "first_run_trigger_to_success_s": round(t_done - t_ready, 2),
        "task_log_files_settle_s": round(t_logs, 2),
        "second_run_s": round(t2_done - t2, 2),
        "stop_s": round(t_stopped - t2_done, 2),
        "total_s": round(t_stopped - t_start, 2),
        "home": str(home),
        "task_log_example_line": json.loads(context_line) if context_line.startswith("{") else context_line,
    }
    print("\nHARNESS TIMINGS", json.dumps(report, indent=2))
