"""Connections, Variables and config stored whole in Secrets Manager (the provider's layout): what only we do.

What the provider's backend answers is checked against it in
``test_provider_differential``; this module covers what it does not have:
process roles, references inside stored secrets, falling through on errors,
allowlists, the window a missing id is remembered, options refused.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from standins.aws import ACCESS_DENIED, THROTTLING, AwsStandIn
from tests.conftest import set_conn

pytestmark = pytest.mark.compat

PASSWORD = "stored-pw-5b1f0c9e"
API_TOKEN = "stored-token-77d2aa41"
CONFIG_SECRET = "stored-config-0a9f3c2e"


def _airflow(*args: str) -> list[str]:
    return ["/opt/venv/bin/airflow", *args]


def backend(aws: AwsStandIn, cls: str = "SecretsManagerBackend", **options: Any) -> Any:
    import airflow_sm_refs.backend as module

    instance = getattr(module, cls)(region_name="us-east-1", endpoint_url=aws.endpoint_url, **options)
    from airflow_sm_refs._compat import connection_class_of

    try:
        connection_class_of(instance)
    except RuntimeError:  # 3.2+: Airflow sets the class on the backends it builds
        from airflow.sdk import Connection

        instance._set_connection_class(Connection)
    assert instance.option_error is None, instance.option_error
    return instance


@pytest.fixture
def stored(aws: AwsStandIn) -> AwsStandIn:
    client = aws.client()
    client.create_secret(Name="partner/api", SecretString=json.dumps({"token": API_TOKEN}))
    client.create_secret(
        Name="airflow/connections/with_ref",
        SecretString=json.dumps(
            {
                "conn_type": "generic_api",
                "login": "svc",
                "password": "{{workato:sm:token:partner/api}}",
                "host": "api.example.test",
                "extra": {"headers": {"Authorization": "Bearer {{workato:sm:token:partner/api}}"}},
            }
        ),
    )
    client.create_secret(Name="airflow/connections/plain", SecretString=f"postgres://app:{PASSWORD}@db.test:5432/app")
    client.create_secret(Name="airflow/connections/broken", SecretString=json.dumps({"conn_type": "generic_api", "password": "{{workato:sm:nokey:partner/api}}"}))
    client.create_secret(Name="airflow/variables/greeting", SecretString="hello {{workato:sm:token:partner/api}}")
    client.create_secret(Name="airflow/config/smtp_password", SecretString="{{workato:sm:pw:config/smtp}}")
    client.create_secret(Name="config/smtp", SecretString=json.dumps({"pw": CONFIG_SECRET}))
    aws.reset_counts()
    return aws


class TestReferencesInsideStoredSecrets:
    def test_connection_and_variable_are_expanded(self, stored: AwsStandIn) -> None:
        b = backend(stored)
        conn = b.get_connection("with_ref")
        assert (conn.conn_type, conn.login, conn.password, conn.host) == ("generic_api", "svc", API_TOKEN, "api.example.test")
        assert conn.extra_dejson == {"headers": {"Authorization": f"Bearer {API_TOKEN}"}}
        assert b.get_variable("greeting") == f"hello {API_TOKEN}"
        # the stored connection and the secret it references: one call each, then cached
        assert stored.calls() == 3
        b.get_connection("with_ref")
        b.get_variable("greeting")
        assert stored.calls() == 3

    def test_broken_reference_in_a_stored_connection_fails_closed(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_sm_refs._exceptions import SecretKeyError, SecretLookupAborted

        set_conn(monkeypatch, "broken", {"conn_type": "generic_api", "password": "from-env-never-used"})
        with pytest.raises((SecretKeyError, SecretLookupAborted)) as info:
            backend(stored).get_connection("broken")
        error = getattr(info.value, "error", info.value)
        assert isinstance(error, SecretKeyError)
        assert "'broken'" in str(error) and "password" in str(error) and "nokey" in str(error)

    def test_config_value_is_expanded(self, stored: AwsStandIn) -> None:
        assert backend(stored).get_config("smtp_password") == CONFIG_SECRET
        assert backend(stored).get_config("not_stored") is None

    def test_stored_password_is_masked(self, stored: AwsStandIn) -> None:
        from airflow_sm_refs._compat import redact

        backend(stored).get_connection("plain")
        assert PASSWORD not in str(redact(f"connecting with {PASSWORD}"))


class TestWhatIsLookedUp:
    def test_refs_backend_makes_no_stored_lookup_by_default(self, stored: AwsStandIn) -> None:
        b = backend(stored, "SecretsManagerRefsBackend")
        assert b.get_connection("aws_default") is None
        assert b.get_config("smtp_password") is None
        assert stored.calls() == 0

    def test_refs_backend_with_a_prefix_reads_the_layout(self, stored: AwsStandIn) -> None:
        b = backend(stored, "SecretsManagerRefsBackend", connections_prefix="airflow/connections")
        assert b.get_connection("with_ref").password == API_TOKEN
        assert b.get_variable("greeting") is None  # variables_prefix stays off

    def test_missing_id_is_remembered_as_long_as_a_found_one(self, stored: AwsStandIn) -> None:
        b = backend(stored)
        for _ in range(5):
            assert b.get_connection("aws_default") is None
        assert stored.calls() == 1
        zero = backend(stored, missing_cache_seconds=0)
        zero.get_connection("aws_default_2")
        zero.get_connection("aws_default_2")
        assert stored.calls() == 3

    def test_allowlists_keep_lookups_from_aws(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        set_conn(monkeypatch, "plain", {"conn_type": "generic_api", "password": "env-password"})
        not_this_conn = backend(stored, allowed_conn_ids=["other_*"])
        assert not_this_conn.get_connection("plain").password == "env-password"
        not_this_secret = backend(stored, allowed_secrets=["team/*"])
        assert not_this_secret.get_connection("plain").password == "env-password"
        assert stored.calls() == 0

    def test_allowed_secrets_that_hide_stored_ids_say_so_once(
        self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        import airflow_sm_refs.backend as module

        monkeypatch.setattr(module, "_OPTION_ERRORS_LOGGED", set())
        b = backend(stored, allowed_secrets=["partner/*"])
        with caplog.at_level(logging.WARNING, logger="airflow_sm_refs"):
            assert b.get_connection("aws_default") is None
            assert b.get_variable("greeting") is None
        warnings = [r.getMessage() for r in caplog.records if "allowed_secrets" in r.getMessage()]
        assert len(warnings) == 1 and "'airflow/connections/*'" in warnings[0]
        assert stored.calls() == 0

    def test_a_secret_id_aws_would_refuse_is_never_asked(self, stored: AwsStandIn) -> None:
        assert backend(stored).get_connection("has space") is None
        assert backend(stored, sep=":").get_connection("plain") is None
        assert stored.calls() == 0


class TestFallingThrough:
    """Where the provider raises, Airflow asks the next backend: so do we, saying why, with no value."""

    def test_denied_stored_secret_falls_through_with_a_warning(
        self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        set_conn(monkeypatch, "plain", {"conn_type": "generic_api", "password": "env-password"})
        with stored.failing(ACCESS_DENIED), caplog.at_level(logging.WARNING, logger="airflow_sm_refs"):
            assert backend(stored).get_connection("plain").password == "env-password"
        assert any("airflow/connections/plain" in r.getMessage() and "next backend" in r.getMessage() for r in caplog.records)

    def test_a_denial_is_remembered_as_briefly_as_for_references(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        set_conn(monkeypatch, "plain", {"conn_type": "generic_api", "password": "env-password"})
        b = backend(stored, negative_cache_seconds=0)
        with stored.failing(ACCESS_DENIED):
            assert b.get_connection("plain").password == "env-password"
        # access is back: the stored connection at once, not the next backend's for missing_cache_seconds
        assert b.get_connection("plain").password == PASSWORD

    def test_a_mistyped_arn_elsewhere_never_hides_a_stored_connection(
        self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow_sm_refs._exceptions import SecretNotFoundError, SecretLookupAborted

        set_conn(monkeypatch, "plain", {"conn_type": "generic_api", "password": "env-password"})
        b = backend(stored)
        assert b.get_connection("plain").password == PASSWORD
        arn = b.resolver.payload(__import__("airflow_sm_refs.reference", fromlist=["parse_reference"]).parse_reference(
            "{{workato:sm::airflow/connections/plain}}"))[0].arn
        wrong = arn[:-6] + "ZZZZZZ"
        set_conn(monkeypatch, "typo", {"conn_type": "generic_api", "password": "{{workato:sm::" + wrong + "}}"})
        with pytest.raises((SecretNotFoundError, SecretLookupAborted)):
            b.get_connection("typo")
        assert b.get_connection("plain").password == PASSWORD

    def test_throttled_without_a_value_falls_through(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        set_conn(monkeypatch, "plain", {"conn_type": "generic_api", "password": "env-password"})
        with stored.failing(THROTTLING):
            assert backend(stored, config_kwargs={"retries": {"max_attempts": 1}}).get_connection("plain").password == "env-password"

    def test_json_that_does_not_parse_falls_through_naming_the_secret_only(
        self, stored: AwsStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        stored.client().create_secret(Name="airflow/connections/bad_json", SecretString='{"password": "pw-9f8e7d6c", ')
        with caplog.at_level(logging.WARNING, logger="airflow_sm_refs"):
            assert backend(stored).get_connection("bad_json") is None
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "airflow/connections/bad_json" in text and "pw-9f8e7d6c" not in text


class TestProcessRoles:
    def test_server_gets_stored_connections_but_never_a_resolved_reference(
        self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "argv", _airflow("scheduler"))
        from airflow_sm_refs._compat import ProcessRole, process_role

        assert process_role() is ProcessRole.SERVER
        b = backend(stored)
        assert b.get_connection("plain").password == PASSWORD  # what the provider gives a server
        assert b.get_connection("with_ref").password == "{{workato:sm:token:partner/api}}"
        assert b.get_connection("aws_default") is None
        assert stored.calls("GetSecretValue") == 3  # the two stored secrets and the missing id; never partner/api

    def test_a_server_keeps_no_stored_secret_in_the_worker_cache(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "argv", _airflow("api-server"))
        b = backend(stored)
        assert b.get_connection("plain").password == PASSWORD
        assert b.resolver.shared is not None and b.resolver.shared.peek(b.resolver.cache_key(
            __import__("airflow_sm_refs.reference", fromlist=["parse_reference"]).parse_reference(
                "{{workato:sm::airflow/connections/plain}}"))) is None

    def test_a_bad_option_leaves_the_hook_a_clear_error(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_sm_refs.backend import SecretsManagerBackend, raw_from_chain

        set_conn(monkeypatch, "plain", {"conn_type": "generic_api", "password": "env-password"})
        broken = SecretsManagerBackend(sep=1)
        assert raw_from_chain("get_connection", "plain", backends=None if False else [broken][:0] or None) is not None
        assert broken.stored.enabled == {"connection": False, "variable": False, "config": False}

    def test_cli_never_prints_a_resolved_reference(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "argv", _airflow("connections", "get", "with_ref"))
        conn = backend(stored).get_connection("with_ref")
        assert conn.password == "{{workato:sm:token:partner/api}}"

    def test_parse_time_refuses_a_stored_reference(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_sm_refs._compat import PARSE_ERRORS_MAY_ABORT
        from airflow_sm_refs._exceptions import ReferenceNotAllowedError, SecretLookupAborted

        monkeypatch.setattr(sys, "argv", _airflow("dags", "reserialize"))
        b = backend(stored)
        assert b.get_connection("plain").password == PASSWORD
        with pytest.raises((ReferenceNotAllowedError, SecretLookupAborted), match="with_ref"):
            b.get_connection("with_ref")
        assert PARSE_ERRORS_MAY_ABORT in (True, False)

    def test_airflow_config_prints_a_config_reference_as_stored(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "argv", _airflow("config", "get-value", "smtp", "smtp_password"))
        assert backend(stored).get_config("smtp_password") == "{{workato:sm:pw:config/smtp}}"
        monkeypatch.setattr(sys, "argv", _airflow("db", "migrate"))  # needs the setting itself
        assert backend(stored).get_config("smtp_password") == CONFIG_SECRET

    def test_trigger_event_loop_gets_the_expanded_connection(self, stored: AwsStandIn) -> None:
        import asyncio

        conn = asyncio.run(backend(stored).aget_connection("with_ref"))
        assert conn.password == API_TOKEN


class TestOptions:
    @pytest.mark.parametrize(
        ("options", "named"),
        [
            ({"sep": 1}, "sep"),
            ({"connections_lookup_pattern": "("}, "connections_lookup_pattern"),
            ({"extra_conn_words": {"usr": ["u"]}}, "extra_conn_words"),
            ({"extra_conn_words": {"user": "u"}}, "extra_conn_words"),
            ({"variables_prefix": 3}, "variables_prefix"),
            ({"missing_cache_seconds": -1}, "missing_cache_seconds"),
            ({"missing_cache_seconds": 3600}, "must not exceed cache_ttl_seconds"),
            ({"conections_prefix": "x"}, "did you mean 'connections_prefix'"),
        ],
    )
    def test_a_bad_option_is_named(self, options: dict[str, Any], named: str) -> None:
        from airflow_sm_refs.backend import SecretsManagerBackend

        error = SecretsManagerBackend(**options).option_error
        assert error is not None and named in error

    def test_the_providers_deprecated_and_client_options_are_accepted(self) -> None:
        from airflow_sm_refs.backend import SecretsManagerBackend

        b = SecretsManagerBackend(full_url_mode=False, are_secret_values_urlencoded=False, api_version="2017-10-17", use_ssl=True)
        assert b.option_error is None

    def test_a_bad_option_never_breaks_config_reads(self, stored: AwsStandIn) -> None:
        from airflow_sm_refs.backend import SecretsManagerBackend

        b = SecretsManagerBackend(sep=1, region_name="us-east-1", endpoint_url=stored.endpoint_url)
        assert b.get_config("smtp_password") is None
        assert stored.calls() == 0


class TestCommands:
    """``check`` and ``iam-policy`` see what the drop-in reads: the stored layout first, its prefixes granted."""

    def _run(self, aws: AwsStandIn, *args: str) -> Any:
        import os
        import subprocess

        env = dict(
            os.environ,
            AIRFLOW__SECRETS__BACKEND="airflow_sm_refs.backend.SecretsManagerBackend",
            AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url}),
        )
        return subprocess.run(
            [sys.executable, "-m", "airflow_sm_refs.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )

    def test_check_resolves_a_stored_connection_and_names_where_it_looked(self, stored: AwsStandIn) -> None:
        ok = self._run(stored, "check", "with_ref", "--variable", "greeting")
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert "connection 'with_ref': 2 references" in ok.stdout and "Variable 'greeting': 1 reference" in ok.stdout
        missing = self._run(stored, "check", "aws_default")
        assert missing.returncode == 1
        assert "looked in Secrets Manager (airflow/connections/*, airflow/variables/*)" in missing.stdout
        for run in (ok, missing):
            assert not stored.leaked_in(run.stdout + run.stderr)

    def test_check_says_why_a_stored_secret_gave_nothing(self, stored: AwsStandIn) -> None:
        stored.client().create_secret(Name="airflow/connections/bad_json", SecretString='{"password": "pw-1c2d3e4f", ')
        run = self._run(stored, "check", "bad_json")
        assert run.returncode == 1
        assert "airflow/connections/bad_json could not be read as the Amazon provider reads it (JSONDecodeError)" in run.stdout
        assert "pw-1c2d3e4f" not in run.stdout + run.stderr

    def test_iam_policy_grants_the_prefixes(self, stored: AwsStandIn) -> None:
        run = self._run(stored, "iam-policy", "with_ref", "--account-id", "123456789012")
        assert run.returncode == 0, run.stderr[-2000:]
        resources = json.loads(run.stdout)["Statement"][0]["Resource"]
        prefix = "arn:aws:secretsmanager:us-east-1:123456789012:secret:"
        assert {prefix + "airflow/connections/*", prefix + "airflow/variables/*", prefix + "airflow/config/*"} <= set(resources)
        assert prefix + "partner/api-??????" in resources


class TestHook:
    def test_hook_finds_what_the_configured_drop_in_reads_whole(self, stored: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_sm_refs.hook import SecretsManagerRefsHook
        from tests.conftest import reset_airflow_secrets_cache

        monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "airflow_sm_refs.backend.SecretsManagerBackend")
        monkeypatch.setenv(
            "AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps({"region_name": "us-east-1", "endpoint_url": stored.endpoint_url})
        )
        reset_airflow_secrets_cache()
        aws_conn = {"region_name": "us-east-1", "endpoint_url": stored.endpoint_url}
        set_conn(monkeypatch, "aws_refs", {"conn_type": "aws", "login": "testing", "password": "testing", "extra": aws_conn})
        hook = SecretsManagerRefsHook(aws_conn_id="aws_refs")
        assert hook.get_resolved_connection("with_ref").password == API_TOKEN
        assert hook.get_resolved_variable("greeting") == f"hello {API_TOKEN}"
