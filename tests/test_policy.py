"""Access control: which secrets references may name, and which connections may hold them."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_sm_refs import ReferenceNotAllowedError, SecretsManagerRefsBackend
from airflow_sm_refs.policy import AccessPolicy
from airflow_sm_refs.reference import parse_reference
from standins.aws import AwsStandIn
from tests.conftest import configure_backend, get_connection, lookup_fails, set_conn

pytestmark = pytest.mark.compat

OTHER_ACCOUNT_ARN = "arn:aws:secretsmanager:us-east-1:999999999999:secret:prod/db"
OWN_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db"


class TestAccessPolicy:
    @pytest.mark.parametrize(
        ("patterns", "secret_id", "allowed"),
        [
            (["prod/*"], "prod/db", True),
            (["prod/*"], "prod/team/db", True),
            (["prod/*"], "staging/db", False),
            (["prod/*"], OTHER_ACCOUNT_ARN, False),  # name patterns never admit ARNs
            (["prod/*"], OWN_ARN, False),
            (["arn:aws:secretsmanager:*:123456789012:secret:prod/*"], OWN_ARN, True),
            (["arn:aws:secretsmanager:*:123456789012:secret:prod/*"], OWN_ARN + "-AbCdEf", True),
            (["arn:aws:secretsmanager:*:123456789012:secret:prod/*"], OTHER_ACCOUNT_ARN, False),
            (["arn:aws:secretsmanager:*:123456789012:secret:prod/*"], "prod/db", False),  # ARN patterns never admit names
            ([], "prod/db", False),
            (None, OTHER_ACCOUNT_ARN, True),
        ],
    )
    def test_secret_patterns(self, patterns: list[str] | None, secret_id: str, allowed: bool) -> None:
        ref = parse_reference(f"{{{{workato:sm:password:{secret_id}}}}}")
        assert AccessPolicy.from_options(allowed_secrets=patterns).secret_allowed(ref) is allowed

    def test_bad_option_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match="allowed_secrets"):
            AccessPolicy.from_options(allowed_secrets=["prod/*", 3])  # type: ignore[list-item]


class TestAllowlistInTheBackend:
    def test_reference_outside_the_list_fails_without_an_aws_call(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=json.dumps({"password": "prod-pass-1"}))
        aws.client().create_secret(Name="finance/db", SecretString=json.dumps({"password": "finance-pass-2"}))
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, allowed_secrets=["prod/*"])
        set_conn(monkeypatch, "ok", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        set_conn(monkeypatch, "exfil", {"conn_type": "http", "host": "attacker.example", "password": "{{workato:sm:password:finance/db}}"})
        assert get_connection("ok").password == "prod-pass-1"
        aws.reset_counts()
        with lookup_fails(ReferenceNotAllowedError) as info:
            get_connection("exfil")
        message = str(info.value)
        assert "not allowed" in message and "finance/db" in message and "connection 'exfil'" in message
        assert aws.calls() == 0
        assert "connection 'exfil' field 'password': secret finance/db key 'password' (AWSCURRENT): failed: not allowed" in caplog.text

    def test_connection_scoping(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=json.dumps({"password": "prod-pass-1"}))
        configure_backend(
            monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, allowed_conn_ids=["warehouse_*"]
        )
        set_conn(monkeypatch, "warehouse_main", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        set_conn(monkeypatch, "scratch", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        set_conn(monkeypatch, "plain", {"conn_type": "postgres", "password": "just-a-password"})
        assert get_connection("warehouse_main").password == "prod-pass-1"
        with lookup_fails(ReferenceNotAllowedError, match="allowed_conn_ids") as info:
            get_connection("scratch")
        assert info.value.conn_id == "scratch"
        assert get_connection("plain").password == "just-a-password"  # no reference, nothing to refuse

    def test_variables_obey_the_secret_allowlist(self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        aws.client().create_secret(Name="finance/key", SecretString="finance-key-3")
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=aws.endpoint_url, allowed_secrets=["prod/*"])
        monkeypatch.setenv("AIRFLOW_VAR_API_KEY", "key={{workato:sm::finance/key}}")
        with lookup_fails(ReferenceNotAllowedError, match="finance/key"):
            backend.get_variable("api_key")
        assert aws.calls() == 0


class TestAuditLine:
    def test_one_line_per_fetch_with_source_and_outcome(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        backend_configured.client().create_secret(Name="prod/db", SecretString=json.dumps({"password": "audit-pass-4"}))
        set_conn(monkeypatch, "audited", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db:AWSCURRENT}}"})
        with caplog.at_level(logging.INFO, logger="airflow_sm_refs"):
            get_connection("audited")
            get_connection("audited")
        lines = [r.getMessage() for r in caplog.records if r.name == "airflow_sm_refs" and r.levelno == logging.INFO]
        assert lines[0].startswith("connection 'audited' field 'password': secret prod/db key 'password' (AWSCURRENT) from aws in ")
        assert lines[0].endswith(": ok")
        assert "from process cache" in lines[1]
        assert all("audit-pass-4" not in line for line in lines)
