"""A warm lookup serves the last expansion again, but never past what the full expansion would serve.

The memo is keyed on the raw connection and holds only while every secret it
used is the same fresh payload in the in-process tier: an edit, a rotation
after expiry, a masker reset and a cleared cache each show through at once.
Moto on loopback, the process tier on an injected clock.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_sm_refs import SecretsManagerRefsBackend
from airflow_sm_refs._compat import redact, reset_secrets_masker
from airflow_sm_refs.resolver import PROCESS_CACHE, clear_process_cache
from standins.aws import AwsStandIn
from tests.conftest import FakeClock, configure_backend, get_connection, set_conn

pytestmark = pytest.mark.compat

OLD = {"username": "memo-user-5c1a", "password": "memo-old-pass-81f0"}
NEW = {"username": "memo-user-5c1a", "password": "memo-new-pass-3d92"}
CONN = {
    "conn_type": "postgres",
    "host": "db.internal",
    "login": "{{workato:sm:username:memo/db}}",
    "password": "{{workato:sm:password:memo/db}}",
    "extra": {"dsn_password": "{{workato:sm:password:memo/db}}"},
}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(start=5_000.0)
    monkeypatch.setattr(PROCESS_CACHE, "timer", clock)
    return clock


@pytest.fixture
def secret(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> AwsStandIn:
    # The in-process tier alone: the worker tier runs on the wall clock, not the injected one.
    configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False)
    aws.client().create_secret(Name="memo/db", SecretString=json.dumps(OLD))
    set_conn(monkeypatch, "memo", CONN)
    return aws


def fields(conn: Any) -> tuple[str, str, dict[str, Any]]:
    return conn.login, conn.password, conn.extra_dejson


def test_warm_lookups_return_equal_separate_connections(secret: AwsStandIn, clock: FakeClock) -> None:
    first = get_connection("memo")
    second = get_connection("memo")
    assert fields(first) == fields(second) == (OLD["username"], OLD["password"], {"dsn_password": OLD["password"]})
    assert first is not second  # a caller changing its connection cannot change the next caller's
    second.password = "changed by a task"
    assert get_connection("memo").password == OLD["password"]
    assert secret.total_calls() == 1


def test_an_edited_connection_is_expanded_again(
    secret: AwsStandIn, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert get_connection("memo").host == "db.internal"
    set_conn(monkeypatch, "memo", {**CONN, "host": "db2.internal", "login": "{{workato:sm:password:memo/db}}"})
    conn = get_connection("memo")
    assert (conn.host, conn.login) == ("db2.internal", OLD["password"])


def test_a_rotated_secret_is_served_once_the_old_value_expires(secret: AwsStandIn, clock: FakeClock) -> None:
    assert get_connection("memo").password == OLD["password"]
    secret.client().put_secret_value(SecretId="memo/db", SecretString=json.dumps(NEW))
    clock.advance(100)
    assert get_connection("memo").password == OLD["password"]  # within the TTL (300 s)
    clock.advance(250)  # past it, whatever the entry's jitter
    conn = get_connection("memo")
    assert fields(conn) == (NEW["username"], NEW["password"], {"dsn_password": NEW["password"]})
    assert secret.total_calls() == 2


def test_a_cleared_process_cache_means_a_fetch(secret: AwsStandIn, clock: FakeClock) -> None:
    get_connection("memo")
    clear_process_cache()
    secret.reset_counts()
    assert get_connection("memo").password == OLD["password"]
    assert secret.total_calls() == 1


def test_values_are_masked_again_after_the_masker_is_reset(secret: AwsStandIn, clock: FakeClock) -> None:
    backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=secret.endpoint_url, shared_cache=False)
    assert backend.get_connection("memo").password == OLD["password"]
    assert backend.get_connection("memo").password == OLD["password"]  # from the memo
    reset_secrets_masker()  # as Airflow does before each task
    assert str(redact(f"pw {OLD['password']}")) == f"pw {OLD['password']}"
    assert backend.get_connection("memo").password == OLD["password"]  # the next task's lookup, from the memo
    assert str(redact(f"pw {OLD['password']}")) == "pw ***"
    assert secret.total_calls() == 1
