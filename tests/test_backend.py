"""The backend through Airflow's own lookup: ``BaseHook.get_connection`` with ``[secrets] backend`` set."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from airflow_sm_refs import (
    ReferenceSyntaxError,
    SecretAccessDeniedError,
    SecretKeyError,
    SecretNotFoundError,
    SecretReferenceError,
    SecretsManagerRefsBackend,
    SecretTransientError,
)
from standins.aws import ACCESS_DENIED, INTERNAL_ERROR, THROTTLING, AwsStandIn
from tests.conftest import configure_backend, get_connection, lookup_fails, needs_task_sdk, set_conn

pytestmark = pytest.mark.compat

DB_SECRET = {"username": "app_user", "password": "Str0ng-pässword"}


def make_secret(aws: AwsStandIn, name: str, value: Any, region: str = "us-east-1") -> dict[str, Any]:
    """Create a secret in moto; dicts are stored as JSON, bytes as SecretBinary."""
    client = aws.client(region_name=region)
    if isinstance(value, bytes):
        return client.create_secret(Name=name, SecretBinary=value)
    text = value if isinstance(value, str) else json.dumps(value)
    return client.create_secret(Name=name, SecretString=text)


def redacted(text: str) -> str:
    from airflow_sm_refs._compat import redact

    return str(redact(text))


class TestSecretsManagerRefsBackend:
    # --- the grammar, end to end -------------------------------------------------
    def test_plain_name_full_and_partial_arn(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        arn = make_secret(backend_configured, "prod/db", DB_SECRET)["ARN"]
        partial_arn = arn.rsplit("-", 1)[0]
        assert partial_arn.endswith(":secret:prod/db")
        set_conn(
            monkeypatch,
            "db",
            {
                "conn_type": "postgres",
                "host": "db.internal",
                "login": "{{workato:sm:username:prod/db}}",
                "password": f"{{{{workato:sm:password:{arn}}}}}",
                "extra": {"partial": f"{{{{ workato:sm:password:{partial_arn} }}}}"},
            },
        )
        conn = get_connection("db")
        assert conn.login == "app_user"
        assert conn.password == DB_SECRET["password"]
        assert conn.extra_dejson == {"partial": DB_SECRET["password"]}
        assert conn.host == "db.internal"

    def test_whole_secret_and_several_tokens_in_one_value(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        make_secret(backend_configured, "api/token", "tok-123456")
        make_secret(backend_configured, "prod/db", DB_SECRET)
        set_conn(
            monkeypatch,
            "api",
            {
                "conn_type": "http",
                "host": "{{workato:sm:username:prod/db}}.{{workato:sm:username:prod/db}}.example",
                "schema": "https",
                "password": "Bearer {{workato:sm::api/token}}",
            },
        )
        conn = get_connection("api")
        assert conn.password == "Bearer tok-123456"
        assert conn.host == "app_user.app_user.example"
        # two secrets, cold: one BatchGetSecretValue request for both
        assert backend_configured.calls("BatchGetSecretValue") == 1
        assert backend_configured.total_calls() == 1

    def test_token_in_every_field_nested_extra_and_lists(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        make_secret(backend_configured, "svc", {"h": "host.example", "s": "analytics", "u": "svc_user", "p": "pw-98765", "t": "tok-55555"})
        set_conn(
            monkeypatch,
            "all_fields",
            {
                "conn_type": "generic",
                "host": "{{workato:sm:h:svc}}",
                "schema": "{{workato:sm:s:svc}}",
                "login": "{{workato:sm:u:svc}}",
                "password": "{{workato:sm:p:svc}}",
                "port": 5432,
                "extra": {
                    "headers": {"Authorization": "Bearer {{workato:sm:t:svc}}", "X-Plain": "unchanged"},
                    "tokens": ["{{workato:sm:t:svc}}", 7, None, {"deep": ["{{workato:sm:p:svc}}"]}],
                    "{{workato:sm:t:svc}}": "keys are not expanded",
                    "flag": True,
                },
            },
        )
        conn = get_connection("all_fields")
        assert (conn.host, conn.schema, conn.login, conn.password, conn.port) == (
            "host.example",
            "analytics",
            "svc_user",
            "pw-98765",
            5432,
        )
        assert conn.extra_dejson == {
            "headers": {"Authorization": "Bearer tok-55555", "X-Plain": "unchanged"},
            "tokens": ["tok-55555", 7, None, {"deep": ["pw-98765"]}],
            "{{workato:sm:t:svc}}": "keys are not expanded",
            "flag": True,
        }
        assert backend_configured.calls() == 1

    def test_uri_form_connection(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        make_secret(backend_configured, "prod/db", DB_SECRET)
        from urllib.parse import quote

        token = quote("{{workato:sm:password:prod/db}}", safe="")
        set_conn(monkeypatch, "uri_db", f"postgres://app_user:{token}@db.internal:5432/appdb?sslmode=require")
        conn = get_connection("uri_db")
        assert conn.password == DB_SECRET["password"]
        assert (conn.login, conn.host, conn.port, conn.schema) == ("app_user", "db.internal", 5432, "appdb")
        assert conn.extra_dejson == {"sslmode": "require"}

    def test_cross_region_arn(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        west = make_secret(backend_configured, "shared/key", {"k": "west-value"}, region="us-west-2")["ARN"]
        make_secret(backend_configured, "shared/key", {"k": "east-value"}, region="us-east-1")
        set_conn(
            monkeypatch,
            "xr",
            {"conn_type": "generic", "login": "{{workato:sm:k:shared/key}}", "password": f"{{{{workato:sm:k:{west}}}}}"},
        )
        conn = get_connection("xr")
        assert conn.login == "east-value"
        assert conn.password == "west-value"

    def test_previous_stage_and_version_id_after_rotation(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = make_secret(backend_configured, "rotating", {"password": "old-password"})
        backend_configured.client().put_secret_value(SecretId="rotating", SecretString=json.dumps({"password": "new-password"}))
        set_conn(
            monkeypatch,
            "versions",
            {
                "conn_type": "generic",
                "login": "{{workato:sm:password:rotating:AWSPREVIOUS}}",
                "password": "{{workato:sm:password:rotating}}",
                "extra": {"pinned": f"{{{{workato:sm:password:rotating::{first['VersionId']}}}}}"},
            },
        )
        conn = get_connection("versions")
        assert conn.login == "old-password"
        assert conn.password == "new-password"
        assert conn.extra_dejson["pinned"] == "old-password"

    def test_binary_secret_whole_is_base64_and_key_is_an_error(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        make_secret(backend_configured, "certs/key", b"\x00\x01binary\xff")
        set_conn(monkeypatch, "bin", {"conn_type": "generic", "password": "{{workato:sm::certs/key}}"})
        assert get_connection("bin").password == "AAFiaW5hcnn/"
        set_conn(monkeypatch, "bin_key", {"conn_type": "generic", "password": "{{workato:sm:pem:certs/key}}"})
        with lookup_fails(SecretKeyError, match="binary"):
            get_connection("bin_key")

    # --- values with awkward content ---------------------------------------------
    def test_awkward_secret_cannot_change_extra_structure_or_expand_again(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        nasty = 'a"b\\c\nd", "injected": "yes {{workato:sm::other}}'
        make_secret(backend_configured, "nasty", nasty)
        make_secret(backend_configured, "other", "never-fetched")
        set_conn(
            monkeypatch,
            "nasty_conn",
            {"conn_type": "generic", "password": "{{workato:sm::nasty}}", "extra": {"a": "{{workato:sm::nasty}}", "b": 1}},
        )
        conn = get_connection("nasty_conn")
        assert conn.password == nasty
        assert conn.extra_dejson == {"a": nasty, "b": 1}
        assert backend_configured.calls() == 1  # the token inside the value was never resolved

    def test_reference_hidden_behind_json_escapes_in_extra_is_still_expanded(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        make_secret(backend_configured, "api/token", "tok-escaped-1")
        extra = '{"Authorization": "Bearer \\u007b\\u007b\\tworkato:sm::api/token }}", "path": "C:\\\\x"}'
        monkeypatch.setenv(
            "AIRFLOW_CONN_ESCAPED", json.dumps({"conn_type": "http", "extra": "__EXTRA__"}).replace('"__EXTRA__"', json.dumps(extra))
        )
        conn = get_connection("escaped")
        assert conn.extra_dejson == {"Authorization": "Bearer tok-escaped-1", "path": "C:\\x"}

    # --- no tokens, no AWS --------------------------------------------------------
    def test_connection_without_tokens_passes_untouched(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_conn(
            monkeypatch,
            "plain",
            {"conn_type": "postgres", "host": "h", "login": "u", "password": "p {{ not.a.ref }}", "extra": {"x": "{{ ds }}"}},
        )
        conn = get_connection("plain")
        assert (conn.host, conn.login, conn.password, conn.extra_dejson) == ("h", "u", "p {{ not.a.ref }}", {"x": "{{ ds }}"})
        assert backend_configured.calls() == 0

    def test_missing_connection_is_still_not_found(self, backend_configured: AwsStandIn) -> None:
        from airflow_sm_refs._compat import not_found_errors

        with pytest.raises(not_found_errors()):
            get_connection("does_not_exist")
        assert backend_configured.calls() == 0

    # --- errors -------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("password", "error", "says"),
        [
            ("{{workato:sm:nokey:prod/db}}", SecretKeyError, "has no key 'nokey'"),
            ("{{workato:sm:password:plain/text}}", SecretKeyError, "not a JSON object"),
            ("{{workato:sm:password:no/such/secret}}", SecretNotFoundError, "ResourceNotFoundException"),
            ("x{{workato:sm:password:prod/db", ReferenceSyntaxError, "closing"),
            ("{{workato:sm:password:prod/db:AWSCURRENT:abcdef}}", ReferenceSyntaxError, "not both"),
        ],
    )
    def test_unresolvable_reference_fails_loudly_without_values(
        self,
        backend_configured: AwsStandIn,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        password: str,
        error: type[Exception],
        says: str,
    ) -> None:
        make_secret(backend_configured, "prod/db", DB_SECRET)
        make_secret(backend_configured, "plain/text", "plaintext-secret-value")
        set_conn(monkeypatch, "broken", {"conn_type": "postgres", "login": "{{workato:sm:username:prod/db}}", "password": password})
        with caplog.at_level(logging.DEBUG), lookup_fails(error) as info:
            get_connection("broken")
        exc = info.value
        assert isinstance(exc, SecretReferenceError)
        message = str(exc)
        assert says in message
        assert "connection 'broken'" in message and "field 'password'" in message
        assert exc.conn_id == "broken" and exc.field == "password"
        for value in (*DB_SECRET.values(), "plaintext-secret-value"):
            assert value not in message
            assert value not in caplog.text

    def test_error_is_not_swallowed_by_later_backends(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """The raw token must never be handed out as if it were the password."""
        set_conn(monkeypatch, "gone", {"conn_type": "postgres", "password": "{{workato:sm:password:deleted/secret}}"})
        with lookup_fails(SecretNotFoundError):
            get_connection("gone")

    def test_access_denied(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        make_secret(backend_configured, "prod/db", DB_SECRET)
        set_conn(monkeypatch, "denied", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        backend_configured.fail_next(ACCESS_DENIED)
        with lookup_fails(SecretAccessDeniedError, match="AccessDeniedException"):
            get_connection("denied")

    # --- masking ------------------------------------------------------------------
    def test_spliced_value_and_unusual_extra_key_are_masked(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        make_secret(backend_configured, "masking/api", {"token": "tok-MASK-ME-4242", "note": "harmless-looking-777"})
        set_conn(
            monkeypatch,
            "masked",
            {
                "conn_type": "http",
                "host": "api.example",
                "extra": {"Authorization": "Bearer {{workato:sm:token:masking/api}}", "region_hint": "{{workato:sm:note:masking/api}}"},
            },
        )
        get_connection("masked")
        shown = redacted("header was Bearer tok-MASK-ME-4242")
        assert "tok-MASK-ME-4242" not in shown and "***" in shown
        assert "harmless-looking-777" not in redacted("value harmless-looking-777 here")

    # --- caching ------------------------------------------------------------------
    def test_two_tokens_of_one_secret_cost_one_fetch_and_warm_lookups_none(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        make_secret(backend_configured, "prod/db", DB_SECRET)
        set_conn(
            monkeypatch,
            "db",
            {"conn_type": "postgres", "login": "{{workato:sm:username:prod/db}}", "password": "{{workato:sm:password:prod/db}}"},
        )
        for _ in range(5):
            conn = get_connection("db")
            assert (conn.login, conn.password) == (DB_SECRET["username"], DB_SECRET["password"])
        assert backend_configured.calls() == 1

    def test_retry_setting_from_config_kwargs_takes_effect(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        make_secret(aws, "prod/db", DB_SECRET)
        set_conn(monkeypatch, "retried", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url=aws.endpoint_url,
            config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 1}},
        )
        aws.fail_next(THROTTLING)
        with lookup_fails(SecretTransientError, match="ThrottlingException"):
            get_connection("retried")
        assert aws.calls() == 1  # one attempt, as configured

        from tests.conftest import reset_plugin_state

        reset_plugin_state()
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url=aws.endpoint_url,
            config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 4}},
        )
        aws.reset_counts()
        aws.fail_next(INTERNAL_ERROR, times=2)
        assert get_connection("retried").password == DB_SECRET["password"]
        assert aws.calls() == 3  # two failures retried by botocore, then success

    # --- server processes ---------------------------------------------------------
    @needs_task_sdk
    def test_server_process_steps_aside(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        make_secret(backend_configured, "prod/db", DB_SECRET)
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
        monkeypatch.setattr("sys.argv", ["/opt/venv/bin/airflow", "api-server"])  # the marker counts under a server's own command
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=backend_configured.endpoint_url)
        assert backend.get_connection("db") is None
        on_server = SecretsManagerRefsBackend(
            region_name="us-east-1", endpoint_url=backend_configured.endpoint_url, resolve_on_server=True
        )
        assert on_server.get_connection("db").password == DB_SECRET["password"]

    @needs_task_sdk
    def test_task_process_with_inherited_server_variable_still_resolves(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """LocalExecutor task processes inherit _AIRFLOW_PROCESS_CONTEXT=server from the scheduler."""
        from airflow.sdk.execution_time import task_runner

        make_secret(backend_configured, "prod/db", DB_SECRET)
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", _SilentComms(), raising=False)
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=backend_configured.endpoint_url)
        monkeypatch.setattr(backend, "_later_backends", lambda: [_EnvOnly()])
        assert backend.get_connection("db").password == DB_SECRET["password"]

    def test_never_recurses_into_itself(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "plain"})
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=backend_configured.endpoint_url)
        later = backend._later_backends()
        assert later and not any(isinstance(b, SecretsManagerRefsBackend) for b in later)
        assert backend.get_connection("db").password == "plain"

    def test_init_does_no_aws_work(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        make_secret(aws, "prod/db", DB_SECRET)
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        aws.reset_counts()
        backends = [
            SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=aws.endpoint_url) for _ in range(20)
        ]
        assert sum(aws.calls(action) for action in ("GetSecretValue", "DescribeSecret", "ListSecrets")) == 0
        # The same backends do reach the stand-in once asked: the count above could have moved.
        assert backends[0].get_connection("db").password == DB_SECRET["password"]
        assert aws.calls() == 1

    def test_unknown_kwarg_is_a_clear_error(self) -> None:
        error = SecretsManagerRefsBackend(cache_tll_seconds=5).option_error
        assert error is not None and "unknown option 'cache_tll_seconds' (did you mean 'cache_ttl_seconds'?)" in error


class _SilentComms:
    """A supervisor connection that accepts every message and answers none."""

    def send(self, msg: Any) -> None:
        return None


class _EnvOnly:
    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        from airflow.secrets.environment_variables import EnvironmentVariablesBackend

        return EnvironmentVariablesBackend().get_connection(conn_id)
