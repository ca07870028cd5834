"""Where each Airflow process stands: the one table of entry points and what the backend does in each.

:func:`airflow_sm_refs._compat.process_role` decides a process's role; this
table says, for every entry point a user meets, which role it gets, on which
lines it exists, and what decides it. The table in docs/versions.md is generated from it
(``python -m airflow_sm_refs.roles``) and a test checks that they match; the
tests of the roles walk its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from airflow_sm_refs import _compat
from airflow_sm_refs._compat import ProcessRole

__all__ = ["BEHAVIOUR", "ROLE_TABLE", "RoleRow", "markdown_table"]

#: what the backend does with a value holding references, by role
BEHAVIOUR: dict[ProcessRole, str] = {
    ProcessRole.TASK: "resolves; a failure fails the task",
    ProcessRole.TRIGGER: "resolves; a failure fails the task",
    ProcessRole.CALLBACK: "resolves, masked; a failure fails the callback",
    ProcessRole.CONNECTION_TEST: "resolves; the result the UI shows holds no value",
    ProcessRole.OTHER: "resolves; a failure is raised",
    ProcessRole.SERVER: "steps aside (the raw connection goes to the worker), unless `resolve_on_server`",
    ProcessRole.PARSER: "a value with references is the file's import error, no AWS call, unless `resolve_at_parse_time`",
    ProcessRole.CLI: "steps aside: it prints the stored reference, never a value",
}


def _always() -> bool:
    return True


def _airflow3() -> bool:
    return _compat.HAS_TASK_SDK


def _worker_connection_tests() -> bool:
    return _compat.HAS_WORKER_CONNECTION_TEST


@dataclass(frozen=True)
class RoleRow:
    """One entry point: the role it gets, where it exists, and what decides it."""

    entry_point: str
    role: ProcessRole
    #: the lines it exists on, in words
    lines: str
    #: how :func:`~airflow_sm_refs._compat.process_role` tells it
    decided_by: str
    #: whether it exists on the Airflow installed here
    exists: Callable[[], bool] = _always

    @property
    def behaviour(self) -> str:
        return BEHAVIOUR[self.role]


ROLE_TABLE: tuple[RoleRow, ...] = (
    RoleRow(
        "task process (Local, Celery, Kubernetes executors)",
        ProcessRole.TASK,
        "all",
        "3.x: a supervisor connection; 2.x: a running task context",
    ),
    RoleRow("`airflow tasks run`, `tasks test`, `dags test`", ProcessRole.TASK, "all", "the command line"),
    RoleRow(
        "trigger runner (deferrable operators)",
        ProcessRole.TRIGGER,
        "all",
        "3.x: a supervisor connection under `airflow triggerer`; 2.x: `airflow triggerer`",
    ),
    RoleRow(
        "DAG processor running a DAG's callbacks (success/failure, SLA, stale tasks)",
        ProcessRole.CALLBACK,
        "all (2.x: the DAG file processor)",
        "Airflow's callback function on the stack at the lookup",
    ),
    RoleRow(
        "DAG processor parsing a file",
        ProcessRole.PARSER,
        "all (2.x: also forked from the scheduler; the error is logged and Airflow 2 then hands the file the stored reference)",
        "3.x: a supervisor connection under `airflow dag-processor`; 2.x: Airflow's `process_file` on the stack",
    ),
    RoleRow(
        "DAG processor parent (answers its children's connection requests)",
        ProcessRole.SERVER,
        "3.x",
        "`airflow dag-processor` with no supervisor connection",
        _airflow3,
    ),
    RoleRow(
        "a script or subprocess a task starts",
        ProcessRole.OTHER,
        "all",
        "its own command line; a server marker (`_AIRFLOW_PROCESS_CONTEXT`) inherited from a parent does not count",
    ),
    RoleRow(
        "worker-side connection test (the UI's Test button, `[core] test_connection`)",
        ProcessRole.CONNECTION_TEST,
        "3.3+",
        "Airflow's `supervise_connection_test` on the stack",
        _worker_connection_tests,
    ),
    RoleRow("API server / webserver", ProcessRole.SERVER, "all", "the command line (`api-server`, `webserver`, gunicorn)"),
    RoleRow("scheduler", ProcessRole.SERVER, "all", "the command line, with no task, callback or parse running"),
    RoleRow("triggerer parent", ProcessRole.SERVER, "3.x", "the command line, with no supervisor connection", _airflow3),
    RoleRow(
        "Celery worker parent",
        ProcessRole.SERVER,
        "3.x (2.x: resolves, its forks run the tasks)",
        "the command line, with no supervisor connection",
        _airflow3,
    ),
    RoleRow("`airflow connections ...`, `variables ...`, `config ...`", ProcessRole.CLI, "all", "the command line"),
    RoleRow(
        "`airflow tasks render` and every other Airflow CLI command",
        ProcessRole.CLI,
        "all",
        "the command line (every `airflow` command but the task ones above)",
    ),
    RoleRow("this package's CLI (`airflow-sm-refs check`), anything else", ProcessRole.OTHER, "all", "the command line"),
)


def markdown_table() -> str:
    """The table as docs/versions.md shows it."""
    lines = ["| process | lines | what the backend does | decided by |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.entry_point} | {r.lines} | {r.behaviour} | {r.decided_by} |" for r in ROLE_TABLE]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
