"""Every row of the role table, on every line where its entry point exists, gets the role the table says.

Each entry point is rebuilt as Airflow makes it: the process's command line,
its environment (an inherited ``_AIRFLOW_PROCESS_CONTEXT`` included), a
supervisor connection on 3.x, and the Airflow function on the stack (a
function of the same name in a module of the same name). Real Airflow runs of
the same entry points are in ``tests/test_compat_standalone.py``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import roles
from airflow_sm_refs._compat import HAS_TASK_SDK, ProcessRole, process_role

pytestmark = pytest.mark.compat

PROCESSOR = "airflow.dag_processing.processor"
CONNECTION_TEST = "airflow.sdk.execution_time.connection_test_supervisor"


def _airflow(*words: str) -> list[str]:
    return ["/opt/venv/bin/airflow", *words]


def inside(module: str, function: str, call: Callable[[], Any], monkeypatch: pytest.MonkeyPatch | None = None) -> Any:
    """Call ``call`` from inside Airflow's function ``module.function``.

    The function is replaced, for this test, by one that calls ``call``: the
    role is read from the code object Airflow's module holds under that name,
    so the stand-in is put there. Without ``monkeypatch`` it is not, as a DAG
    file defining a function of that name in a module named so would do.
    """
    namespace: dict[str, Any] = {"__name__": module}
    exec(f"def {function}(call):\n    return call()\n", namespace)  # noqa: S102 - a frame with that name
    if monkeypatch is not None:
        target = sys.modules.get(module)
        if target is None:
            target = types.ModuleType(module)
            monkeypatch.setitem(sys.modules, module, target)
        monkeypatch.setattr(target, function, namespace[function], raising=False)
    return namespace[function](call)


class Situation:
    """One way an entry point comes about: argv, environment, supervisor, stack."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        supervisor: bool = False,
        frame: tuple[str, str] | None = None,
        task_context: bool = False,
    ) -> None:
        self.argv, self.env, self.supervisor, self.frame, self.task_context = argv, env or {}, supervisor, frame, task_context

    def role(self, monkeypatch: pytest.MonkeyPatch) -> ProcessRole:
        monkeypatch.setattr(sys, "argv", self.argv)
        monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        if self.task_context:
            monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "d")
            monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "t")
        if HAS_TASK_SDK:
            from airflow.sdk.execution_time import task_runner

            monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object() if self.supervisor else None, raising=False)
        if self.frame is None:
            return process_role()
        return inside(*self.frame, process_role, monkeypatch)


SERVER = {"_AIRFLOW_PROCESS_CONTEXT": "server"}
CLIENT = {"_AIRFLOW_PROCESS_CONTEXT": "client"}

#: how each row's entry point comes about, on Airflow 3 and on Airflow 2
SITUATIONS: dict[str, dict[str, list[Situation]]] = {
    "task process (Local, Celery, Kubernetes executors)": {
        "3": [
            Situation(_airflow("scheduler"), env=SERVER, supervisor=True),  # LocalExecutor: forked from the scheduler
            Situation(_airflow("celery", "worker"), supervisor=True),
            Situation(_airflow("tasks", "run", "d", "t", "r"), supervisor=True),  # KubernetesExecutor pod
        ],
        "2": [
            Situation(_airflow("scheduler"), task_context=True),
            Situation(_airflow("celery", "worker"), task_context=True),
            Situation(_airflow("tasks", "run", "d", "t", "r", "--raw"), task_context=True),
        ],
    },
    "`airflow tasks run`, `tasks test`, `dags test`": {
        v: [Situation(_airflow("tasks", "run", "d", "t")), Situation(_airflow("tasks", "test", "d", "t")), Situation(_airflow("dags", "test", "d"))]
        for v in "23"
    },
    "trigger runner (deferrable operators)": {
        "3": [Situation(_airflow("triggerer"), env=CLIENT, supervisor=True)],
        "2": [Situation(_airflow("triggerer"))],
    },
    "DAG processor running a DAG's callbacks (success/failure, SLA, stale tasks)": {
        "3": [Situation(_airflow("dag-processor"), env=CLIENT, supervisor=True, frame=(PROCESSOR, "_execute_callbacks"))],
        "2": [
            Situation(_airflow("scheduler"), frame=(PROCESSOR, "execute_callbacks")),
            Situation(_airflow("dag-processor"), frame=(PROCESSOR, "execute_callbacks")),
            Situation(_airflow("scheduler"), frame=(PROCESSOR, "manage_slas")),
        ],
    },
    "DAG processor parsing a file": {
        "3": [Situation(_airflow("dag-processor"), env=CLIENT, supervisor=True)],
        "2": [
            Situation(_airflow("scheduler"), frame=(PROCESSOR, "process_file")),
            Situation(_airflow("dag-processor"), frame=(PROCESSOR, "process_file")),
            Situation(_airflow("dag-processor")),
        ],
    },
    "DAG processor parent (answers its children's connection requests)": {
        "3": [Situation(_airflow("dag-processor"), env=SERVER)],
    },
    "a script or subprocess a task starts": {
        v: [
            Situation(["/usr/bin/python3", "export_report.py"], env=SERVER),  # inherited from the scheduler
            Situation(["/usr/bin/python3", "-c", "import airflow"], env=SERVER),
            Situation(["/bin/sh"]),
        ]
        for v in "23"
    },
    "worker-side connection test (the UI's Test button, `[core] test_connection`)": {
        "3": [
            Situation(_airflow("scheduler"), env=CLIENT, frame=(CONNECTION_TEST, "supervise_connection_test")),
            Situation(_airflow("celery", "worker"), env=CLIENT, frame=(CONNECTION_TEST, "supervise_connection_test")),
        ],
    },
    "API server / webserver": {
        v: [
            Situation(_airflow("api-server"), env=SERVER),
            Situation(_airflow("webserver", "-p", "8080")),
            Situation(["/venv/bin/gunicorn", "--name", "airflow-webserver", "airflow.www.app:cached_app()"]),
            Situation(["/venv/bin/uvicorn", "airflow.api_fastapi.main:app"]),
        ]
        for v in "23"
    },
    "scheduler": {v: [Situation(_airflow("scheduler"), env=SERVER)] for v in "23"},
    "triggerer parent": {"3": [Situation(_airflow("triggerer"), env=SERVER)]},
    "Celery worker parent": {"3": [Situation(_airflow("celery", "worker"))]},
    "`airflow connections ...`, `variables ...`, `config ...`": {
        v: [
            Situation(_airflow("connections", "get", "db")),
            Situation(_airflow("variables", "get", "v"), env=SERVER),
            Situation(_airflow("config", "list")),
        ]
        for v in "23"
    },
    "`airflow tasks render` and every other Airflow CLI command": {
        v: [
            Situation(_airflow("tasks", "render", "d", "t", "2024-01-01")),
            Situation(["/usr/bin/python3", "-m", "airflow", "tasks", "render", "d", "t"]),
            Situation(_airflow("version")),
            Situation(_airflow("dags", "trigger", "d")),
            Situation(_airflow("db", "check")),
        ]
        for v in "23"
    },
    "this package's CLI (`airflow-sm-refs check`), anything else": {
        v: [
            Situation(["/opt/venv/bin/airflow-sm-refs", "check", "db"]),
            Situation(["/usr/bin/python3", "-m", "airflow_sm_refs.cli", "check", "db"]),
        ]
        for v in "23"
    },
}

LINE = "3" if HAS_TASK_SDK else "2"


def test_every_row_has_its_situations() -> None:
    assert set(SITUATIONS) == {row.entry_point for row in roles.ROLE_TABLE}


@pytest.mark.parametrize("row", roles.ROLE_TABLE, ids=lambda row: row.entry_point[:40])
def test_each_entry_point_gets_its_rows_role(row: roles.RoleRow, monkeypatch: pytest.MonkeyPatch) -> None:
    if not row.exists():
        return  # not on this line (the connection test before 3.3)
    situations = SITUATIONS[row.entry_point].get(LINE, [])
    assert situations, f"no situation for {row.entry_point!r} on Airflow {LINE}"
    for situation in situations:
        with monkeypatch.context() as patch:
            got = situation.role(patch)
        assert got is row.role, f"{situation.argv} {situation.env} frame={situation.frame}: {got} (table: {row.role})"


def test_a_callback_and_a_parse_in_one_process_each_get_their_own_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the DAG processor is doing decides, not its command line: a parse right after a callback refuses."""
    if HAS_TASK_SDK:
        callback = Situation(_airflow("dag-processor"), env=CLIENT, supervisor=True, frame=(PROCESSOR, "_execute_callbacks"))
    else:
        callback = Situation(_airflow("dag-processor"), frame=(PROCESSOR, "execute_callbacks"))
    assert callback.role(monkeypatch) is ProcessRole.CALLBACK
    assert process_role() is ProcessRole.PARSER  # the same process, the callback over


@pytest.mark.parametrize(
    ("module", "function"), [(PROCESSOR, "_execute_callbacks"), (PROCESSOR, "execute_callbacks"), (CONNECTION_TEST, "supervise_connection_test")]
)
def test_a_dag_file_cannot_pass_for_airflows_callback_or_connection_test(
    module: str, function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function of the same name, in code that calls its module so, is not Airflow's: a parse stays a parse."""
    parsing = Situation(_airflow("dag-processor"), env=CLIENT, supervisor=True) if HAS_TASK_SDK else Situation(_airflow("dag-processor"))
    expected = parsing.role(monkeypatch)
    assert expected is ProcessRole.PARSER
    assert inside(module, function, process_role) is ProcessRole.PARSER  # not registered in Airflow's module


def test_python_dash_m_airflow_is_the_airflow_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m airflow connections get``: Python sets argv[0] to airflow/__main__.py, not to python."""
    import importlib.util

    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.spec_from_loader("airflow.__main__", loader=None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/opt/venv/lib/python3.11/site-packages/airflow/__main__.py", "connections", "get", "db"])
    monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
    assert process_role() is ProcessRole.CLI


def test_an_airflow_cli_command_started_by_a_bash_task_steps_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """A BashOperator passes AIRFLOW_CTX_* on to what it runs; ``airflow connections get`` there still prints no value."""
    assert Situation(_airflow("connections", "get", "db"), task_context=True).role(monkeypatch) is ProcessRole.CLI


def test_a_script_named_like_a_server_program_is_not_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in (["/usr/bin/gunicorn_app.py", "--settings", "airflow.cfg"], ["/usr/bin/uvicorn", "reports:app", "--env-file", "airflow.env"]):
        assert Situation(argv, env=SERVER).role(monkeypatch) is ProcessRole.OTHER


def test_the_documented_table_is_the_role_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "docs" / "versions.md").read_text()
    assert roles.markdown_table() in readme, "regenerate it: python -m airflow_sm_refs.roles"
