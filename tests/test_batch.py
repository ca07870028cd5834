"""Fewer AWS calls: a cold connection's secrets in one BatchGetSecretValue, one entry per secret whatever its spelling.

Against moto on loopback, counting requests at the stand-in in front of it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import SecretNotFoundError, parse_reference
from airflow_sm_refs._aws import clients_for_settings
from airflow_sm_refs.cache import TTLCache
from airflow_sm_refs.resolver import SecretResolver
from airflow_sm_refs.worker_cache import WorkerCache
from standins.aws import AwsStandIn
from tests.conftest import configure_backend, get_connection, lookup_fails, set_conn

pytestmark = pytest.mark.compat

SECRETS = {f"batch/s{i}": {"password": f"batch-value-{i}-Qx7"} for i in range(4)}


def make_secrets(aws: AwsStandIn, names: list[str] | None = None) -> dict[str, str]:
    """Create the secrets; return name -> ARN."""
    client = aws.client()
    return {
        name: client.create_secret(Name=name, SecretString=json.dumps(SECRETS[name]))["ARN"]
        for name in (names or list(SECRETS))
    }


def three_secret_connection(first: str = "batch/s0") -> dict[str, Any]:
    return {
        "conn_type": "postgres",
        "host": "db.internal",
        "login": f"{{{{workato:sm:password:{first}}}}}",
        "password": "{{workato:sm:password:batch/s1}}",
        "extra": {"token": "{{workato:sm:password:batch/s2}}"},
    }


def _moto_lists_missing_secrets(aws: AwsStandIn) -> bool:
    """Whether this moto answers a missing secret in a batch's Errors[], as AWS does (older ones leave it out)."""
    client = aws.client()
    client.create_secret(Name="batch/probe", SecretString="probe-value-1")
    answer = client.batch_get_secret_value(SecretIdList=["batch/probe", "batch/no-such-probe"])
    return any(e.get("SecretId") == "batch/no-such-probe" for e in answer.get("Errors", []))


@pytest.fixture
def configured(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AwsStandIn:
    configure_backend(
        monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache_dir=str(tmp_path / "cache")
    )
    return aws


def test_a_cold_three_secret_connection_makes_exactly_one_request(
    configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_secrets(configured)
    set_conn(monkeypatch, "db", three_secret_connection())
    configured.reset_counts()
    conn = get_connection("db")
    assert (conn.login, conn.password, conn.extra_dejson["token"]) == (
        "batch-value-0-Qx7",
        "batch-value-1-Qx7",
        "batch-value-2-Qx7",
    )
    assert configured.total_calls() == 1
    assert configured.calls("BatchGetSecretValue") == 1
    get_connection("db")
    assert configured.total_calls() == 1  # warm: nothing more


def test_a_batch_with_one_missing_secret_fails_naming_it_only(
    configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_secrets(configured, ["batch/s0", "batch/s2"])  # batch/s1 does not exist
    answers_missing = _moto_lists_missing_secrets(configured)
    set_conn(monkeypatch, "db", three_secret_connection())
    configured.reset_counts()
    with lookup_fails(SecretNotFoundError) as raised:
        get_connection("db")
    error = raised.value
    assert error.reference == "{{workato:sm:password:batch/s1}}"
    assert (error.conn_id, error.field) == ("db", "password")
    assert "batch/s0" not in str(error) and "batch/s2" not in str(error)
    # One batch call. AWS (and newer moto) answer the missing secret in Errors[], which fails it
    # with no second request; older moto leaves it out, and a secret left out is asked on its own.
    assert configured.calls("BatchGetSecretValue") == 1
    assert configured.calls("GetSecretValue") == (0 if answers_missing else 1)
    # The secrets that exist were fetched and are served from the cache now.
    before = configured.total_calls()
    set_conn(monkeypatch, "other", {"conn_type": "http", "password": "{{workato:sm:password:batch/s2}}"})
    assert get_connection("other").password == "batch-value-2-Qx7"
    assert configured.total_calls() == before


def test_with_the_batch_action_denied_lookups_resolve_and_the_batch_is_tried_once(
    configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_secrets(configured)
    set_conn(monkeypatch, "db", three_secret_connection())
    set_conn(
        monkeypatch,
        "db2",
        {"conn_type": "http", "login": "{{workato:sm:password:batch/s3}}", "password": "{{workato:sm:password:batch/s0}}"},
    )
    configured.reset_counts()
    caplog.set_level("INFO", logger="airflow_sm_refs")
    with configured.denying("BatchGetSecretValue"):
        conn = get_connection("db")
        assert conn.password == "batch-value-1-Qx7"
        conn2 = get_connection("db2")  # batch/s3 cold, batch/s0 warm: no batch either way
        assert conn2.login == "batch-value-3-Qx7"
    assert configured.calls("BatchGetSecretValue") == 1
    assert configured.calls("GetSecretValue") == 4  # s0, s1, s2, s3: one each
    notes = [r.getMessage() for r in caplog.records if "BatchGetSecretValue is not allowed" in r.getMessage()]
    assert len(notes) == 1 and notes[0]


def test_the_batch_denial_is_remembered_for_the_process(configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    make_secrets(configured)
    set_conn(monkeypatch, "a", {"conn_type": "http", "login": "{{workato:sm:password:batch/s0}}", "password": "{{workato:sm:password:batch/s1}}"})
    set_conn(monkeypatch, "b", {"conn_type": "http", "login": "{{workato:sm:password:batch/s2}}", "password": "{{workato:sm:password:batch/s3}}"})
    configured.reset_counts()
    with configured.denying("BatchGetSecretValue"):
        assert get_connection("a").password == "batch-value-1-Qx7"
        assert get_connection("b").password == "batch-value-3-Qx7"  # cold pair again: no second batch attempt
    assert configured.calls("BatchGetSecretValue") == 1
    assert configured.calls("GetSecretValue") == 4


def test_the_name_and_the_arn_of_one_secret_cost_one_fetch(configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = make_secrets(configured, ["batch/s0"])["batch/s0"]
    partial = arn[: -len("-AbCdEf")]
    set_conn(monkeypatch, "by_name", {"conn_type": "http", "password": "{{workato:sm:password:batch/s0}}"})
    set_conn(monkeypatch, "by_arn", {"conn_type": "http", "password": f"{{{{workato:sm:password:{arn}}}}}"})
    set_conn(monkeypatch, "by_partial", {"conn_type": "http", "password": f"{{{{workato:sm:password:{partial}}}}}"})
    configured.reset_counts()
    assert get_connection("by_name").password == "batch-value-0-Qx7"
    assert get_connection("by_arn").password == "batch-value-0-Qx7"
    assert get_connection("by_partial").password == "batch-value-0-Qx7"
    assert configured.total_calls() == 1


def test_another_process_finds_the_other_spelling_in_the_worker_cache(aws: AwsStandIn, tmp_path: Path) -> None:
    arn = make_secrets(aws, ["batch/s0"])["batch/s0"]
    directory = str(tmp_path / "shared")

    def resolver() -> SecretResolver:  # a process of its own: own process tier, same directory
        clients = clients_for_settings({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url})
        return SecretResolver(clients, cache=TTLCache(), shared=WorkerCache(directory))

    aws.reset_counts()
    assert resolver().resolve(parse_reference("{{workato:sm:password:batch/s0}}")).source == "aws"
    second = resolver().resolve(parse_reference(f"{{{{workato:sm:password:{arn}}}}}"))
    assert (second.value, second.source) == ("batch-value-0-Qx7", "worker cache")
    assert aws.total_calls() == 1


def test_overlapping_batches_in_two_processes_fetch_each_secret_once_without_deadlock(
    aws: AwsStandIn, tmp_path: Path
) -> None:
    make_secrets(aws)
    directory = str(tmp_path / "shared")
    refs = {name: parse_reference(f"{{{{workato:sm:password:{name}}}}}") for name in SECRETS}
    # Opposite orders, sharing two secrets: a lock order that followed the input would deadlock.
    orders = [["batch/s0", "batch/s1", "batch/s2"], ["batch/s2", "batch/s1", "batch/s3"]]
    start = threading.Barrier(len(orders))
    results: list[Any] = [None] * len(orders)

    def worker(i: int) -> None:
        # Own process tier and own WorkerCache instance: flock excludes them as it does processes.
        clients = clients_for_settings({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url})
        resolver = SecretResolver(clients, cache=TTLCache(), shared=WorkerCache(directory))
        start.wait()
        resolver.prefetch([refs[name] for name in orders[i]])
        results[i] = [resolver.resolve(refs[name]).value for name in orders[i]]

    aws.reset_counts()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(orders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert results == [[f"batch-value-{n[-1]}-Qx7" for n in order] for order in orders]
    # Whichever went first fetched its three; the other found two of its own fetched, one left.
    assert aws.calls("BatchGetSecretValue") == 1
    assert aws.calls("GetSecretValue") <= 1
    assert aws.total_calls() <= 2


def test_references_with_a_version_stage_keep_get_secret_value(configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    make_secrets(configured)
    set_conn(
        monkeypatch,
        "db",
        {
            "conn_type": "http",
            "login": "{{workato:sm:password:batch/s0:AWSCURRENT}}",
            "password": "{{workato:sm:password:batch/s1:AWSCURRENT}}",
        },
    )
    configured.reset_counts()
    assert get_connection("db").password == "batch-value-1-Qx7"
    assert configured.calls("BatchGetSecretValue") == 0
    assert configured.calls("GetSecretValue") == 2


def test_more_than_twenty_secrets_go_in_batches_of_twenty(configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    client = configured.client()
    for i in range(25):
        client.create_secret(Name=f"many/s{i}", SecretString=json.dumps({"v": f"many-value-{i:02d}-Zz"}))
    set_conn(monkeypatch, "many", {"conn_type": "http", "extra": {f"k{i}": f"{{{{workato:sm:v:many/s{i}}}}}" for i in range(25)}})
    configured.reset_counts()
    extra = get_connection("many").extra_dejson
    assert extra == {f"k{i}": f"many-value-{i:02d}-Zz" for i in range(25)}
    assert configured.calls("BatchGetSecretValue") == 2
    assert configured.calls("GetSecretValue") == 0
