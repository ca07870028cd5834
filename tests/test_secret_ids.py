"""A value only for the secret AWS answered: the rule of ``secret_ids``, and the repros it fixes.

The rule's own cases first (strings in, strings out), then the plugin against
moto on loopback: a secret *named* like another's full ARN, a batch not-found
answer that must drop every spelling, and an expansion memo that must follow
the payload each value came from. The cross-account cases run against the
account-routing stand-in in ``tests/test_secret_ids_differential.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import SecretNotFoundError, SecretTransientError, parse_reference
from airflow_sm_refs._aws import clients_for_settings
from airflow_sm_refs.cache import TTLCache
from airflow_sm_refs.resolver import PROCESS_CACHE, SecretResolver
from airflow_sm_refs.secret_ids import OWN_ACCOUNTS, BatchItem, every_spelling, match_batch, same_secret_ids
from airflow_sm_refs.worker_cache import WorkerCache
from standins.aws import THROTTLING, AwsStandIn
from tests.conftest import FakeClock, configure_backend, get_connection, set_conn

pytestmark = pytest.mark.compat

OWN = "111111111111"
OTHER = "222222222222"


def arn(name: str, account: str = OWN, region: str = "us-east-1", suffix: str = "AbCdEf") -> str:
    return f"arn:aws:secretsmanager:{region}:{account}:secret:{name}-{suffix}"


class TestSameSecretIds:
    def test_a_name_answered_is_also_its_full_and_partial_arn(self) -> None:
        full = arn("prod/db")
        assert same_secret_ids("prod/db", full, "prod/db", region="us-east-1", own_account=None) == [full, full[:-7]]

    def test_an_arn_is_the_name_only_in_our_own_account_and_region(self) -> None:
        full = arn("prod/db", OTHER)
        assert "prod/db" not in same_secret_ids(full, full, "prod/db", region="us-east-1", own_account=OWN)
        assert "prod/db" not in same_secret_ids(full, full, "prod/db", region="us-east-1", own_account=None)
        mine = arn("prod/db")
        assert "prod/db" in same_secret_ids(mine, mine, "prod/db", region="us-east-1", own_account=OWN)
        assert same_secret_ids(mine, mine, "prod/db", region="eu-west-1", own_account=OWN) == []

    def test_nothing_is_stored_under_a_partial_arn_that_aws_reads_as_a_full_one(self) -> None:
        # B is *named* prod/db-seMZmf: its partial ARN is the full ARN of the secret prod/db.
        b = arn("prod/db-seMZmf", suffix="QwErTy")
        ids = same_secret_ids("prod/db-seMZmf", b, "prod/db-seMZmf", region="us-east-1", own_account=OWN)
        assert ids == [b]  # the full ARN only: the name was asked, and its partial ARN is a trap
        assert arn("prod/db", suffix="seMZmf") not in ids

    def test_every_spelling_is_the_widest_set(self) -> None:
        full = arn("prod/db")
        assert set(every_spelling(full, "prod/db")) == {full, full[:-7], "prod/db"}


class TestMatchBatch:
    def test_a_full_arn_is_matched_exactly_not_as_the_prefix_of_another(self) -> None:
        a = BatchItem(arn("prod/db", suffix="seMZmf"), "prod/db")
        b = BatchItem(arn("prod/db-seMZmf", suffix="QwErTy"), "prod/db-seMZmf")
        for items in ([a, b], [b, a]):
            matched = match_batch([a.arn, "prod/db-seMZmf"], items, region="us-east-1", own_account=OWN)
            assert matched == {a.arn: a, "prod/db-seMZmf": b}
        # Only B answered (A denied): A's full ARN gets nothing from B.
        assert match_batch([a.arn], [b], region="us-east-1", own_account=OWN) == {}

    def test_a_name_never_matches_another_accounts_item(self) -> None:
        theirs = BatchItem(arn("prod/db", OTHER), "prod/db")
        mine = BatchItem(arn("prod/db", OWN, suffix="ZyXwVu"), "prod/db")
        asked = ["prod/db", arn("prod/db", OTHER)[:-7]]
        for items in ([theirs, mine], [mine, theirs]):
            assert match_batch(asked, items, region="us-east-1", own_account=OWN)["prod/db"] == mine
        # Our own prod/db denied: only theirs came back.
        assert "prod/db" not in match_batch(asked, [theirs], region="us-east-1", own_account=OWN)
        # Account not known yet: a name is matched only in a batch of names.
        assert "prod/db" not in match_batch(asked, [mine, theirs], region="us-east-1", own_account=None)
        assert match_batch(["prod/db"], [mine], region="us-east-1", own_account=None) == {"prod/db": mine}

    def test_an_item_nobody_asked_for_is_not_used(self) -> None:
        stray = BatchItem(arn("other/secret"), "other/secret")
        assert match_batch(["prod/db", arn("prod/db")], [stray], region="us-east-1", own_account=OWN) == {}


# --- against moto ----------------------------------------------------------------


def _create(aws: AwsStandIn, name: str, value: dict[str, str]) -> str:
    return aws.client().create_secret(Name=name, SecretString=json.dumps(value))["ARN"]


@pytest.fixture
def trap(aws: AwsStandIn) -> tuple[str, str]:
    """Secret A ``trap/db``, and secret B *named* like A's full ARN's resource: (A's full ARN, B's name)."""
    suffix = "".join(random.choices("abcdefghij", k=4))
    a_arn = _create(aws, f"trap{suffix}/db", {"password": "value-of-A-7d1e"})
    b_name = a_arn.split(":secret:", 1)[1]
    _create(aws, b_name, {"password": "value-of-B-c40f"})
    return a_arn, b_name


def _resolver(aws: AwsStandIn, **kwargs: Any) -> SecretResolver:
    clients = clients_for_settings({"region_name": "us-east-1", "endpoint_url": aws.endpoint_url})
    return SecretResolver(clients, cache=kwargs.pop("cache", TTLCache()), **kwargs)


def _ref(secret_id: str) -> Any:
    return parse_reference(f"{{{{workato:sm:password:{secret_id}}}}}")


@pytest.mark.parametrize("batched", [True, False], ids=["batch", "one-by-one"])
def test_a_secret_named_like_another_ones_full_arn_never_stands_in_for_it(
    aws: AwsStandIn, trap: tuple[str, str], tmp_path: Path, batched: bool
) -> None:
    a_arn, b_name = trap
    shared = str(tmp_path / "shared")
    first = _resolver(aws, shared=WorkerCache(shared))
    refs = [_ref(b_name), _ref(a_arn)]
    if batched:
        first.prefetch(refs)
    assert [first.resolve(r).value for r in refs] == ["value-of-B-c40f", "value-of-A-7d1e"]
    # Another process, A alone, by its full ARN and by its partial ARN: A, from cache or AWS.
    other = _resolver(aws, shared=WorkerCache(shared))
    assert other.resolve(_ref(a_arn)).value == "value-of-A-7d1e"
    assert other.resolve(_ref(a_arn[:-7])).value == "value-of-A-7d1e"
    assert other.resolve(_ref(b_name)).value == "value-of-B-c40f"


def test_b_fetched_by_name_is_never_stored_under_as_full_arn(aws: AwsStandIn, trap: tuple[str, str]) -> None:
    a_arn, b_name = trap
    resolver = _resolver(aws)
    assert resolver.resolve(_ref(b_name)).value == "value-of-B-c40f"
    assert resolver.resolve(_ref(a_arn)).value == "value-of-A-7d1e"


def test_a_batch_not_found_drops_every_spelling_so_none_is_served_stale(aws: AwsStandIn, tmp_path: Path) -> None:
    clock = FakeClock()
    full = _create(aws, "gone/db", {"password": "gone-value-5be2"})
    _create(aws, "kept/db", {"password": "kept-value-99a0"})
    shared = WorkerCache(str(tmp_path / "shared"), timer=clock)
    resolver = _resolver(aws, cache=TTLCache(timer=clock), shared=shared, cache_ttl_seconds=60, stale_if_error_seconds=600)
    assert resolver.resolve(_ref("gone/db")).value == "gone-value-5be2"  # held under the name and both ARNs
    aws.client().delete_secret(SecretId="gone/db", ForceDeleteWithoutRecovery=True)
    clock.advance(61)
    resolver.prefetch([_ref("gone/db"), _ref("kept/db")])  # AWS: gone/db not found
    if not _batch_lists_missing(aws):
        # moto up to 5.1 (the 2.10 and 2.11 lines' venvs) leaves a missing secret out of a
        # batch's Errors[]: nothing said it is gone, so its value may be served stale.
        return
    with aws.failing(THROTTLING):
        # Had the ARN spellings kept the expired value, throttling would serve it stale.
        for spelling in (full, full[:-7]):
            with pytest.raises((SecretNotFoundError, SecretTransientError)) as raised:
                resolver.resolve(_ref(spelling))
            assert "gone-value-5be2" not in str(raised.value)


def _batch_lists_missing(aws: AwsStandIn) -> bool:
    """Whether this moto answers a missing secret in a batch's Errors[], as AWS does."""
    client = aws.client()
    client.create_secret(Name="probe/present", SecretString="probe-value-9")
    answer = client.batch_get_secret_value(SecretIdList=["probe/present", "probe/absent"])
    return any(e.get("SecretId") == "probe/absent" for e in answer.get("Errors", []))


def test_an_arn_first_then_the_name_fetch_again_until_our_account_is_known(aws: AwsStandIn) -> None:
    full = _create(aws, "acct/db", {"password": "acct-value-31c7"})
    _create(aws, "acct/other", {"password": "acct-other-0d2b"})
    resolver = _resolver(aws)
    aws.reset_counts()
    assert resolver.resolve(_ref(full)).value == "acct-value-31c7"
    assert resolver.resolve(_ref("acct/db")).value == "acct-value-31c7"
    assert aws.total_calls() == 2  # the ARN's account might not be ours: the name was asked
    # Now AWS has told us our account (by answering a name): an ARN in it names the name too.
    other_full = resolver.resolve(_ref("acct/other")).payload.arn  # type: ignore[union-attr]
    assert OWN_ACCOUNTS.get(resolver.clients.identity) == other_full.split(":")[4]
    PROCESS_CACHE.clear()
    resolver.cache.clear()
    aws.reset_counts()
    assert resolver.resolve(_ref(other_full)).value == "acct-other-0d2b"
    assert resolver.resolve(_ref("acct/other")).value == "acct-other-0d2b"
    assert aws.total_calls() == 1


# --- the expansion memo ------------------------------------------------------------------


@pytest.fixture
def memo_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(start=5_000.0)
    monkeypatch.setattr(PROCESS_CACHE, "timer", clock)
    return clock


def test_the_memo_follows_the_payload_each_value_came_from(
    aws: AwsStandIn, memo_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_backend(
        monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False, cache_ttl_seconds=100
    )
    full = _create(aws, "memo2/db", {"password": "memo2-old-4a1c"})
    set_conn(monkeypatch, "by_arn", {"conn_type": "http", "password": f"{{{{workato:sm:password:{full}}}}}"})
    set_conn(
        monkeypatch,
        "both",
        {"conn_type": "http", "login": f"{{{{workato:sm:password:{full}}}}}", "password": "{{workato:sm:password:memo2/db}}"},
    )
    assert get_connection("by_arn").password == "memo2-old-4a1c"  # t0: old under the ARN only
    aws.client().put_secret_value(SecretId="memo2/db", SecretString=json.dumps({"password": "memo2-new-77e0"}))
    memo_clock.advance(50)
    both = get_connection("both")  # the ARN from the tier (old, fresh), the name from AWS (new)
    assert (both.login, both.password) == ("memo2-old-4a1c", "memo2-new-77e0")
    memo_clock.advance(60)  # t0 + 110: the old value is past its TTL
    both = get_connection("both")
    assert (both.login, both.password) == ("memo2-new-77e0", "memo2-new-77e0")


def test_the_memo_shows_an_edit_of_extra_alone(aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache=False)
    _create(aws, "memo3/db", {"password": "memo3-pass-e21b", "token": "memo3-token-0f4d"})
    conn: dict[str, Any] = {"conn_type": "http", "password": "{{workato:sm:password:memo3/db}}"}
    set_conn(monkeypatch, "edited", {**conn, "extra": {"t": "{{workato:sm:password:memo3/db}}"}})
    assert get_connection("edited").extra_dejson == {"t": "memo3-pass-e21b"}
    set_conn(monkeypatch, "edited", {**conn, "extra": {"t": "{{workato:sm:token:memo3/db}}"}})
    assert get_connection("edited").extra_dejson == {"t": "memo3-token-0f4d"}
