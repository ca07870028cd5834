"""Shared fixtures: a throwaway AIRFLOW_HOME, a moto server on loopback, the backend configured."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before anything imports airflow: a private AIRFLOW_HOME and fake AWS credentials.
_HOME = Path(tempfile.mkdtemp(prefix="airflow-sm-refs-tests-"))
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
def aws_server() -> Iterator[AwsStandIn]:
    """One moto server (behind a counting proxy) for the whole session."""
    with AwsStandIn() as stand_in:
        yield stand_in


def reset_airflow_secrets_cache() -> None:
    """Make the Task SDK build its backend chain again (it memoises it per process)."""
    from airflow.sdk import configuration as sdk_configuration

    sdk_configuration._secrets_backend_cache.clear()


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


def get_connection(conn_id: str) -> Any:
    """Look a connection up as a task does."""
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
