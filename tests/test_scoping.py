"""Who may expand what: the hook's own allowlist and identity, and ``allowed_variables``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_sm_refs import ReferenceNotAllowedError, SecretsManagerRefsBackend
from airflow_sm_refs.hook import SecretsManagerRefsHook
from standins.aws import AwsStandIn
from tests.conftest import configure_backend, lookup_fails, set_conn

pytestmark = pytest.mark.compat

DB_PASSWORD = "scoping-db-pass-9a7e"
PARTNER_TOKEN = "scoping-partner-token-41b2"


@pytest.fixture
def secrets(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> AwsStandIn:
    client = aws.client()
    client.create_secret(Name="prod/db", SecretString=json.dumps({"password": DB_PASSWORD}))
    client.create_secret(Name="api/partner", SecretString=json.dumps({"token": PARTNER_TOKEN}))
    # the hook's own AWS connection: the moto stand-in
    set_conn(
        monkeypatch,
        "aws_refs",
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url},
        },
    )
    set_conn(monkeypatch, "warehouse", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
    set_conn(monkeypatch, "partner", {"conn_type": "http", "password": "{{workato:sm:token:api/partner}}"})
    return aws


def _variable_get(key: str) -> Any:
    """``Variable.get`` as a task calls it, on this Airflow line."""
    try:
        from airflow.sdk import Variable
    except ImportError:
        from airflow.models import Variable  # type: ignore[no-redef]
    return Variable.get(key)


class TestHookAppliesItsOwnPolicy:
    def test_hook_allowlist_applies_when_the_backend_is_configured(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Regression: the hook returned what the (broader) backend had resolved."""
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=secrets.endpoint_url)
        hook = SecretsManagerRefsHook(aws_conn_id="aws_refs", allowed_secrets=["prod/*"])

        with pytest.raises(ReferenceNotAllowedError, match="api/partner") as info:
            hook.get_resolved_connection("partner")
        assert info.value.conn_id == "partner"
        assert hook.get_resolved_connection("warehouse").password == DB_PASSWORD

    def test_hook_uses_its_own_aws_identity_not_the_backends(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # the configured backend cannot reach AWS at all; the hook's AWS connection can
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url="http://127.0.0.1:9",
            config_kwargs={"retries": {"total_max_attempts": 1}, "connect_timeout": 1},
        )
        conn = SecretsManagerRefsHook(aws_conn_id="aws_refs").get_resolved_connection("warehouse")
        assert conn.password == DB_PASSWORD
        assert secrets.calls() == 1

    def test_missing_connection_is_not_found(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow_sm_refs._compat import not_found_errors

        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=secrets.endpoint_url)
        with pytest.raises(not_found_errors()):
            SecretsManagerRefsHook(aws_conn_id="aws_refs").get_resolved_connection("no_such_connection")


class TestAllowedVariables:
    def test_variables_outside_the_list_are_refused_before_any_aws_call(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        configure_backend(
            monkeypatch,
            region_name="us-east-1",
            endpoint_url=secrets.endpoint_url,
            allowed_variables="team_a_*",  # as a per-key override would give it
        )
        monkeypatch.setenv("AIRFLOW_VAR_TEAM_A_TOKEN", "Bearer {{workato:sm:token:api/partner}}")
        monkeypatch.setenv("AIRFLOW_VAR_SCRATCH", "{{workato:sm:token:api/partner}}")
        monkeypatch.setenv("AIRFLOW_VAR_SCRATCH_PLAIN", "no references here")

        with lookup_fails(ReferenceNotAllowedError, match="allowed_variables") as info:
            _variable_get("scratch")
        assert "variable 'scratch'" in str(info.value)
        assert secrets.calls() == 0
        assert _variable_get("scratch_plain") == "no references here"  # nothing to refuse
        assert _variable_get("team_a_token") == f"Bearer {PARTNER_TOKEN}"

    def test_connections_are_not_bounded_by_allowed_variables(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        backend = SecretsManagerRefsBackend(
            region_name="us-east-1", endpoint_url=secrets.endpoint_url, allowed_variables=["team_a_*"]
        )
        assert backend.get_connection("warehouse").password == DB_PASSWORD

    def test_hook_option(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_VAR_TEAM_A_TOKEN", "{{workato:sm:token:api/partner}}")
        monkeypatch.setenv("AIRFLOW_VAR_SCRATCH", "{{workato:sm:token:api/partner}}")
        hook = SecretsManagerRefsHook(aws_conn_id="aws_refs", allowed_variables='["team_a_*"]')
        assert hook.get_resolved_variable("team_a_token") == PARTNER_TOKEN
        with pytest.raises(ReferenceNotAllowedError, match="variable 'scratch'"):
            hook.get_resolved_variable("scratch")
        assert hook.get_resolved_variable("no_such_variable") is None
