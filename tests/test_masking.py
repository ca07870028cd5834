"""Masking: every form a resolved value takes in a log, and registration that survives Airflow's masker reset."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from airflow_sm_refs import SecretsManagerRefsBackend
from airflow_sm_refs._compat import min_masked_length, redact, reset_secrets_masker
from airflow_sm_refs.expand import masked_forms
from standins.aws import AwsStandIn
from tests.conftest import get_connection, set_conn

pytestmark = pytest.mark.compat

# quotes, a backslash, non-ASCII and URL-special characters: each changes when re-serialised
AWKWARD = 'Pä"ss\\w/rd +&=-9f3e'
NESTED = {"user": "nested-user-4d21", "keys": ["nested-key-77ab", {"deep": "nested-deep-e5c0"}], "port": 5432}
SHORT = "q7#z"


@pytest.fixture
def secrets(backend_configured: AwsStandIn) -> AwsStandIn:
    client = backend_configured.client()
    client.create_secret(
        Name="masking/db", SecretString=json.dumps({"password": AWKWARD, "nested": NESTED, "pin": SHORT})
    )
    client.create_secret(Name="masking/reset", SecretString="reset-value-0b7e1c")
    return backend_configured


def _shown(text: str) -> str:
    return str(redact(text))


class TestEveryForm:
    def test_forms(self) -> None:
        forms = masked_forms(AWKWARD)
        assert forms[0] == AWKWARD
        assert json.dumps(AWKWARD)[1:-1] in forms
        assert json.dumps(AWKWARD, ensure_ascii=False)[1:-1] in forms
        assert quote(AWKWARD, safe="") in forms and quote_plus(AWKWARD) in forms
        assert len(forms) == len(set(forms))
        assert masked_forms("plain-value-123") == ["plain-value-123"]  # nothing differs, nothing repeated
        nested = masked_forms(json.dumps(NESTED))
        assert {"nested-user-4d21", "nested-key-77ab", "nested-deep-e5c0"} <= set(nested)
        assert "user" not in nested and "5432" not in nested  # keys and numbers are not strings inside

    def test_escaped_and_encoded_forms_are_masked(self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """Regression: only the raw value was registered, so ``extra`` as written back showed ``P\\u00e4\\"ss``."""
        set_conn(
            monkeypatch,
            "awkward",
            {"conn_type": "http", "host": "api.example.org", "extra": {"note": "{{workato:sm:password:masking/db}}"}},
        )
        conn = get_connection("awkward")
        assert json.loads(conn.extra)["note"] == AWKWARD
        escaped = json.dumps(AWKWARD)[1:-1]
        assert escaped in conn.extra  # json.dumps escapes quotes, backslash and non-ASCII...
        for form in (escaped, json.dumps(AWKWARD, ensure_ascii=False)[1:-1], quote(AWKWARD, safe=""), quote_plus(AWKWARD)):
            assert _shown(f"extra={form};") == "extra=***;"  # ...and every form is masked
        assert "9f3e" not in _shown(conn.extra)

    def test_each_string_inside_a_nested_value_is_masked(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_conn(monkeypatch, "nested", {"conn_type": "http", "extra": {"cfg": "{{workato:sm:nested:masking/db}}"}})
        conn = get_connection("nested")
        assert json.loads(json.loads(conn.extra)["cfg"]) == NESTED
        for inner in ("nested-user-4d21", "nested-key-77ab", "nested-deep-e5c0"):
            assert _shown(f"user is {inner}") == "user is ***"

    def test_short_value_is_warned_about_naming_the_reference_never_the_value(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        set_conn(monkeypatch, "pin", {"conn_type": "http", "password": "{{workato:sm:pin:masking/db}}"})
        caplog.set_level(logging.WARNING, logger="airflow_sm_refs")
        assert get_connection("pin").password == SHORT
        get_connection("pin")  # one warning per reference, not one per lookup
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "airflow_sm_refs"]
        if min_masked_length() > len(SHORT):  # this Airflow does not mask it
            assert len(warnings) == 1, warnings
            assert "masking/db key 'pin'" in warnings[0] and "not be masked" in warnings[0]
            assert SHORT not in warnings[0]
        else:  # 2.x masks any length
            assert warnings == []
            assert _shown(f"pin {SHORT}") == "pin ***"


class TestMaskerReset:
    def test_value_is_masked_again_after_airflow_resets_the_masker(
        self, secrets: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Regression: the 'already registered' memory outlived the masker's reset, so a long-lived
        process (a supervisor running task after task) never registered the value again."""
        monkeypatch.setenv("AIRFLOW_VAR_GREETING", "hello {{workato:sm::masking/reset}}")
        backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=secrets.endpoint_url)
        assert backend.get_variable("greeting") == "hello reset-value-0b7e1c"
        assert _shown("token reset-value-0b7e1c") == "token ***"

        reset_secrets_masker()  # as Airflow does before each task
        assert _shown("token reset-value-0b7e1c") == "token reset-value-0b7e1c"

        assert backend.get_variable("greeting") == "hello reset-value-0b7e1c"  # the next task's lookup
        assert _shown("token reset-value-0b7e1c") == "token ***"
        assert secrets.calls() == 1  # served from the process cache: masking does not depend on a fetch
