"""README promises about batches, versions and the audit log that no other test held the plugin to.

Each against moto on loopback through the real boto3 client, looked up as a task does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_sm_refs import SecretAccessDeniedError, SecretNotFoundError
from standins.aws import AwsStandIn
from standins.aws_accounts import AccountsStandIn
from tests.conftest import configure_backend, get_connection, lookup_fails, set_conn

pytestmark = pytest.mark.compat


@pytest.fixture
def accounts(aws: AwsStandIn) -> Iterator[AccountsStandIn]:
    """The session's moto behind the account-routing proxy, which can deny one secret inside a batch."""
    with AccountsStandIn(aws=aws) as stand_in:
        yield stand_in


def test_a_denied_entry_of_a_batch_fails_that_reference_only(
    accounts: AccountsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configure_backend(
        monkeypatch, region_name="us-east-1", endpoint_url=accounts.endpoint_url, shared_cache_dir=str(tmp_path / "c")
    )
    client = accounts.client()
    arns = {
        name: client.create_secret(Name=name, SecretString=json.dumps({"password": f"{name}-value-Qx7"}))["ARN"]
        for name in ("deny/s0", "deny/s1", "deny/s2")
    }
    accounts.deny(arns["deny/s1"])
    set_conn(
        monkeypatch,
        "db",
        {
            "conn_type": "postgres",
            "login": "{{workato:sm:password:deny/s0}}",
            "password": "{{workato:sm:password:deny/s1}}",
            "extra": {"token": "{{workato:sm:password:deny/s2}}"},
        },
    )
    accounts.reset_counts()
    with lookup_fails(SecretAccessDeniedError) as raised:
        get_connection("db")
    assert raised.value.reference == "{{workato:sm:password:deny/s1}}"
    assert (raised.value.conn_id, raised.value.field) == ("db", "password")
    assert "deny/s0" not in str(raised.value) and "deny/s2" not in str(raised.value)
    # One batch, whose Errors[] held the deny: not asked again on its own.
    assert accounts.calls("BatchGetSecretValue") == 1
    assert accounts.calls("GetSecretValue") == 0
    # The other two were fetched by that batch and resolve, with no further call.
    set_conn(
        monkeypatch,
        "others",
        {"conn_type": "http", "login": "{{workato:sm:password:deny/s0}}", "password": "{{workato:sm:password:deny/s2}}"},
    )
    conn = get_connection("others")
    assert (conn.login, conn.password) == ("deny/s0-value-Qx7", "deny/s2-value-Qx7")
    assert accounts.total_calls() == 1


@pytest.fixture
def configured(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AwsStandIn:
    configure_backend(
        monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache_dir=str(tmp_path / "c")
    )
    return aws


@pytest.mark.parametrize(
    "version",
    [":NOSUCHSTAGE", "::01234567-89ab-cdef-0123-456789abcdef"],
    ids=["missing version stage", "missing version id"],
)
def test_a_missing_version_is_secret_not_found(
    configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    configured.client().create_secret(Name="versions/db", SecretString=json.dumps({"password": "versioned-Qx7"}))
    reference = f"{{{{workato:sm:password:versions/db{version}}}}}"
    set_conn(monkeypatch, "versioned", {"conn_type": "http", "password": reference})
    with lookup_fails(SecretNotFoundError) as raised:
        get_connection("versioned")
    assert raised.value.reference == reference
    assert (raised.value.conn_id, raised.value.field) == ("versioned", "password")


def test_process_cache_hits_log_the_audit_line_at_info_once_then_at_debug(
    configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_sm_refs import expand

    monkeypatch.setattr(expand, "_LOGGED_HITS", set())
    configured.client().create_secret(Name="audit/db", SecretString=json.dumps({"password": "audited-Qx7"}))
    set_conn(monkeypatch, "audited", {"conn_type": "http", "password": "{{workato:sm:password:audit/db}}"})
    caplog.set_level(logging.DEBUG, logger="airflow_sm_refs")

    def audit_lines() -> list[tuple[int, str]]:
        lines = [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "airflow_sm_refs" and "'audited' field 'password'" in r.getMessage()
        ]
        caplog.clear()
        return lines

    assert get_connection("audited").password == "audited-Qx7"
    first = audit_lines()
    assert [level for level, text in first if "from aws" in text] == [logging.INFO]
    assert get_connection("audited").password == "audited-Qx7"
    second = audit_lines()
    assert [level for level, text in second if "from process cache" in text] == [logging.INFO]
    for _ in range(2):
        assert get_connection("audited").password == "audited-Qx7"
    later = audit_lines()
    assert [level for level, text in later if "from process cache" in text] == [logging.DEBUG, logging.DEBUG]
    assert all("audited-Qx7" not in text for _, text in first + second + later)
