"""Promises the README makes about the per-worker cache that no other test held.

- An entry file someone else could have written or read (open to group or
  others, owned by another uid, a symlink) is a miss, never served.
- A not-found answer is remembered for ``negative_cache_seconds`` from when AWS
  gave it: a later retry that fails transiently (throttled) does not make it
  be remembered from the retry's time, in the worker tier or, through
  :class:`~airflow_sm_refs.resolver.SecretResolver`, in the process tier.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_sm_refs import SecretFetchError, SecretNotFoundError, SecretTransientError
from airflow_sm_refs.worker_cache import WorkerCache
from tests.conftest import FakeClock
from tests.test_negative_cache import REF, VALUE, FakeAws, process
from tests.test_negative_cache import not_found as aws_not_found
from tests.test_worker_cache import KEY, NEW, OLD, OTHER_UID, Fetcher, not_found, payload, throttled

pytestmark = pytest.mark.compat

TTL, STALE, NEGATIVE = 300.0, 300.0, 10.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "worker-cache"


@pytest.fixture
def cache(cache_dir: Path, clock: FakeClock) -> Iterator[WorkerCache]:
    opened = WorkerCache(str(cache_dir), timer=clock, rand=lambda: 0.0)
    yield opened
    opened.close()


def lookup(cache: WorkerCache, fetch: Fetcher) -> tuple[object, str]:
    value, source, _ = cache.get_or_fetch(KEY, fetch, ttl=TTL, stale_if_error=STALE, negative_ttl=NEGATIVE)
    return value, source


def give_away(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    os.chown(path, OTHER_UID, -1)


def swap_for_symlink(path: Path) -> None:
    """The entry becomes a symlink to an intact copy of itself (mode 0600, ours)."""
    copy = path.with_name("copy-of-entry")
    os.rename(path, copy)
    path.symlink_to(copy)


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "0640 (open to the group)": lambda path: path.chmod(0o640),
    "0660 (writable by the group)": lambda path: path.chmod(0o660),
    "0604 (open to others)": lambda path: path.chmod(0o604),
    "0644": lambda path: path.chmod(0o644),
    "0666": lambda path: path.chmod(0o666),
    "owned by another user": give_away,
    "a symlink to a good entry": swap_for_symlink,
}


class TestEntryFilesArePrivate:
    @pytest.mark.parametrize("tampering", list(TAMPERINGS))
    def test_an_entry_not_private_to_the_worker_is_a_miss(
        self, cache: WorkerCache, cache_dir: Path, clock: FakeClock, tampering: str
    ) -> None:
        assert lookup(cache, Fetcher(payload(OLD))) == (payload(OLD), "aws")
        reader = WorkerCache(str(cache_dir), timer=clock, rand=lambda: 0.0)
        # Untouched, the entry is served: what follows is the tampering's doing.
        assert lookup(reader, Fetcher(payload(NEW))) == (payload(OLD), "worker cache")

        TAMPERINGS[tampering](Path(cache.entry_path(KEY)))

        assert reader.peek(KEY) is None
        assert not reader.fresh(KEY, TTL)
        fetch = Fetcher(payload(NEW))
        assert lookup(reader, fetch) == (payload(NEW), "aws")
        assert fetch.calls == 1
        # What replaced it is the reader's own, private again, and served.
        entry = Path(cache.entry_path(KEY))
        assert not entry.is_symlink()
        assert (entry.stat().st_mode & 0o777, entry.stat().st_uid) == (0o600, os.geteuid())
        assert lookup(cache, Fetcher(payload(OLD))) == (payload(NEW), "worker cache")


class TestAThrottledRetryDoesNotRenewTheNegativeWindow:
    def test_in_the_worker_tier(self, cache: WorkerCache, cache_dir: Path, clock: FakeClock) -> None:
        with pytest.raises(SecretNotFoundError):
            lookup(cache, Fetcher(not_found()))
        clock.advance(NEGATIVE + 1)  # the window is over: the next lookup asks AWS, which throttles
        retry = Fetcher(throttled())
        with pytest.raises(SecretFetchError):
            lookup(cache, retry)
        assert retry.calls == 1

        clock.advance(1)  # 1 s after the retry, past the window of AWS's answer
        other_process = WorkerCache(str(cache_dir), timer=clock, rand=lambda: 0.0)
        assert not other_process.fresh(KEY, TTL, NEGATIVE)
        for reader in (other_process, cache):
            fetch = Fetcher(payload())
            assert lookup(reader, fetch) == (payload(), "aws")
            assert fetch.calls == 1
            cache.drop(KEY)

    @pytest.mark.parametrize("later", ["the same task process", "another task process"])
    def test_through_the_resolver_with_both_tiers(
        self, fake_aws: FakeAws, clock: FakeClock, tmp_path: Path, later: str
    ) -> None:
        fake_aws.answer = aws_not_found()
        first = process(clock, tmp_path, negative=NEGATIVE)
        with pytest.raises(SecretNotFoundError):
            first.resolve(REF)
        clock.advance(NEGATIVE + 1)
        fake_aws.answer = SecretTransientError("secret 'prod/db' (AWSCURRENT): ThrottlingException")
        with pytest.raises(SecretFetchError):
            first.resolve(REF)
        assert fake_aws.calls == 2

        clock.advance(1)  # 1 s after the retry, past the window of AWS's answer
        fake_aws.answer = VALUE
        resolver = first if later == "the same task process" else process(clock, tmp_path, negative=NEGATIVE)
        assert resolver.resolve(REF).value == "pw-1"
        assert fake_aws.calls == 3


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> FakeAws:
    from airflow_sm_refs import resolver as resolver_module

    aws = FakeAws(aws_not_found())
    monkeypatch.setattr(resolver_module, "fetch_secret", aws)
    return aws
