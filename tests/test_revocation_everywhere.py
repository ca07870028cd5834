"""After AWS says a secret is denied (or not found), no tier serves a value fetched before (issue 17 review).

The README promises that a not-found or denied answer drops the secret from
every cache tier, so that no older value of it is served again, not even as a
stale fallback while AWS is failing. Each test here is one repro of the
review (``/tmp/review17``), against moto behind :class:`AccountsStandIn`
(which denies reads of one secret by any spelling, and throttles on demand),
with "task processes" that each have their own in-process tier and share one
per-worker directory, on a fake clock:

- no region configured: a denial by ARN covers the name (keyed with no region);
- any spelling, any process: a denial told to one process by one spelling
  stops every process sharing the worker directory serving another spelling;
- the batch path records the denial for other processes whatever
  ``negative_cache_seconds`` (0 here), as the single path does;
- any version: a denial by name drops a value cached under a version id;
- a single-flight waiter thread never re-stamps the leader's stale value as
  fetched from AWS just now (so another reader's window is kept).

The user-visible failure in each is the same: a value AWS would no longer give
comes back from ``resolve`` after AWS said no (or after its window).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_sm_refs import SecretAccessDeniedError, SecretFetchError, SecretNotFoundError, parse_reference
from airflow_sm_refs._aws import RegionalClients, quiet_secret_bodies
from airflow_sm_refs.cache import TTLCache
from airflow_sm_refs.expand import Expansion
from airflow_sm_refs.resolver import SecretResolver
from airflow_sm_refs.worker_cache import WorkerCache
from standins.aws import THROTTLING, AwsStandIn
from standins.aws_accounts import AccountsStandIn
from tests.conftest import FakeClock

pytestmark = pytest.mark.compat

OLD = "PW-before-revocation-Qx7"
TTL = 300.0
STALE = 300.0
NEGATIVE = 10.0


@pytest.fixture
def accounts(aws: AwsStandIn) -> Iterator[AccountsStandIn]:
    """The session's moto behind the account-routing proxy (denies one secret by any spelling, throttles)."""
    with AccountsStandIn(aws=aws) as stand_in:
        yield stand_in


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


def client_maker(stand_in: AccountsStandIn, *, delay: Callable[[], None] | None = None) -> Callable[[str | None], Any]:
    """What RegionalClients calls to build a client: a boto3 client of the caller's own account, one try per call."""
    import boto3
    from botocore.config import Config

    quiet_secret_bodies()  # as the plugin does when it builds its clients: botocore logs response bodies
    made: dict[str, Any] = {}

    def make(region: str | None) -> Any:
        region = region or "us-east-1"  # boto3's default region (AWS_DEFAULT_REGION in tests.conftest)
        if region not in made:
            made[region] = boto3.client(
                "secretsmanager",
                region_name=region,
                endpoint_url=stand_in.endpoint_url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"max_attempts": 1, "mode": "standard"}),
            )
        client = made[region]
        return client if delay is None else _Slow(client, delay)

    return make


class _Slow:
    """A client whose every call waits on ``delay`` first (so a second thread joins the first one's flight)."""

    def __init__(self, client: Any, delay: Callable[[], None]) -> None:
        self._client = client
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._delay()
            return attribute(*args, **kwargs)

        return call


def task_process(
    stand_in: AccountsStandIn,
    clock: FakeClock,
    directory: Path,
    *,
    seed: int,
    default_region: str | None = "us-east-1",
    ttl: float = TTL,
    stale: float = STALE,
    negative: float = NEGATIVE,
    delay: Callable[[], None] | None = None,
) -> SecretResolver:
    """One task process: its own in-process tier, the worker directory it shares with the others."""
    rand = random.Random(seed)
    clients = RegionalClients(client_maker(stand_in, delay=delay), default_region, "revocation-tests")
    shared = WorkerCache(str(directory), timer=clock, rand=rand.random, jitter=0.0, lock_timeout=5)
    cache: TTLCache[Any] = TTLCache(timer=clock, rand=rand.random, jitter=0.0)
    return SecretResolver(clients, ttl, stale, cache=cache, shared=shared, negative_cache_seconds=negative)


def ref(secret_id: str) -> Any:
    return parse_reference(f"{{{{workato:sm::{secret_id}}}}}")


def value(resolver: SecretResolver, spelling: str) -> str:
    return resolver.resolve(ref(spelling)).value


def assert_not_served(resolver: SecretResolver, spelling: str, old: str = OLD) -> SecretFetchError:
    """``resolve`` raises (denied, or AWS failing with nothing it may serve): it never returns ``old``."""
    try:
        result = resolver.resolve(ref(spelling))
    except SecretFetchError as exc:
        assert old not in str(exc)
        return exc
    raise AssertionError(f"resolve({spelling!r}) served {result.value!r} from {result.source} after AWS denied the secret")


def test_a_denial_by_arn_stops_the_name_being_served_when_no_region_is_configured(
    accounts: AccountsStandIn, clock: FakeClock, tmp_path: Path
) -> None:
    arn = accounts.client().create_secret(Name="prod/db", SecretString=OLD)["ARN"]
    task = task_process(accounts, clock, tmp_path / "worker", seed=1, default_region=None)
    assert value(task, "prod/db") == OLD

    clock.advance(TTL + 1)
    accounts.deny(arn)
    with pytest.raises(SecretAccessDeniedError):
        task.resolve(ref(arn))

    clock.advance(NEGATIVE + 1)  # past the negative window: AWS is asked again, and throttles
    accounts.fail_next(THROTTLING, 5)
    assert_not_served(task, "prod/db")


@pytest.mark.parametrize("told", ["the process that reads it", "another process"])
def test_a_denial_by_one_spelling_stops_every_process_serving_another(
    accounts: AccountsStandIn, clock: FakeClock, tmp_path: Path, told: str
) -> None:
    arn = accounts.client().create_secret(Name="prod/db", SecretString=OLD)["ARN"]
    p1 = task_process(accounts, clock, tmp_path / "worker", seed=1)
    p2 = task_process(accounts, clock, tmp_path / "worker", seed=2)
    assert p1.resolve(ref("prod/db")).source == "aws"
    # p2 holds it under the name only, in its own tier, from the worker tier
    assert p2.resolve(ref("prod/db")).source == "worker cache"

    clock.advance(TTL + 1)
    accounts.deny(arn)
    teller = p2 if told == "the process that reads it" else p1
    with pytest.raises(SecretAccessDeniedError):
        teller.resolve(ref(arn))

    clock.advance(NEGATIVE + 1)
    accounts.fail_next(THROTTLING, 5)
    assert_not_served(p2, "prod/db")
    assert_not_served(p1, "prod/db")


@pytest.mark.parametrize("path", ["batch", "single"])
def test_a_denial_told_to_one_process_reaches_the_others_with_no_negative_cache(
    accounts: AccountsStandIn, clock: FakeClock, tmp_path: Path, path: str
) -> None:
    admin = accounts.client()
    arn = admin.create_secret(Name="prod/db", SecretString=OLD)["ARN"]
    admin.create_secret(Name="prod/other", SecretString="other-value-0000")
    p1 = task_process(accounts, clock, tmp_path / "worker", seed=1, negative=0.0)
    p2 = task_process(accounts, clock, tmp_path / "worker", seed=2, negative=0.0)
    assert value(p2, "prod/db") == OLD

    clock.advance(TTL + 1)
    accounts.deny(arn)
    accounts.reset_counts()
    if path == "batch":
        # A Variable whose first reference names a secret that is gone: both are
        # fetched in one batch (which answers prod/db denied), then the expansion stops.
        expansion = Expansion(p1, conn_id="v", kind="variable", mask=lambda v: None)
        with pytest.raises(SecretNotFoundError):
            expansion.variable("{{workato:sm::prod/gone}} {{workato:sm::prod/db}}")
        assert accounts.calls("BatchGetSecretValue") == 1
    else:
        with pytest.raises(SecretAccessDeniedError):
            p1.resolve(ref("prod/db"))

    accounts.fail_next(THROTTLING, 5)
    assert_not_served(p2, "prod/db")


def test_a_denial_drops_every_version(accounts: AccountsStandIn, clock: FakeClock, tmp_path: Path) -> None:
    made = accounts.client().create_secret(Name="prod/db", SecretString=OLD)
    arn, version_id = made["ARN"], made["VersionId"]
    task = task_process(accounts, clock, tmp_path / "worker", seed=1)
    assert value(task, "prod/db") == OLD
    assert value(task, f"prod/db::{version_id}") == OLD

    clock.advance(TTL + 1)
    accounts.deny(arn)
    with pytest.raises(SecretAccessDeniedError):
        task.resolve(ref("prod/db"))

    clock.advance(NEGATIVE + 1)
    accounts.fail_next(THROTTLING, 5)
    assert_not_served(task, f"prod/db::{version_id}")
    # nor in another process sharing the worker directory
    assert_not_served(task_process(accounts, clock, tmp_path / "worker", seed=2), f"prod/db::{version_id}")


def test_a_single_flight_waiter_never_restamps_an_old_value_as_fresh(
    accounts: AccountsStandIn, clock: FakeClock, tmp_path: Path
) -> None:
    admin = accounts.client()
    arn = admin.create_secret(Name="prod/db", SecretString="v1-OLD-password")["ARN"]
    p1 = task_process(accounts, clock, tmp_path / "worker", seed=1)
    assert value(p1, "prod/db") == "v1-OLD-password"  # in the worker tier under each spelling, fetched at t=0
    clock.advance(100)
    admin.put_secret_value(SecretId=arn, SecretString="v2-NEW-password")
    clock.advance(TTL - 100 + 1)  # t=301: v1 expired in every tier

    # A task process with two threads asking at once, while AWS throttles: the
    # first serves v1 stale from the worker tier, the second waits on its flight.
    in_flight = threading.Event()

    def slow() -> None:
        in_flight.set()
        time.sleep(1.0)

    p2 = task_process(accounts, clock, tmp_path / "worker", seed=2, delay=slow)
    accounts.fail_next(THROTTLING, 2)
    got: dict[str, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def look(name: str) -> None:
        try:
            result = p2.resolve(ref("prod/db"))
            got[name] = (result.value, result.source)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    leader = threading.Thread(target=look, args=("leader",))
    leader.start()
    assert in_flight.wait(30), "the first thread never asked AWS"
    waiter = threading.Thread(target=look, args=("waiter",))
    waiter.start()
    leader.join(60)
    waiter.join(60)
    assert not errors, errors
    assert got["leader"] == ("v1-OLD-password", "worker cache (stale)")
    assert got["waiter"][0] == "v1-OLD-password"

    # A reader that wants nothing older than 60 s, AWS healthy again: AWS's value,
    # not v1 (which AWS stopped answering 206 s ago) served as a fresh worker-cache hit.
    accounts.clear_faults()
    clock.advance(5)
    p3 = task_process(accounts, clock, tmp_path / "worker", seed=3, ttl=60.0, stale=0.0)
    assert p3.resolve(ref(arn)).value == "v2-NEW-password"
    # and the waiter's audit line did not say the old value came from AWS
    assert got["waiter"][1] != "aws", "the waiter reported a stale value as fetched from AWS"
