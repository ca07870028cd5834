"""What the README promises and no other test held it to.

Each test drives the plugin as a user would (``[secrets] backend`` and a
lookup through Airflow, or the metastore), against the moto stand-in, which
counts calls, records which credentials signed them and injects faults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import (
    ReferenceSyntaxError,
    SecretAccessDeniedError,
    SecretFetchError,
    SecretNotFoundError,
    SecretTransientError,
)
from standins.aws import (
    DECRYPTION_FAILURE,
    DROPPED_CONNECTION,
    FAKE_ACCESS_KEY_ID,
    KMS_ACCESS_DENIED,
    AwsStandIn,
    InjectedFault,
    hanging,
)
from tests.conftest import FakeClock, configure_backend, get_connection, lookup_fails, set_conn

pytestmark = pytest.mark.compat

DB = {"username": "app_user", "password": "Promise-pw-4821"}
REF = "{{workato:sm:password:prod/db}}"
# One attempt, short timeouts: a fault is seen at once, not after botocore's retries.
FAST_FAIL = {"retries": {"total_max_attempts": 1}, "connect_timeout": 1, "read_timeout": 1}


def secret(aws: AwsStandIn, name: str = "prod/db", document: Any = DB) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    aws.client().create_secret(Name=name, SecretString=text)


def db_conn(monkeypatch: pytest.MonkeyPatch, password: str = REF, **fields: Any) -> None:
    set_conn(monkeypatch, "db", {"conn_type": "postgres", "host": "db.internal", "password": password, **fields})


def with_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The in-process tier on a fake clock (the per-worker tier is off in these tests)."""
    from airflow_sm_refs.resolver import PROCESS_CACHE

    clock = FakeClock()
    monkeypatch.setattr(PROCESS_CACHE, "timer", clock)
    return clock


# --- AWS identity options -------------------------------------------------------
class TestAwsIdentity:
    def test_role_arn_is_assumed_and_its_credentials_sign_the_call(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        secret(aws)
        db_conn(monkeypatch)
        role = "arn:aws:iam::123456789012:role/airflow-secrets-reader"
        # STS answers at the stand-in too (moto), as a VPC endpoint would.
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws.endpoint_url)
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url=aws.endpoint_url,
            shared_cache=False,
            role_arn=role,
            assume_role_method="assume_role",
            assume_role_kwargs={"RoleSessionName": "airflow-sm-refs-test"},
        )
        assert get_connection("db").password == DB["password"]
        assert aws.calls("AssumeRole") >= 1
        keys = aws.access_keys("GetSecretValue")
        assert keys and FAKE_ACCESS_KEY_ID not in keys, "the secret was read with the base credentials, not the role's"

    def test_profile_name_selects_the_profiles_credentials(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        secret(aws)
        db_conn(monkeypatch)
        credentials = tmp_path / "credentials"
        credentials.write_text(
            "[team-a]\naws_access_key_id = AKIATEAMAPROFILE0001\naws_secret_access_key = team-a-secret\n"
        )
        config = tmp_path / "config"
        config.write_text("[profile team-a]\nregion = us-east-1\n")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        configure_backend(
            monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False, profile_name="team-a"
        )
        assert get_connection("db").password == DB["password"]
        assert aws.access_keys("GetSecretValue") == {"AKIATEAMAPROFILE0001"}

    def test_an_unknown_profile_fails_closed(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        secret(aws)
        db_conn(monkeypatch)
        (tmp_path / "config").write_text("[profile other]\nregion = us-east-1\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        configure_backend(
            monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False, profile_name="nope"
        )
        # Fails closed (a SecretFetchError naming the cause), before any AWS call.
        with lookup_fails(SecretFetchError, match="ProfileNotFound"):
            get_connection("db")
        assert aws.calls() == 0


# --- what AWS answers -------------------------------------------------------------
class TestAwsAnswers:
    def test_secret_scheduled_for_deletion_is_not_found(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        secret(backend_configured)
        db_conn(monkeypatch)
        backend_configured.client().delete_secret(SecretId="prod/db", RecoveryWindowInDays=7)
        with lookup_fails(SecretNotFoundError) as raised:
            get_connection("db")
        assert "prod/db" in str(raised.value)
        assert backend_configured.calls() == 1

    @pytest.mark.parametrize("fault", [DECRYPTION_FAILURE, KMS_ACCESS_DENIED], ids=lambda f: f.code)
    def test_kms_decrypt_failure_is_access_denied(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, fault: InjectedFault
    ) -> None:
        secret(aws)
        db_conn(monkeypatch)
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False)
        with aws.failing(fault), lookup_fails(SecretAccessDeniedError) as raised:
            get_connection("db")
        assert fault.code in str(raised.value)

    def test_kms_failure_after_expiry_never_serves_the_old_value(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        secret(aws)
        db_conn(monkeypatch)
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url=aws.endpoint_url,
            shared_cache=False,
            cache_ttl_seconds=60,
            stale_if_error_seconds=600,
        )
        clock = with_clock(monkeypatch)
        assert get_connection("db").password == DB["password"]
        clock.advance(61)
        with aws.failing(DECRYPTION_FAILURE), lookup_fails(SecretAccessDeniedError):
            get_connection("db")

    @pytest.mark.parametrize("fault", [DROPPED_CONNECTION, hanging(3)], ids=["dropped connection", "read timeout"])
    def test_timeouts_and_dropped_connections_are_transient(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, fault: InjectedFault
    ) -> None:
        secret(aws)
        db_conn(monkeypatch)
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url=aws.endpoint_url,
            shared_cache=False,
            config_kwargs=FAST_FAIL,
            cache_ttl_seconds=60,
            stale_if_error_seconds=300,
        )
        clock = with_clock(monkeypatch)
        # No value yet: the failure is the task's, as a SecretTransientError.
        with aws.failing(fault), lookup_fails(SecretTransientError) as raised:
            get_connection("db")
        assert "prod/db" in str(raised.value)
        # With a value fetched before: served stale within stale_if_error_seconds ...
        assert get_connection("db").password == DB["password"]
        clock.advance(61)
        before = aws.calls()
        with aws.failing(fault):
            assert get_connection("db").password == DB["password"]
        assert aws.calls() > before  # AWS was asked, and failed
        # ... and not after it.
        clock.advance(301)
        with aws.failing(fault), lookup_fails(SecretTransientError):
            get_connection("db")


# --- values -----------------------------------------------------------------------
class TestValues:
    def test_non_string_json_values_are_given_as_json_text(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        document = {"port": 5432, "ratio": 1.5, "enabled": True, "nothing": None, "nested": {"a": [1, "x"]}}
        secret(backend_configured, "prod/typed", document)
        extra = {key: f"{{{{workato:sm:{key}:prod/typed}}}}" for key in document}
        set_conn(monkeypatch, "typed", {"conn_type": "generic", "extra": json.dumps(extra)})
        got = get_connection("typed").extra_dejson
        assert got == {key: json.dumps(value) for key, value in document.items()}
        assert got["port"] == "5432" and got["enabled"] == "true"
        assert backend_configured.calls() == 1

    def test_reference_of_exactly_2048_characters_is_accepted(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        prefix, suffix = "{{workato:sm:", ":prod/long}}"
        key = "k" * (2048 - len(prefix) - len(suffix))
        token = prefix + key + suffix
        assert len(token) == 2048
        secret(backend_configured, "prod/long", {key: "long-key-value-77", key + "k": "other"})
        db_conn(monkeypatch, password=token)
        assert get_connection("db").password == "long-key-value-77"
        # One character more is refused, before any AWS call.
        backend_configured.reset_counts()
        db_conn(monkeypatch, password=prefix + key + "k" + suffix)
        with lookup_fails(ReferenceSyntaxError) as raised:
            get_connection("db")
        assert len(str(raised.value)) < 500  # names the start of the token, not all of it
        assert backend_configured.calls() == 0

    def test_a_value_of_exactly_1000_references_is_accepted(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        secret(backend_configured, "prod/bits", {"b": "xy"})
        db_conn(monkeypatch, password="{{workato:sm:b:prod/bits}}" * 1000)
        assert get_connection("db").password == "xy" * 1000
        assert backend_configured.calls() == 1
        backend_configured.reset_counts()
        db_conn(monkeypatch, password="{{workato:sm:b:prod/bits}}" * 1001)
        with lookup_fails(ReferenceSyntaxError, match="more than 1000 references"):
            get_connection("db")
        assert backend_configured.calls() == 0


class TestVerify:
    """``verify``: ``false`` or a CA bundle path, against an HTTPS endpoint with a self-signed certificate."""

    @pytest.fixture
    def https(self, aws: AwsStandIn, tmp_path: Path) -> Any:
        ca = aws.start_tls(str(tmp_path))
        yield aws.tls_endpoint_url, ca
        aws.stop_tls()

    @pytest.mark.parametrize("verify", ["ca bundle", False], ids=["CA bundle path", "false"])
    def test_verify_lets_the_self_signed_endpoint_in(
        self, aws: AwsStandIn, https: Any, monkeypatch: pytest.MonkeyPatch, verify: Any
    ) -> None:
        url, ca = https
        secret(aws)
        db_conn(monkeypatch)
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url=url,
            shared_cache=False,
            verify=ca if verify == "ca bundle" else verify,
        )
        assert get_connection("db").password == DB["password"]
        assert aws.calls() == 1

    def test_without_verify_the_self_signed_endpoint_is_refused(
        self, aws: AwsStandIn, https: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        url, _ = https
        secret(aws)
        db_conn(monkeypatch)
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        configure_backend(
            monkeypatch, region_name="us-east-1", endpoint_url=url, shared_cache=False, config_kwargs=FAST_FAIL
        )
        with lookup_fails(SecretTransientError, match="SSL"):
            get_connection("db")
        assert aws.calls() == 0  # the TLS handshake failed: no request got through
