"""What must hold on every supported Airflow line: process roles, failing closed, triggers.

Run on the newest line by ``make test`` and on every older one by ``make test-compat``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import SecretFetchError, SecretKeyError, SecretNotFoundError, SecretsManagerRefsBackend
from airflow_sm_refs._compat import AUTHORITATIVE_DENY, HAS_TASK_SDK, ProcessRole, process_role, redact
from airflow_sm_refs._exceptions import SecretLookupAborted
from standins.aws import AwsStandIn
from tests.conftest import BACKEND, configure_backend, get_connection, lookup_fails, set_conn

pytestmark = pytest.mark.compat

SECRET = {"username": "compat_user", "password": "C0mpat-secret-Value-8812"}
REF = "{{workato:sm:password:compat/db}}"


def _airflow(*words: str) -> list[str]:
    return ["/venv/bin/airflow", *words]


class TestFailClosedError:
    def test_is_caught_by_nothing_that_catches_exception(self) -> None:
        error = SecretLookupAborted(SecretKeyError("no key 'x'", reference="{{workato:sm:x:a/b}}", conn_id="c", field="password"))
        assert isinstance(error, BaseException)
        for swallowed in (Exception, SystemExit, KeyboardInterrupt, GeneratorExit, asyncio.CancelledError):
            assert not isinstance(error, swallowed)

    def test_message_is_the_errors_own_and_survives_pickling(self) -> None:
        inner = SecretKeyError("secret 'a/b' has no key 'x'", reference="{{workato:sm:x:a/b}}", conn_id="c", field="password")
        error = SecretLookupAborted(inner)
        assert str(error) == str(inner) == "connection 'c', field 'password', reference 'workato:sm:x:a/b': secret 'a/b' has no key 'x'"
        copy = pickle.loads(pickle.dumps(error))
        assert str(copy) == str(error) and copy.error.conn_id == "c"

    def test_authoritative_deny_is_detected_from_the_sdk(self) -> None:
        try:
            from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
        except ImportError:
            assert not AUTHORITATIVE_DENY
        else:
            assert AUTHORITATIVE_DENY and issubclass(SecretKeyError, AirflowSecretsBackendAccessDenied)


class TestProcessRole:
    @pytest.mark.parametrize(
        ("argv", "role"),
        [
            (_airflow("connections", "get", "db"), ProcessRole.CLI),
            (_airflow("variables", "get", "v"), ProcessRole.CLI),
            (_airflow("api-server"), ProcessRole.SERVER),
            (_airflow("webserver", "-p", "8080"), ProcessRole.SERVER),
            (["/venv/bin/gunicorn", "--name", "airflow-webserver", "airflow.www.app:cached_app()"], ProcessRole.SERVER),
            # the 3.x DAG processor's parent (its children, with a supervisor connection, parse)
            (_airflow("dag-processor"), ProcessRole.SERVER if HAS_TASK_SDK else ProcessRole.PARSER),
            (_airflow("dags", "reserialize"), ProcessRole.PARSER),
            (["/usr/bin/python3", "my_script.py"], ProcessRole.OTHER),
            (["/usr/bin/python3", "-m", "airflow_sm_refs.cli", "check", "db"], ProcessRole.OTHER),
        ],
    )
    def test_roles_from_the_command(self, argv: list[str], role: ProcessRole, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
        monkeypatch.delenv("AIRFLOW_CTX_DAG_ID", raising=False)
        assert process_role(argv) is role

    def test_scheduler_and_triggerer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CTX_DAG_ID", raising=False)
        assert process_role(_airflow("scheduler")) is ProcessRole.SERVER
        # 2.x runs triggers inside the triggerer process; 3.x in a child with a supervisor connection.
        assert process_role(_airflow("triggerer")) is (ProcessRole.SERVER if HAS_TASK_SDK else ProcessRole.TRIGGER)

    @pytest.mark.skipif(HAS_TASK_SDK, reason="Airflow 2 task detection")
    def test_airflow2_task_forked_from_a_scheduler_is_a_task(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "d")
        monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "t")
        assert process_role(_airflow("scheduler")) is ProcessRole.TASK

    @pytest.mark.skipif(not HAS_TASK_SDK, reason="Airflow 3 supervisor connection")
    def test_airflow3_processes_with_a_supervisor(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.sdk.execution_time import task_runner

        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object(), raising=False)
        # LocalExecutor tasks inherit the scheduler's argv and _AIRFLOW_PROCESS_CONTEXT=server.
        monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
        assert process_role(_airflow("scheduler")) is ProcessRole.TASK
        assert process_role(_airflow("triggerer")) is ProcessRole.TRIGGER
        assert process_role(_airflow("dag-processor")) is ProcessRole.PARSER

    @pytest.mark.skipif(not HAS_TASK_SDK, reason="Airflow 3 servers")
    def test_airflow3_server_without_process_context(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """3.0.x and 3.1.0 API servers do not set _AIRFLOW_PROCESS_CONTEXT: the command decides."""
        monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
        assert process_role(_airflow("api-server")) is ProcessRole.SERVER


def _write_secret(aws: AwsStandIn, name: str = "compat/db", value: dict[str, str] | None = None) -> None:
    aws.client().create_secret(Name=name, SecretString=json.dumps(value or SECRET))


class TestFailsClosedThroughAirflow:
    """``BaseHook.get_connection`` in a process that resolves: never the raw token."""

    @pytest.mark.parametrize(
        ("password", "error"),
        [("{{workato:sm:pasword:compat/db}}", SecretKeyError), ("{{workato:sm:password:compat/gone}}", SecretNotFoundError)],
    )
    def test_broken_reference_stops_the_lookup(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch, password: str, error: type[Exception]
    ) -> None:
        _write_secret(backend_configured)
        set_conn(monkeypatch, "broken", {"conn_type": "postgres", "password": password})
        with lookup_fails(error) as raised:
            get_connection("broken")
        assert raised.value.conn_id == "broken" and raised.value.field == "password"
        assert password.strip("{}") in str(raised.value)

    def test_unexpected_error_fails_closed_too(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """A typo in config_kwargs (``retry``) raises TypeError building the client: not a fall-through."""
        _write_secret(aws)
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, config_kwargs={"retry": {"mode": "standard"}})
        set_conn(monkeypatch, "typo", {"conn_type": "postgres", "password": REF})
        with lookup_fails(SecretFetchError, match="unknown botocore Config option") as raised:
            get_connection("typo")
        assert raised.value.conn_id == "typo" and raised.value.field == "password"
        assert REF.strip("{}") in str(raised.value) and "'retry'" in str(raised.value)

    def test_pathologically_nested_secret_fails_closed(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """json.loads raises RecursionError on a deeply nested secret: still our error, never a fall-through.

        moto cannot serve such a secret, so the one fetch returns it directly.
        """
        from airflow_sm_refs import resolver
        from airflow_sm_refs.fetch import SecretPayload

        depth = 5_000  # past Python's recursion limit, within the 64 KiB a secret may hold
        deep = SecretPayload("arn:aws:secretsmanager:us-east-1:123456789012:secret:compat/deep-AbCdEf", "v1", '{"k": ' + "[" * depth + "]" * depth + "}", None)
        monkeypatch.setattr(resolver, "fetch_secret", lambda clients, ref: deep)
        set_conn(monkeypatch, "deep", {"conn_type": "postgres", "password": "{{workato:sm:k:compat/deep}}"})
        with lookup_fails(SecretFetchError, match="RecursionError") as raised:
            get_connection("deep")
        assert (raised.value.conn_id, raised.value.field) == ("deep", "password")

    def test_server_process_gets_an_ordinary_error(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """resolve_on_server in an API server: never a BaseException there, whatever the line."""
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=aws.endpoint_url, resolve_on_server=True)
        set_conn(monkeypatch, "srv", {"conn_type": "postgres", "password": "{{workato:sm:password:compat/gone}}"})
        monkeypatch.setattr(sys, "argv", _airflow("api-server"))
        monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
        with pytest.raises(SecretNotFoundError):
            backend.get_connection("srv")


def test_airflow_cli_steps_aside_even_with_resolve_on_server(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=aws.endpoint_url, resolve_on_server=True)
    set_conn(monkeypatch, "cli_conn", {"conn_type": "postgres", "password": REF})
    monkeypatch.setattr(sys, "argv", _airflow("connections", "get", "cli_conn"))
    assert backend.get_connection("cli_conn") is None
    assert aws.calls() == 0


class TestTriggers:
    def test_aget_connection_cold_then_warm_in_the_loop(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_sm_refs.resolver import SecretResolver

        _write_secret(backend_configured)
        set_conn(monkeypatch, "trig", {"conn_type": "http", "login": "{{workato:sm:username:compat/db}}", "password": REF})
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=backend_configured.endpoint_url)
        served_in: list[int] = []
        original = SecretResolver.resolve_cached

        def recording(self: SecretResolver, ref: Any) -> Any:
            served_in.append(threading.get_ident())
            return original(self, ref)

        monkeypatch.setattr(SecretResolver, "resolve_cached", recording)

        async def lookup() -> tuple[Any, int]:
            return await backend.aget_connection("trig"), threading.get_ident()

        cold, _ = asyncio.run(lookup())
        assert (cold.login, cold.password) == (SECRET["username"], SECRET["password"])
        assert backend_configured.calls() == 1
        served_in.clear()
        warm, loop_thread = asyncio.run(lookup())
        assert warm.password == SECRET["password"] and backend_configured.calls() == 1
        from airflow_sm_refs._compat import connections_call_the_supervisor_when_built

        if connections_call_the_supervisor_when_built():
            # 3.0: building the Connection would call the supervisor, so never in the loop's thread.
            assert loop_thread not in served_in, "3.0: nothing may be built in the loop"
        else:
            assert served_in and set(served_in) == {loop_thread}, "a warm lookup must be served in the loop"
        assert str(redact(f"pw={SECRET['password']}")) == "pw=***"

    def test_aget_connection_broken_reference_fails_closed(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        set_conn(monkeypatch, "trig_broken", {"conn_type": "http", "password": "{{workato:sm:password:compat/gone}}"})
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=backend_configured.endpoint_url)
        with lookup_fails(SecretNotFoundError):
            asyncio.run(backend.aget_connection("trig_broken"))

    @pytest.mark.skipif(not HAS_TASK_SDK, reason="a supervisor connection exists on Airflow 3 only")
    def test_masking_in_the_event_loop_never_calls_the_supervisor(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The trigger runner's supervisor call raises from inside its loop (apache/airflow#70398)."""
        from airflow.sdk.execution_time import task_runner

        class CrossLoopComms:
            """Like the trigger runner's: a blocking bridge into the loop, which fails from the loop's own thread."""

            def __init__(self) -> None:
                self.calls_from_loop: list[str] = []
                self.calls_from_threads: list[str] = []

            def send(self, msg: Any) -> Any:
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    self.calls_from_threads.append(type(msg).__name__)
                    return None  # from a worker thread: fine
                self.calls_from_loop.append(type(msg).__name__)
                raise RuntimeError("You cannot use AsyncToSync in the same thread as an async event loop")

        _write_secret(backend_configured, value={"username": "u", "password": "Loop-Masked-Value-5521"})
        set_conn(monkeypatch, "trig_mask", {"conn_type": "http", "password": REF})
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=backend_configured.endpoint_url)
        comms = CrossLoopComms()
        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
        monkeypatch.setattr(sys, "argv", _airflow("triggerer"))
        conn = asyncio.run(backend.aget_connection("trig_mask"))
        assert conn.password == "Loop-Masked-Value-5521"
        # Airflow resets the masker between tasks: the warm lookup, expanded in the loop's own
        # thread, must register the value again, from inside the loop.
        from airflow_sm_refs._compat import reset_secrets_masker

        reset_secrets_masker()
        conn = asyncio.run(backend.aget_connection("trig_mask"))  # warm: expanded in the loop
        assert conn.password == "Loop-Masked-Value-5521"
        assert str(redact("x Loop-Masked-Value-5521 y")) == "x *** y"
        # The SDK's mask_secret swallows whatever the bridge raises, so only the calls tell: none
        # may have been made from the loop's own thread (they raise, or deadlock, in a real runner).
        assert comms.calls_from_loop == [], f"supervisor called from inside the event loop: {comms.calls_from_loop}"


class TestCheckCommand:
    def test_invalid_stored_uri_is_reported_without_its_password(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """Airflow's own error quotes the whole URI, password included; `check` must not echo it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__SECRETS__", "AIRFLOW_CONN_"))}
        env.update(
            AIRFLOW__SECRETS__BACKEND=BACKEND,
            AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}),
            AIRFLOW__CORE__FERNET_KEY="pVgqJ9pNwYTHx4vuxvyQmx6tZiZR_8ZxMLcwHF0aZxQ=",
            AIRFLOW_CONN_BROKEN_URI="postgres://admin:Literal-Pa55word-In-Uri@h://x://y://z",
        )
        done = subprocess.run(
            [sys.executable, "-m", "airflow_sm_refs.cli", "check", "broken_uri"], env=env, capture_output=True, text=True, timeout=180
        )
        output = done.stdout + done.stderr
        assert done.returncode == 1, output[-2000:]
        assert "broken_uri" in output and "not readable" in output, output[-2000:]
        assert "Literal-Pa55word-In-Uri" not in output


class TestAirflowCli:
    def test_connections_get_prints_no_resolved_value(self, aws: AwsStandIn, tmp_path: Path) -> None:
        """`airflow connections get` on this line: the stored reference, never the value, no AWS call."""
        _write_secret(aws)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "_AIRFLOW_PROCESS"))}
        env.update(
            AIRFLOW__SECRETS__BACKEND=BACKEND,
            AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW_CONN_CLI_DB=json.dumps({"conn_type": "postgres", "host": "db.internal", "password": REF}),
        )
        airflow = str(Path(sys.executable).parent / "airflow")
        before = aws.calls()
        done = subprocess.run(
            [airflow, "connections", "get", "cli_db", "-o", "json"], env=env, capture_output=True, text=True, timeout=180
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-2000:]
        assert "db.internal" in output, "the command must really have printed the connection"
        assert SECRET["password"] not in output
        assert aws.calls() == before
