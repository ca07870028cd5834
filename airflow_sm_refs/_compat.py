"""Everything that differs between the Airflow lines this package runs on (2.10 to 3.x).

No other module looks at Airflow's version or its internals that moved
between releases; they ask this one for a *capability*:

- :data:`AUTHORITATIVE_DENY`: the lookup loops stop at
  ``AirflowSecretsBackendAccessDenied`` instead of trying the next backend
  (Task SDK 1.2.2, Airflow 3.2.2). Where they do not, a failure is escalated
  to :class:`~airflow_sm_refs._exceptions.SecretLookupAborted`, which every
  loop lets through (it is not an ``Exception``) and every task runner and
  the triggerer turn into a clean task failure.
- :func:`process_role`: what this process is (task, trigger runner, server,
  DAG parser, CLI), decided from what the process is, not from a version.
- :func:`later_backends`, :func:`last_resort_connection`,
  :func:`last_resort_variable`: where the raw value is found.
- :func:`mask_secret`, :func:`amask_secret`, :func:`secrets_masker`: the
  masker of this line, and a way to register a value that is safe inside the
  trigger runner's event loop.

Everything is computed from what is importable, once, at import time; the
imports themselves are cheap (no AWS, no provider hooks).
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "AUTHORITATIVE_DENY",
    "DenyBase",
    "airflow_conf",
    "configured_secrets_backend",
    "has_workers_secrets_backend",
    "use_task_connection_class",
    "base_hook",
    "reset_secrets_chain",
    "HAS_TASK_SDK",
    "PARSE_ERRORS_MAY_ABORT",
    "HAS_WORKER_CONNECTION_TEST",
    "ProcessRole",
    "amask_secret",
    "call_backend",
    "connection_class_of",
    "expand_before_connection_tests",
    "connections_call_the_supervisor_when_built",
    "later_backends",
    "last_resort_connection",
    "last_resort_variable",
    "mask_secret",
    "min_masked_length",
    "not_found_errors",
    "prints_configuration",
    "process_role",
    "redact",
    "reset_secrets_masker",
    "secrets_masker",
]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


#: this package's command line printing help or reading a token: Airflow is never imported
#: (finding its modules would import it), so nothing below may ask about it
_WITHOUT_AIRFLOW: bool = getattr(sys.modules.get("airflow_sm_refs"), "WITHOUT_AIRFLOW", False)

#: Airflow 3's Task SDK runs tasks: a task process talks to a supervisor, not the metastore.
HAS_TASK_SDK: bool = not _WITHOUT_AIRFLOW and _has_module("airflow.sdk.execution_time")

#: A reference met while a DAG file is parsed can stop the lookup with a ``BaseException``
#: and become the file's import error: Airflow 3's parser catches ``BaseException``
#: around the import. Airflow 2's DAG file processor would die of it instead.
PARSE_ERRORS_MAY_ABORT: bool = HAS_TASK_SDK

#: 3.3+: workers test connections for the UI's Test button (``[core] test_connection``)
HAS_WORKER_CONNECTION_TEST: bool = HAS_TASK_SDK and _has_module("airflow.sdk.execution_time.connection_test_supervisor")

try:  # Task SDK 1.2.2+ (Airflow 3.2.2+): every lookup loop re-raises this class
    if _WITHOUT_AIRFLOW:
        raise ImportError("no Airflow in this process")
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied as _Deny

    AUTHORITATIVE_DENY: bool = True
    DenyBase: type[Exception] = _Deny
except ImportError:
    AUTHORITATIVE_DENY = False
    DenyBase = Exception


# --- which process this is -------------------------------------------------------------
class ProcessRole(enum.Enum):
    """What a process is doing, as far as resolving references goes (DESIGN §3, :mod:`airflow_sm_refs.roles`)."""

    #: a task process (also ``dags test``, ``tasks test``): resolves, fails closed
    TASK = "task"
    #: runs triggers of deferrable operators: resolves, fails closed
    TRIGGER = "trigger"
    #: the DAG processor running a DAG's callbacks (success/failure, SLA, stale tasks): resolves, fails closed
    CALLBACK = "callback"
    #: a worker testing a connection for the UI's Test button (3.3 ``[core] test_connection``): resolves
    CONNECTION_TEST = "connection test"
    #: API server, webserver, scheduler, triggerer parent, Celery worker parent: steps aside
    SERVER = "server"
    #: parses DAG files: refuses a value with references
    PARSER = "parser"
    #: every Airflow CLI command but ``tasks run|test`` and ``dags test``: steps aside, so no value is printed
    CLI = "cli"
    #: anything else (a script, a subprocess a task starts, this package's own CLI): resolves, fails closed
    OTHER = "other"

    @property
    def resolves(self) -> bool:
        """Whether the backend resolves references in such a process by default."""
        return self in _RESOLVING_ROLES


_RESOLVING_ROLES = frozenset(
    {ProcessRole.TASK, ProcessRole.TRIGGER, ProcessRole.CALLBACK, ProcessRole.CONNECTION_TEST, ProcessRole.OTHER}
)

# Airflow CLI commands and the role of a process started by them that has no
# task of its own running. Task processes forked from a scheduler (2.x
# LocalExecutor) or a Celery worker keep that parent's argv, so the task
# checks come first.
_SERVER_COMMANDS = frozenset(
    {"api-server", "webserver", "scheduler", "triggerer", "internal-api", "celery", "standalone"}
)
_PARSER_COMMANDS = frozenset({"dag-processor"})
_PARSING_DAG_COMMANDS = frozenset({"reserialize", "list", "list-import-errors", "report", "show", "details"})
#: the Airflow CLI commands that run a task, and so resolve
_TASK_COMMANDS = frozenset({("tasks", "run"), ("tasks", "test"), ("dags", "test")})
#: servers started as ``gunicorn``/``uvicorn`` with an Airflow app instead of through ``airflow``
_SERVER_PROGRAMS = ("gunicorn", "uvicorn", "fastapi")

#: functions that run a DAG's callbacks, by module: 3.x's DAG-processor child, 2.x's DAG file processor
_CALLBACK_FRAMES = {
    "airflow.dag_processing.processor": frozenset(
        {"_execute_callbacks", "execute_callbacks", "execute_callbacks_without_dag", "manage_slas"}
    ),
    # 3.3+: callbacks an executor runs on a worker
    "airflow.sdk.execution_time.callback_supervisor": frozenset({"execute_callback"}),
}
#: 2.x: a DAG file processor forked from the scheduler parsing a file
_PARSING_FRAMES = {"airflow.dag_processing.processor": frozenset({"process_file"})}
#: 3.3+: a worker testing a connection for the UI
_CONNECTION_TEST_FRAMES = {
    "airflow.sdk.execution_time.connection_test_supervisor": frozenset({"supervise_connection_test"})
}


#: the Airflow apps a server program may be started with directly
_AIRFLOW_APPS = ("airflow.api_fastapi.", "airflow.www.", "airflow.api_fastapi:", "airflow.www:")


def _runs_airflow_module() -> bool:
    """``python -m airflow ...``: Python then sets ``argv[0]`` to ``.../airflow/__main__.py``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "airflow.__main__"


def _airflow_command(argv: Sequence[str] | None = None) -> tuple[str, ...]:
    """The Airflow CLI command this process runs (``("tasks", "run")``), or ``()``."""
    if argv is None and _runs_airflow_module():
        argv = ["airflow", *sys.argv[1:]]
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ()
    program = os.path.basename(argv[0])
    if program.startswith("gunicorn") and any(a.startswith(("airflow-webserver", "airflow.www.")) for a in argv[1:]):
        return ("webserver",)  # 2.x webserver workers
    if program.startswith(_SERVER_PROGRAMS) and any(a.startswith(_AIRFLOW_APPS) for a in argv[1:]):
        return ("api-server",)  # an Airflow app served directly
    if program == "__main__.py" and os.path.basename(os.path.dirname(argv[0])) == "airflow":
        program = "airflow"
    if program == "airflow" or (program.startswith("python") and argv[1:3] == ["-m", "airflow"]):
        args = argv[1:] if program == "airflow" else argv[3:]
        words = tuple(a for a in args if not a.startswith("-"))[:2]
        return words
    return ()


def prints_configuration(argv: Sequence[str] | None = None) -> bool:
    """Whether this process is ``airflow config ...``, which prints the settings it reads."""
    return _airflow_command(argv)[:1] == ("config",)


def _code_of(module_name: str, names: frozenset[str]) -> frozenset[Any]:
    """The code objects of the functions (and methods) called ``names`` in the loaded module ``module_name``."""
    module = sys.modules.get(module_name)
    if module is None:
        return frozenset()
    found = set()
    for holder in (module, *(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module_name)):
        for name in names:
            function = getattr(holder, name, None)
            function = getattr(function, "__func__", function)
            code = getattr(function, "__code__", None)
            if code is not None:
                found.add(code)
    return frozenset(found)


def _running(frames: dict[str, frozenset[str]]) -> bool:
    """Whether this thread is inside one of ``frames`` (module -> function names) right now.

    What a process is doing can change from one call to the next (the DAG
    processor parses a file, then runs its callbacks), so it is read from the
    stack at the lookup, not from the command line. A frame counts only if
    it runs Airflow's own function (the same code object): a function of the
    same name in a module that merely calls itself so, as a DAG file could
    define, does not.
    """
    codes = frozenset().union(*(_code_of(module, names) for module, names in frames.items()))
    if not codes:
        return False
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _supervisor_comms() -> Any | None:
    if not HAS_TASK_SDK:
        return None
    module = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(module, "SUPERVISOR_COMMS", None) if module is not None else None


def _in_airflow2_task() -> bool:
    """A 2.x task is rendering or running in this process (``TaskInstance._run_raw_task``)."""
    module = sys.modules.get("airflow.models.taskinstance")
    if module is not None and getattr(module, "_CURRENT_CONTEXT", None):
        return True
    # Set by the task runner before pre_execute and callbacks, after templates.
    return "AIRFLOW_CTX_DAG_ID" in os.environ and "AIRFLOW_CTX_TASK_ID" in os.environ


def _parses_dags(command: tuple[str, ...]) -> bool:
    head = command[0] if command else ""
    return head in _PARSER_COMMANDS or (head == "dags" and command[1:2] != () and command[1] in _PARSING_DAG_COMMANDS)


def process_role(argv: Sequence[str] | None = None) -> ProcessRole:
    """What this process is doing, on any supported Airflow line (the rows of :mod:`airflow_sm_refs.roles`).

    Airflow 3: task and trigger-runner processes (and DAG-file parsers) hold a
    supervisor connection, servers never do. ``_AIRFLOW_PROCESS_CONTEXT=server``
    (3.1.1+) is inherited by everything a server starts (LocalExecutor tasks,
    their scripts), so it counts only in a process whose own command line is
    a server's. Airflow 2: tasks and the triggerer read the metastore
    themselves; a task is recognised by its running task context. Callbacks
    and connection tests are recognised by the Airflow function running them.
    """
    command = _airflow_command(argv)
    head = command[0] if command else ""
    context = os.environ.get("_AIRFLOW_PROCESS_CONTEXT")
    if context == "client" and _running(_CONNECTION_TEST_FRAMES):
        return ProcessRole.CONNECTION_TEST
    if HAS_TASK_SDK and _supervisor_comms() is not None:
        if _parses_dags(command):
            return ProcessRole.CALLBACK if _running(_CALLBACK_FRAMES) else ProcessRole.PARSER
        return ProcessRole.TRIGGER if head == "triggerer" else ProcessRole.TASK
    if not HAS_TASK_SDK:
        # A task context counts in a task's own process (its command line runs tasks),
        # or in a program a task started; not under another Airflow CLI command, which
        # inherits AIRFLOW_CTX_* from a BashOperator as well.
        if _in_airflow2_task() and (not head or command[:2] in _TASK_COMMANDS or head in ("scheduler", "celery")):
            return ProcessRole.TASK
        if head == "triggerer":  # 2.x runs triggers in the triggerer process itself
            return ProcessRole.TRIGGER
        if head == "celery":  # 2.x Celery runs tasks in forks that keep its argv
            return ProcessRole.OTHER
    if command[:2] in _TASK_COMMANDS:
        return ProcessRole.TASK
    if _parses_dags(command) or head == "scheduler":
        # 2.x runs DAG callbacks, and parses files, in processes forked from the scheduler or dag-processor.
        if _running(_CALLBACK_FRAMES):
            return ProcessRole.CALLBACK
        if HAS_TASK_SDK and head in _PARSER_COMMANDS:
            # 3.x: the DAG processor's parent parses nothing; it answers its children's
            # connection requests (their Execution API), so it hands them the raw value
            # and each child decides (a parse refuses, a callback resolves).
            return ProcessRole.SERVER
        if head == "scheduler" and not _running(_PARSING_FRAMES):
            return ProcessRole.SERVER
        return ProcessRole.PARSER
    if head in _SERVER_COMMANDS:
        return ProcessRole.SERVER
    if head:
        return ProcessRole.CLI
    if argv is None and _running(_CALLBACK_FRAMES):
        return ProcessRole.CALLBACK
    return ProcessRole.OTHER


# --- where raw values are found --------------------------------------------------------
def later_backends() -> list[Any]:
    """The secrets backends of this process's chain, in order (this package's included).

    A process with a supervisor (task, trigger runner) uses the Task SDK's
    chain, which reaches the metastore through the supervisor. Any other
    process (a script, a server with ``resolve_on_server``, 2.x) uses core
    Airflow's chain, which ends at the metastore: the SDK's fallback chain
    has none, and core Airflow would then hand out the metastore's raw value.
    """
    global _later_memo
    if not HAS_TASK_SDK:
        return list(_core_chain())
    from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded

    loaded = ensure_secrets_backend_loaded()
    comms = _supervisor_comms()
    memo = _later_memo
    if memo is not None and memo[0] is loaded and memo[1] is comms and len(loaded) == memo[2]:
        return memo[3]  # the same chain as last time (the SDK memoises it): a warm lookup skips the rest
    chain = list(loaded)
    if comms is None and not any(type(b).__name__ == "MetastoreBackend" for b in chain):
        # The SDK's fallback chain (the environment and external backends, which
        # build the SDK's cheaper Connection) first; the metastore, which only
        # core Airflow's chain has, last.
        chain += [b for b in _core_chain() if type(b).__name__ == "MetastoreBackend"]
    _later_memo = (loaded, comms, len(loaded), chain)
    return chain


#: (the SDK's chain object, the supervisor connection, its length, the chain built from them)
_later_memo: tuple[Any, Any, int, list[Any]] | None = None


#: where the core chain is memoised: inside the Task SDK's own cache of
#: backends, so that whatever clears that (Airflow, a test changing the
#: configuration) clears this too
_CORE_CHAIN_KEY = ("airflow_sm_refs:core-chain",)


def _core_chain() -> list[Any]:
    """Core Airflow's chain, built once per process once a custom backend is configured.

    ``ensure_secrets_loaded`` builds every backend again on each call while its
    module-level list holds only the defaults (a backend configured after
    Airflow was imported): one such build per lookup made a warm lookup cost
    2.6 times a plain one. As the Task SDK does, nothing is memoised until a
    custom backend appears.
    """
    from airflow.configuration import ensure_secrets_loaded

    try:
        from airflow.sdk.configuration import _secrets_backend_cache as memo
    except (ImportError, AttributeError):  # 2.x, 3.0-3.2: no memo to share
        return ensure_secrets_loaded()
    chain = memo.get(_CORE_CHAIN_KEY)
    if chain is None:
        chain = ensure_secrets_loaded()
        if len(chain) > 2:  # a custom backend, then the environment and the metastore
            memo[_CORE_CHAIN_KEY] = chain
    return chain


def call_backend(backend: Any, method: str, key: str, team_name: str | None) -> Any:
    """Call ``backend.<method>(key)``; ``team_name`` only where given (older backends lack it)."""
    if team_name is None:
        return getattr(backend, method)(key)
    return getattr(backend, method)(key, team_name=team_name)


def _chain_asks_supervisor(backends: Sequence[Any]) -> bool:
    # 3.1.1+: a backend in the chain talks to the supervisor (or, in servers, the metastore).
    names = {type(b).__name__ for b in backends}
    return bool(names & {"ExecutionAPISecretsBackend", "MetastoreBackend"})


def last_resort_connection(conn_id: str, backends: Sequence[Any]) -> Any | None:
    """The raw connection from the supervisor, where the chain does not ask it itself (3.0, 3.1.0).

    In those releases a task's last resort is a direct ``GetConnection`` to
    its supervisor after the backend loop; a backend that must find the raw
    value makes the same request.
    """
    comms = _supervisor_comms()
    if comms is None or _chain_asks_supervisor(backends):
        return None
    from airflow.sdk.execution_time.comms import ErrorResponse, GetConnection
    from airflow.sdk.execution_time.context import _convert_connection_result_conn

    msg = comms.send(GetConnection(conn_id=conn_id))
    if msg is None or isinstance(msg, ErrorResponse):
        return None
    return _convert_connection_result_conn(msg)


def last_resort_variable(key: str, backends: Sequence[Any]) -> str | None:
    """The raw variable value from the supervisor, where the chain does not ask it itself (3.0, 3.1.0)."""
    comms = _supervisor_comms()
    if comms is None or _chain_asks_supervisor(backends):
        return None
    from airflow.sdk.execution_time.comms import ErrorResponse, GetVariable

    msg = comms.send(GetVariable(key=key))
    if msg is None or isinstance(msg, ErrorResponse):
        return None
    return getattr(msg, "value", None)


def connection_class_of(backend: Any) -> type | None:
    """The connection class ``backend`` is told to build (3.2+), else ``None``: the raw one's class."""
    getter = getattr(backend, "_get_connection_class", None)
    return getter() if getter is not None else None


# --- the secrets masker ----------------------------------------------------------------
def _masker_module() -> Any:
    if _has_module("airflow.sdk._shared.secrets_masker"):  # 3.1+
        import airflow.sdk._shared.secrets_masker as module
    elif _has_module("airflow.sdk.execution_time.secrets_masker"):  # 3.0
        import airflow.sdk.execution_time.secrets_masker as module  # type: ignore[no-redef]
    else:  # 2.x
        import airflow.utils.log.secrets_masker as module  # type: ignore[no-redef]
    return module


def secrets_masker() -> Any:
    """This process's secrets masker (a new one after Airflow resets it between tasks)."""
    return _masker_module()._secrets_masker()


def reset_secrets_masker() -> None:
    """Forget every registered value, as Airflow does before each task (3.x ``reset_secrets_masker``)."""
    reset = getattr(_masker_module(), "reset_secrets_masker", None)
    if reset is not None:
        reset()
        return
    masker = secrets_masker()  # 2.x has no reset: do what 3.x's ``reset_masker`` does
    masker.patterns = set()
    masker.replacer = None


def min_masked_length() -> int:
    """The shortest value this line's masker masks (3.x skips shorter ones; 2.x masks any)."""
    length = getattr(secrets_masker(), "min_length_to_mask", None)  # 3.1+
    if isinstance(length, int):
        return length
    getter = getattr(_masker_module(), "get_min_secret_length", None)  # 3.0
    return int(getter()) if getter is not None else 0


_BUILT_CONNECTIONS_CALL_SUPERVISOR: list[bool] = []


def connections_call_the_supervisor_when_built() -> bool:
    """Whether building a core ``Connection`` registers its password through the supervisor (3.0).

    3.0's ``Connection.__init__`` uses the Task SDK's execution-time masker,
    which sends the password to the supervisor: that must never start inside
    the trigger runner's loop. From 3.1 it uses the local masker.
    """
    if not _BUILT_CONNECTIONS_CALL_SUPERVISOR:
        masker = getattr(_import("airflow.models.connection"), "mask_secret", None) if HAS_TASK_SDK else None
        # 3.0 imports the Task SDK's execution-time masker there, which sends MaskSecret to the supervisor.
        answer = getattr(masker, "__module__", "") == "airflow.sdk.execution_time.secrets_masker"
        _BUILT_CONNECTIONS_CALL_SUPERVISOR.append(answer)
    return _BUILT_CONNECTIONS_CALL_SUPERVISOR[0]


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def mask_secret(value: str) -> None:
    """Register ``value`` with the masker of this process and, in a task, of its supervisor.

    Inside a running event loop (the trigger runner) only the local masker is
    told: the supervisor call there is a blocking bridge into the same loop,
    which raises (apache/airflow#70398) or deadlocks. The trigger runner
    masks its own log lines, so nothing goes out unmasked.
    """
    if _in_event_loop():
        secrets_masker().add_mask(value)
        return
    if HAS_TASK_SDK:
        if _has_module("airflow.sdk.log") and hasattr(_import("airflow.sdk.log"), "mask_secret"):
            sdk_mask = _import("airflow.sdk.log").mask_secret
        else:
            sdk_mask = _masker_module().mask_secret
        try:
            sdk_mask(value)
        except Exception:  # noqa: BLE001 - a supervisor that cannot be told must not fail the lookup
            secrets_masker().add_mask(value)
        return
    _masker_module().mask_secret(value)


async def amask_secret(value: str) -> None:
    """:func:`mask_secret` from inside an event loop, telling the supervisor where the SDK can."""
    module = _import("airflow.sdk.log") if _has_module("airflow.sdk.log") else None
    amask = getattr(module, "amask_secret", None)
    if amask is None:
        secrets_masker().add_mask(value)
        return
    try:
        await amask(value)
    except Exception:  # noqa: BLE001
        secrets_masker().add_mask(value)


def _import(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


# --- metrics ----------------------------------------------------------------------------
#: where Stats lives: the Task SDK's (3.2+, set up by the task runner), else ``airflow.stats``
#: (2.x to 3.1, built from ``[metrics]`` on first use)
_SDK_STATS = "airflow.sdk.observability.stats"
_stats: Any = None


def stats() -> Any:
    """Airflow's ``Stats`` on this line: metrics go wherever ``[metrics]`` sends Airflow's own."""
    global _stats
    if _stats is None:
        if _has_module(_SDK_STATS):
            _stats = _import(_SDK_STATS).Stats
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from airflow.stats import Stats
            _stats = Stats
    return _stats


def initialize_stats_as_a_task_runner() -> None:
    """Set ``Stats`` up from ``[metrics]`` as a task process does (3.2+ do it in the task runner; tests)."""
    if not _has_module(_SDK_STATS):
        return  # airflow.stats builds itself from the configuration on first use
    from airflow.sdk.observability.metrics import stats_utils

    module = _import(_SDK_STATS)
    if hasattr(module, "initialize"):  # 3.3: a module of functions
        module.initialize(
            factory=stats_utils.get_stats_factory(),
            export_legacy_names=airflow_conf().getboolean("metrics", "legacy_names_on", fallback=False),
        )
    else:  # 3.2: a metaclass that takes a factory
        module.Stats.initialize(factory=stats_utils.get_stats_factory(module.Stats))


# --- what tests and tools need of the line they run on ----------------------------------
def base_hook() -> type:
    """Airflow's ``BaseHook`` of this line (the Task SDK's on 3.x)."""
    if HAS_TASK_SDK and _has_module("airflow.sdk.bases.hook"):
        from airflow.sdk import BaseHook
    else:
        from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    return BaseHook


def reset_secrets_chain() -> None:
    """Make Airflow build its secrets backend chain again, from the current configuration."""
    global _later_memo
    _later_memo = None
    import airflow.configuration as configuration

    try:
        from airflow.sdk import configuration as sdk_configuration

        sdk_configuration._secrets_backend_cache.clear()
    except (ImportError, AttributeError):
        pass
    if hasattr(configuration, "secrets_backend_list"):
        configuration.secrets_backend_list = configuration.initialize_secrets_backends()


def not_found_errors() -> tuple[type[BaseException], ...]:
    """What ``BaseHook.get_connection`` raises for an unknown connection, on this line."""
    errors: list[type[BaseException]] = []
    for module in ("airflow.sdk.exceptions", "airflow.exceptions"):
        try:
            errors.append(getattr(_import(module), "AirflowNotFoundException"))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def redact(value: Any) -> Any:
    """``value`` as this process's secrets masker would write it to a log."""
    return secrets_masker().redact(value)


# --- configuration, for this package's own command line ----------------------------------
def airflow_conf() -> Any:
    """Airflow's configuration object."""
    from airflow.configuration import conf

    return conf


def configured_secrets_backend(*, worker_mode: bool) -> Any | None:
    """The custom backend ``airflow.cfg`` names: ``[workers]`` (where the line has it) or ``[secrets]``."""
    try:
        from airflow.sdk.configuration import conf as sdk_conf

        return sdk_conf._get_custom_secret_backend(worker_mode=worker_mode)
    except (ImportError, AttributeError):
        pass
    import inspect

    import airflow.configuration as configuration

    if "worker_mode" in inspect.signature(configuration.get_custom_secret_backend).parameters:
        return configuration.get_custom_secret_backend(worker_mode=worker_mode)
    return configuration.get_custom_secret_backend()  # 2.x has no [workers] backend


def expand_before_connection_tests(expand: Callable[[Any], Any]) -> None:
    """Have the worker-side connection test (3.3+) test the expanded connection, not the stored one.

    3.3 runs the UI's Test button on a worker: ``supervise_connection_test``
    builds the stored connection and calls its ``test_connection()``, which
    hands exactly that object to the hook (``_preset_connections``), so no
    secrets backend is ever asked. ``expand(conn)`` returns the connection to
    test instead and the values resolved into it, or ``(False, message)`` for a
    reference that does not resolve. Installed once; only a process in the
    connection-test role is affected.
    """
    if not HAS_WORKER_CONNECTION_TEST:
        return
    connection_class = _import("airflow.sdk.definitions.connection").Connection
    original = connection_class.test_connection
    if getattr(original, "_airflow_sm_refs", False):
        return

    def test_connection(self: Any) -> tuple[bool, str]:
        if process_role() is not ProcessRole.CONNECTION_TEST:
            return original(self)
        expanded, values = expand(self)
        if isinstance(expanded, bool):
            return expanded, str(values)
        ok, message = original(expanded)
        # The hook's own message goes to the UI unmasked: it may quote a value (a header
        # Python refuses, a host in a connection error), in any case.
        message = str(redact(str(message)))
        shown = message.lower()
        if any(value and value.lower() in shown for value in values):
            message = "the hook's message is not shown: it quoted a value resolved from AWS Secrets Manager"
        return ok, message

    test_connection._airflow_sm_refs = True  # type: ignore[attr-defined]
    connection_class.test_connection = test_connection


def use_task_connection_class(backend: Any) -> None:
    """Make ``backend`` build the connection class a task receives (the Task SDK's, where it has one)."""
    setter = getattr(backend, "_set_connection_class", None)
    if setter is None or not _has_module("airflow.sdk.definitions.connection"):
        return
    from airflow.sdk.definitions.connection import Connection

    setter(Connection)


def has_workers_secrets_backend() -> bool:
    """Whether this line has ``[workers] secrets_backend`` (a backend for task processes only)."""
    return bool(airflow_conf().has_option("workers", "secrets_backend"))
