"""Shared fixtures: a throwaway AIRFLOW_HOME, a moto server on loopback, the backend configured."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

# Before anything imports airflow: a private AIRFLOW_HOME and fake AWS credentials.
# (This module is imported twice — by pytest, and as ``tests.conftest`` by test
# modules that use its helpers — so the home is made once per process.)
if "_AIRFLOW_SM_REFS_TEST_HOME" not in os.environ or os.environ.get("_AIRFLOW_SM_REFS_TEST_PID") != str(os.getpid()):
    os.environ["_AIRFLOW_SM_REFS_TEST_HOME"] = tempfile.mkdtemp(prefix="airflow-sm-refs-tests-")
    os.environ["_AIRFLOW_SM_REFS_TEST_PID"] = str(os.getpid())
_HOME = Path(os.environ["_AIRFLOW_SM_REFS_TEST_HOME"])
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _name in ("AWS_PROFILE", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL", "AIRFLOW__SECRETS__BACKEND"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402

from standins.aws import AwsStandIn  # noqa: E402

BACKEND = "airflow_sm_refs.backend.SecretsManagerRefsBackend"


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The throwaway AIRFLOW_HOME of this test session."""
    return _HOME


@pytest.fixture(scope="session")
def metastore(airflow_home: Path) -> Path:
    """An initialised metastore (sqlite) in the session's AIRFLOW_HOME."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=600)
    return airflow_home


@pytest.fixture(scope="session")
def aws_server() -> Iterator[AwsStandIn]:
    """One moto server (behind a counting proxy) for the whole session."""
    with AwsStandIn() as stand_in:
        yield stand_in


def import_dag_file(airflow_home: Path, dag_file: Path, module_name: str) -> ModuleType:
    """Copy ``dag_file`` into the dags folder (``dag.test()`` parses the DAG from there) and import it from there."""
    import importlib.util
    import shutil

    dags = airflow_home / "dags"
    dags.mkdir(exist_ok=True)
    path = dags / dag_file.name
    shutil.copy(dag_file, path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reset_airflow_secrets_cache() -> None:
    """Make Airflow build its backend chain again (it memoises it per process)."""
    from airflow_sm_refs._compat import reset_secrets_chain

    reset_secrets_chain()


def reset_plugin_state() -> None:
    """Forget every cached secret and client of this process."""
    from airflow_sm_refs._aws import reset_clients
    from airflow_sm_refs.resolver import clear_process_cache

    clear_process_cache()
    reset_clients()
    reset_airflow_secrets_cache()
    # The per-worker tier outlives the process: empty the default directory
    # so one test's entries never answer another's lookups.
    from airflow_sm_refs.worker_cache import clear_worker_cache, reset_worker_caches

    reset_worker_caches()
    clear_worker_cache()


@pytest.fixture(autouse=True)
def no_task_context_left_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process ``dag.test()`` of an earlier test can leave Airflow 2's task context behind
    (``AIRFLOW_CTX_*``, ``_CURRENT_CONTEXT``), which would make this pytest process a task."""
    for name in [n for n in os.environ if n.startswith("AIRFLOW_CTX_")]:
        monkeypatch.delenv(name)
    module = sys.modules.get("airflow.models.taskinstance")
    current = getattr(module, "_CURRENT_CONTEXT", None)
    if isinstance(current, list) and current:
        monkeypatch.setattr(module, "_CURRENT_CONTEXT", [])


@pytest.fixture(autouse=True)
def private_worker_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give each test its own default per-worker cache directory instead of the real /dev/shm one."""
    from airflow_sm_refs import worker_cache

    monkeypatch.setattr(worker_cache, "RAM_FS", str(tmp_path_factory.mktemp("shm")))
    worker_cache.reset_worker_caches()
    yield
    worker_cache.reset_worker_caches()


@pytest.fixture
def aws(aws_server: AwsStandIn) -> Iterator[AwsStandIn]:
    """The moto server, emptied, with counters at zero and no cached secrets."""
    aws_server.reset()
    reset_plugin_state()
    yield aws_server
    reset_plugin_state()


def configure_backend(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> None:
    """Set ``[secrets] backend`` to this plugin with ``kwargs``, as airflow.cfg would."""
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", BACKEND)
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps(kwargs))
    reset_airflow_secrets_cache()


@pytest.fixture
def backend_configured(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> AwsStandIn:
    """The plugin configured as ``[secrets] backend`` against the moto server."""
    configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url)
    return aws


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: dict[str, Any] | str) -> None:
    """Define a connection in an AIRFLOW_CONN_* variable (JSON or URI form)."""
    text = value if isinstance(value, str) else json.dumps(value)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", text)


class Raised:
    """What :func:`lookup_fails` caught: ``value`` is this package's error, unwrapped."""

    value: Any = None


@contextmanager
def lookup_fails(error: type[BaseException], match: str | None = None) -> Iterator[Raised]:
    """Expect a lookup through Airflow's chain to fail with ``error``, by this line's mechanism.

    Where Airflow stops at an authoritative deny (3.2.2+) the error itself
    comes out; before that it must come wrapped in ``SecretLookupAborted``,
    which no lookup loop can swallow.
    """
    from airflow_sm_refs._compat import AUTHORITATIVE_DENY
    from airflow_sm_refs._exceptions import SecretLookupAborted

    raised = Raised()
    with pytest.raises((error, SecretLookupAborted), match=match) as info:
        yield raised
    caught = info.value
    if AUTHORITATIVE_DENY:
        assert not isinstance(caught, SecretLookupAborted)
        raised.value = caught
    else:
        assert isinstance(caught, SecretLookupAborted), f"{type(caught).__name__} would be swallowed by the lookup loop"
        assert str(caught) == str(caught.error)
        raised.value = caught.error
    assert isinstance(raised.value, error)


needs_task_sdk = pytest.mark.skipif(
    not __import__("airflow_sm_refs._compat", fromlist=["HAS_TASK_SDK"]).HAS_TASK_SDK,
    reason="Airflow 3 process roles (supervisor connection)",
)


def get_connection(conn_id: str) -> Any:
    """Look a connection up as a task does."""
    from airflow_sm_refs._compat import base_hook

    return base_hook().get_connection(conn_id)


# Loggers whose records the leak guard reads: ours and the AWS stack under us.
# (A DAG's own task code may log a value on purpose, to show it masked.)
_GUARDED_LOGGERS = ("airflow_sm_refs", "botocore", "boto3", "urllib3", "airflow.providers.amazon")
_SETUP_OPERATIONS = ("CreateSecret", "PutSecretValue", "UpdateSecret", "secretsmanager.CreateSecret")


@pytest.fixture(autouse=True)
def no_secret_value_in_logs_or_errors(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Fail any test whose logs or error messages contain a secret value AWS handed out.

    The values are the ones the moto stand-in actually served in the test
    (seeded by the test's own secrets), so the guard needs no list to keep.
    """
    from airflow_sm_refs._exceptions import SecretReferenceError

    messages: list[str] = []
    render = SecretReferenceError._render

    def recording_render(self: SecretReferenceError) -> str:
        text = render(self)
        messages.append(text)
        return text

    monkeypatch.setattr(SecretReferenceError, "_render", recording_render)
    for name in ("airflow_sm_refs", "botocore"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield
    if "aws_server" not in request.fixturenames:
        return
    stand_in = request.getfixturevalue("aws_server")
    if not stand_in.all_served_values:
        return
    texts = [
        (f"log record of {record.name}", record.getMessage())
        for phase in ("setup", "call")
        for record in caplog.get_records(phase)
        if record.name.startswith(_GUARDED_LOGGERS)
        # the test's own setup writes secrets through botocore; only reads are the plugin's
        and not any(op in record.getMessage() for op in _SETUP_OPERATIONS)
    ]
    texts += [("error message", m) for m in messages]
    for where, text in texts:
        if stand_in.leaked_in(text):
            pytest.fail(f"a secret value served by AWS appears in a {where} (not shown here)")


@contextmanager
def postgres_server(user: str, password: str, database: str) -> Iterator[Any]:
    """A real PostgreSQL server on loopback enforcing scram-sha-256.

    Skipped where Debian's server binaries are missing, unless
    ``AIRFLOW_SM_REFS_REQUIRE_POSTGRES`` is set (CI sets it, so a missing
    install fails there instead of passing quietly).
    """
    from standins.postgres import PostgresServer, find_pg_bindir

    try:
        find_pg_bindir()
    except RuntimeError as exc:
        if os.environ.get("AIRFLOW_SM_REFS_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL server binaries not installed: {exc}")
    with PostgresServer(user=user, password=password, database=database) as server:
        yield server


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record every skipped test (one JSON line) in ``$AIRFLOW_SM_REFS_SKIP_REPORT``, if set.

    ``.ci/check-skips.py`` compares the file with ``.ci/expected-skips.txt``,
    so that CI skips nothing silently. (An xfail is not a skip.)
    """
    path = os.environ.get("AIRFLOW_SM_REFS_SKIP_REPORT")
    if not path or not report.skipped or hasattr(report, "wasxfail"):
        return
    from importlib.metadata import version

    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"airflow": version("apache-airflow"), "test": report.nodeid, "reason": reason}) + "\n")
