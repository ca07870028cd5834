"""Variables: references in values are expanded by the backend, by the same rules as connections."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Variable

from airflow_sm_refs import ReferenceSyntaxError, SecretKeyError, SecretNotFoundError
from standins.aws import AwsStandIn

TOKEN_VALUE = "var-token-5eed"


@pytest.fixture
def partner(backend_configured: AwsStandIn) -> AwsStandIn:
    backend_configured.client().create_secret(Name="api/partner", SecretString=json.dumps({"token": TOKEN_VALUE}))
    return backend_configured


class TestVariables:
    def test_spliced_token(self, partner: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_VAR_PARTNER_HEADER", "Bearer {{workato:sm:token:api/partner}} (v2)")

        assert Variable.get("partner_header") == f"Bearer {TOKEN_VALUE} (v2)"
        assert partner.calls() == 1

    def test_spliced_value_is_masked(self, partner: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.sdk.log import redact

        # the key name is not one Airflow treats as sensitive, and the value is spliced
        monkeypatch.setenv("AIRFLOW_VAR_GREETING", "hello {{workato:sm:token:api/partner}}")
        Variable.get("greeting")

        assert redact(f"curl -H 'X: {TOKEN_VALUE}'") == "curl -H 'X: ***'"

    def test_template_var_value(self, partner: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        import jinja2
        from airflow.sdk.execution_time.context import VariableAccessor

        monkeypatch.setenv("AIRFLOW_VAR_PARTNER_HEADER", "Bearer {{workato:sm:token:api/partner}}")
        template = jinja2.Environment().from_string("{{ var.value.partner_header }}")

        assert template.render(var={"value": VariableAccessor(deserialize_json=False)}) == f"Bearer {TOKEN_VALUE}"

    def test_json_variable(self, partner: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        value = {"url": "https://x", "token": "{{workato:sm:token:api/partner}}"}
        monkeypatch.setenv("AIRFLOW_VAR_PARTNER", json.dumps(value))

        assert Variable.get("partner", deserialize_json=True) == {"url": "https://x", "token": TOKEN_VALUE}

    def test_variable_without_references_is_returned_as_found(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW_VAR_PLAIN", "{{ ds }} and {{ not a reference }}")

        assert Variable.get("plain") == "{{ ds }} and {{ not a reference }}"
        assert backend_configured.calls() == 0

    def test_missing_variable_is_still_missing(self, backend_configured: AwsStandIn) -> None:
        assert Variable.get("no_such_variable_anywhere", default="fallback") == "fallback"

    def test_missing_secret_fails_instead_of_handing_out_the_token(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW_VAR_BROKEN", "{{workato:sm::gone/away}}")

        with pytest.raises(SecretNotFoundError) as excinfo:
            Variable.get("broken")
        assert "gone/away" in str(excinfo.value) and "broken" in str(excinfo.value)

    def test_missing_key_names_variable_and_key(self, partner: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_VAR_TYPO", "{{workato:sm:tokn:api/partner}}")

        with pytest.raises(SecretKeyError) as excinfo:
            Variable.get("typo")
        message = str(excinfo.value)
        assert "'typo'" in message and "'tokn'" in message
        assert TOKEN_VALUE not in message

    def test_malformed_reference(self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_VAR_MALFORMED", "{{workato:sm:token}}")

        with pytest.raises(ReferenceSyntaxError):
            Variable.get("malformed")

    def test_resolved_value_is_not_scanned_again(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        client = backend_configured.client()
        client.create_secret(Name="inner", SecretString="inner-value-xyz")
        client.create_secret(Name="outer", SecretString="{{workato:sm::inner}}")
        monkeypatch.setenv("AIRFLOW_VAR_NESTED", "{{workato:sm::outer}}")

        assert Variable.get("nested") == "{{workato:sm::inner}}"
        assert backend_configured.calls() == 1

    @pytest.mark.parametrize(
        "tricky",
        [
            pytest.param('", "admin": "yes', id="would-add-a-key"),
            pytest.param('p"w\\d', id="would-break-the-json-and-hand-out-the-token"),
        ],
    )
    def test_json_variable_holding_a_secret_with_quotes_keeps_its_structure(
        self, backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tricky: str
    ) -> None:
        # As for a connection's extra: a secret holding quotes or backslashes
        # changes nothing but its own value.
        backend_configured.client().create_secret(Name="tricky", SecretString=json.dumps({"pw": tricky}))
        monkeypatch.setenv("AIRFLOW_VAR_CFG", json.dumps({"password": "{{workato:sm:pw:tricky}}", "n": 1}))

        assert Variable.get("cfg", deserialize_json=True) == {"password": tricky, "n": 1}
