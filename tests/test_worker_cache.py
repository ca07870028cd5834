"""The per-worker tier (DESIGN §5, tier 2): one fetch per secret per expiry period, per worker.

``TestWorkerCache``, ``TestOpenWorkerCache`` and ``TestClearWorkerCache`` drive
the tier in this process with a fake clock. ``TestAcrossTaskProcesses`` runs
real task processes (forked from a warm parent, as a worker forks them, and
once as fresh interpreters) against a moto server on loopback, counting AWS
calls at the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_sm_refs import SecretNotFoundError, SecretsManagerRefsBackend, SecretTransientError, parse_reference
from airflow_sm_refs import worker_cache
from airflow_sm_refs.fetch import SecretPayload
from airflow_sm_refs.worker_cache import (
    WorkerCache,
    clear_worker_cache,
    default_worker_cache_dir,
    open_worker_cache,
    reset_worker_caches,
)
from standins.aws import ACCESS_DENIED, INTERNAL_ERROR, THROTTLING, AwsStandIn, InjectedFault
from tests.conftest import BACKEND, FakeClock, configure_backend, get_connection, set_conn
from tests.worker_proc import TaskProcesses, digest, spawn_lookups

pytestmark = pytest.mark.compat

KEY = ("identity-a", "us-east-1", "prod/db", "stage:AWSCURRENT")
OLD = '{"password": "old-pässword-1"}'
NEW = '{"password": "new-pässword-2"}'
CONN = {
    "conn_type": "postgres",
    "host": "db.internal",
    "login": "app",
    "password": "{{workato:sm:password:prod/db}}",
}
REFERENCE = "{{workato:sm:password:prod/db}}"
OTHER_UID = 65534  # nobody


def payload(string: str | None = OLD, binary: bytes | None = None, version: str = "v1") -> SecretPayload:
    return SecretPayload(
        arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf",
        version_id=version,
        string=string,
        binary=binary,
    )


class Fetcher:
    """Stands in for one AWS call: returns or raises its outcomes in turn (the last one repeats)."""

    def __init__(self, *outcomes: SecretPayload | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self) -> SecretPayload:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def not_found() -> SecretNotFoundError:
    return SecretNotFoundError("secret 'prod/db' (AWSCURRENT): ResourceNotFoundException", reference=REFERENCE)


def throttled() -> SecretTransientError:
    return SecretTransientError(
        "secret 'prod/db' (AWSCURRENT): ThrottlingException: Rate exceeded", reference=REFERENCE
    )


@pytest.fixture(autouse=True)
def private_default_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The default directory (``/dev/shm/...``) moved somewhere private to the test."""
    ram_fs = tmp_path_factory.mktemp("shm")
    monkeypatch.setattr(worker_cache, "RAM_FS", str(ram_fs))
    reset_worker_caches()
    yield ram_fs
    reset_worker_caches()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """Where the tier goes; not created yet (the tier creates it)."""
    return tmp_path / "worker-cache"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def cache(cache_dir: Path, clock: FakeClock) -> Iterator[WorkerCache]:
    """The tier with a fake clock and no jitter."""
    opened = WorkerCache(str(cache_dir), timer=clock, rand=lambda: 0.0)
    yield opened
    opened.close()


def get(
    cache: WorkerCache, fetch: Fetcher, *, key: tuple[str, ...] = KEY, ttl: float = 300, stale: float = 300
) -> tuple[SecretPayload, str, float]:
    return cache.get_or_fetch(key, fetch, ttl=ttl, stale_if_error=stale)


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o777


class TestWorkerCache:
    def test_fresh_entry_is_served_until_it_expires(
        self, cache: WorkerCache, cache_dir: Path, clock: FakeClock
    ) -> None:
        fetch = Fetcher(payload(OLD), payload(NEW))
        assert get(cache, fetch) == (payload(OLD), "aws", 0)  # (payload, source, age)
        # Another task process: its own instance, the same directory.
        other = WorkerCache(str(cache_dir), timer=clock, rand=lambda: 0.0)
        clock.advance(299)
        assert get(other, fetch) == (payload(OLD), "worker cache", pytest.approx(299))
        assert fetch.calls == 1
        clock.advance(1)
        assert get(other, fetch) == (payload(NEW), "aws", 0)
        assert get(cache, fetch)[:2] == (payload(NEW), "worker cache")
        assert fetch.calls == 2
        other.close()

    def test_ttl_is_only_ever_shortened_by_jitter(self, cache_dir: Path, clock: FakeClock) -> None:
        cache = WorkerCache(str(cache_dir), timer=clock, jitter=0.1, rand=lambda: 1.0)
        fetch = Fetcher(payload())
        assert get(cache, fetch)[1] == "aws"
        clock.advance(269.9)
        assert get(cache, fetch)[1] == "worker cache"
        clock.advance(0.1)
        assert get(cache, fetch)[1] == "aws"

    def test_binary_secret_round_trips(self, cache: WorkerCache, cache_dir: Path, clock: FakeClock) -> None:
        value = payload(string=None, binary=bytes(range(256)))
        get(cache, Fetcher(value))
        other = WorkerCache(str(cache_dir), timer=clock, rand=lambda: 0.0)
        assert get(other, Fetcher(not_found())) == (value, "worker cache", 0)

    def test_files_are_private_whatever_the_umask(self, cache_dir: Path, clock: FakeClock) -> None:
        previous = os.umask(0)
        try:
            cache = WorkerCache(str(cache_dir), timer=clock)
            get(cache, Fetcher(payload()))
        finally:
            os.umask(previous)
        assert mode(cache_dir) == 0o700
        names = sorted(os.listdir(cache_dir))
        assert [n.rsplit(".", 1)[1] for n in names] == ["entry", "lock"]
        assert all(mode(cache_dir / n) == 0o600 for n in names)
        # The secret is in the entry, nowhere else; the file name does not reveal the secret id.
        assert not any("prod" in n for n in names)

    def test_transient_failure_serves_stale_value_within_window_then_fails(
        self, cache: WorkerCache, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        get(cache, Fetcher(payload(OLD)))
        clock.advance(300 + 100)  # expired; 100 s into a 300 s stale window
        fetch = Fetcher(throttled())
        with caplog.at_level(logging.WARNING, logger="airflow_sm_refs"):
            assert get(cache, fetch) == (payload(OLD), "worker cache (stale)", 400)
        assert fetch.calls == 1
        warning = caplog.records[-1]
        assert warning.levelno == logging.WARNING
        assert "'prod/db' (AWSCURRENT)" in warning.getMessage() and "ThrottlingException" in warning.getMessage()
        assert "pässword" not in caplog.text
        clock.advance(200)  # exactly at the end of the window
        with pytest.raises(SecretTransientError, match="ThrottlingException"):
            get(cache, fetch)
        assert cache.peek(KEY) is None

    def test_refreshes_are_spaced_out_while_serving_stale(
        self, cache: WorkerCache, cache_dir: Path, clock: FakeClock
    ) -> None:
        get(cache, Fetcher(payload(OLD)))
        clock.advance(301)
        fetch = Fetcher(throttled())
        assert get(cache, fetch)[1] == "worker cache (stale)"
        other = WorkerCache(str(cache_dir), timer=clock, rand=lambda: 0.0)
        clock.advance(cache.stale_retry_seconds - 1)
        assert get(other, fetch)[1] == "worker cache (stale)"
        assert fetch.calls == 1  # within the retry interval: no call, from any process
        clock.advance(1)
        recovered = Fetcher(payload(NEW))
        assert get(other, recovered) == (payload(NEW), "aws", 0)
        assert get(cache, recovered)[:2] == (payload(NEW), "worker cache")
        other.close()

    @pytest.mark.parametrize("stale", [0, 300])
    def test_permanent_failure_drops_the_value_and_is_raised(
        self, cache: WorkerCache, clock: FakeClock, stale: float
    ) -> None:
        get(cache, Fetcher(payload(OLD)))
        clock.advance(300)
        with pytest.raises(SecretNotFoundError, match="ResourceNotFoundException"):
            get(cache, Fetcher(not_found()), stale=stale)
        assert cache.peek(KEY) is None
        # Not a negative cache: the next lookup asks AWS again.
        assert get(cache, Fetcher(payload(NEW)), stale=stale)[:2] == (payload(NEW), "aws")

    def test_transient_failure_without_a_value_is_raised(self, cache: WorkerCache) -> None:
        with pytest.raises(SecretTransientError):
            get(cache, Fetcher(throttled()))
        assert get(cache, Fetcher(payload()))[1] == "aws"

    @pytest.mark.parametrize("outcome", ["value", "not found"])
    def test_a_process_waiting_on_another_ones_fetch_reads_its_outcome(
        self, cache_dir: Path, clock: FakeClock, outcome: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        leader, waiter = WorkerCache(str(cache_dir), timer=clock), WorkerCache(str(cache_dir), timer=clock)
        release = threading.Event()
        fetching = threading.Event()
        waiter_at_lock = threading.Event()
        lock_until = worker_cache._lock_until

        def watched_lock_until(fd: int, deadline: float) -> bool:
            if threading.current_thread().name == "waiter":
                waiter_at_lock.set()
            return lock_until(fd, deadline)

        monkeypatch.setattr(worker_cache, "_lock_until", watched_lock_until)

        def slow_fetch() -> SecretPayload:
            fetching.set()  # inside the leader's fetch: it holds the entry's lock
            release.wait(10)
            if outcome == "value":
                return payload(NEW)
            raise not_found()

        results: dict[str, Any] = {}

        def run(name: str, cache: WorkerCache, fetch: Any) -> None:
            try:
                results[name] = get(cache, fetch)
            except Exception as exc:  # noqa: BLE001
                results[name] = exc

        first = threading.Thread(target=run, args=("leader", leader, slow_fetch), name="leader")
        first.start()
        assert fetching.wait(10)
        waiter_fetch = Fetcher(payload(OLD))
        second = threading.Thread(target=run, args=("waiter", waiter, waiter_fetch), name="waiter")
        second.start()
        # The waiter has missed and is asking for the lock the leader holds.
        assert waiter_at_lock.wait(10), "the waiter never asked for the entry's lock"
        assert "waiter" not in results
        release.set()
        first.join(10)
        second.join(10)
        assert waiter_fetch.calls == 0
        if outcome == "value":
            assert results["leader"][:2] == (payload(NEW), "aws")
            assert results["waiter"][:2] == (payload(NEW), "worker cache")
        else:
            assert isinstance(results["leader"], SecretNotFoundError)
            assert isinstance(results["waiter"], SecretNotFoundError)
            assert str(results["waiter"]) == str(results["leader"])

    def test_gives_up_waiting_on_a_stuck_lock_and_fetches(
        self, cache_dir: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        cache = WorkerCache(str(cache_dir), timer=clock, lock_timeout=0.2)
        lock = Path(cache.lock_path(KEY))
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            started = time.monotonic()
            assert get(cache, Fetcher(payload()))[1] == "aws"
            assert time.monotonic() - started >= 0.2
        finally:
            os.close(fd)
        assert "Waited" in caplog.text

    @pytest.mark.parametrize(
        "corrupt",
        ["empty", "truncated", "header only", "body only", "one byte changed", "not json", "another key's entry"],
    )
    def test_corrupt_entry_is_a_miss(self, cache: WorkerCache, clock: FakeClock, corrupt: str) -> None:
        other_key = (*KEY[:2], "prod/other", KEY[3])
        get(cache, Fetcher(payload(OLD)))
        get(cache, Fetcher(payload(OLD)), key=other_key)
        path = Path(cache.entry_path(KEY))
        data = path.read_bytes()
        header, body = data.split(b"\n", 1)
        broken = {
            "empty": b"",
            "truncated": data[: len(data) // 2],
            "header only": header + b"\n",
            "body only": body,
            "one byte changed": data.replace(b"old-p", b"evil-"[:5]),
            "not json": b"airflow-sm-refs-entry 1 8 %s\nnot json" % hashlib.sha256(b"not json").hexdigest().encode(),
            "another key's entry": Path(cache.entry_path(other_key)).read_bytes(),
        }[corrupt]
        assert broken != data
        path.write_bytes(broken)
        fetch = Fetcher(payload(NEW))
        assert get(cache, fetch) == (payload(NEW), "aws", 0)
        assert fetch.calls == 1
        assert get(cache, fetch)[:2] == (payload(NEW), "worker cache")  # rewritten whole

    @given(
        value=st.one_of(st.text().map(lambda t: payload(string=t)), st.binary().map(lambda b: payload(None, b))),
        data=st.data(),
    )
    def test_entry_format_round_trips_and_any_cut_or_changed_byte_is_a_miss(
        self, value: SecretPayload, data: st.DataObject
    ) -> None:
        entry = worker_cache._Entry(KEY, "attempt-1", value, fetched_at=1.5e9, draw=0.25)
        encoded = worker_cache._encode(entry)
        assert worker_cache._decode(encoded, KEY) == entry
        assert worker_cache._decode(encoded, ("identity-b", *KEY[1:])) is None
        cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
        assert worker_cache._decode(encoded[:cut], KEY) is None
        at = data.draw(st.integers(0, len(encoded) - 1), label="at")
        flip = data.draw(st.integers(1, 255), label="flip")
        changed = encoded[:at] + bytes([encoded[at] ^ flip]) + encoded[at + 1 :]
        assert worker_cache._decode(changed, KEY) is None

    def test_symlinked_entry_is_not_followed(self, cache: WorkerCache, tmp_path: Path) -> None:
        get(cache, Fetcher(payload(OLD)))
        path = Path(cache.entry_path(KEY))
        planted = tmp_path / "planted"
        planted.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(planted)
        assert get(cache, Fetcher(payload(NEW)))[:2] == (payload(NEW), "aws")
        assert not path.is_symlink()  # replaced, not written through
        assert b"old-p" in planted.read_bytes()

    def test_different_identities_never_share_entries(self, cache: WorkerCache) -> None:
        other_identity = ("identity-b", *KEY[1:])
        get(cache, Fetcher(payload(OLD)))
        fetch = Fetcher(payload(NEW))
        assert get(cache, fetch, key=other_identity)[:2] == (payload(NEW), "aws")
        assert get(cache, fetch)[:2] == (payload(OLD), "worker cache")

    def test_zero_ttl_bypasses_the_tier(self, cache: WorkerCache, cache_dir: Path) -> None:
        fetch = Fetcher(payload())
        assert get(cache, fetch, ttl=0) == (payload(), "aws", 0.0)
        assert get(cache, fetch, ttl=0)[1] == "aws"
        assert os.listdir(cache_dir) == []

    def test_a_closed_cache_fetches_and_writes_nowhere(
        self, cache: WorkerCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        before = sorted(os.listdir(tmp_path))
        cache.close()
        fetch = Fetcher(payload())
        assert get(cache, fetch) == (payload(), "aws", 0)
        assert get(cache, fetch)[1] == "aws"
        assert sorted(os.listdir(tmp_path)) == before

    def test_a_directory_that_vanished_still_gives_values(
        self, cache: WorkerCache, cache_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        shutil.rmtree(cache_dir)
        with caplog.at_level(logging.DEBUG, logger="airflow_sm_refs"):
            assert get(cache, Fetcher(payload()))[:2] == (payload(), "aws")
            assert get(cache, Fetcher(payload()), key=("x", *KEY[1:]))[:2] == (payload(), "aws")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Could not write" in warnings[0].getMessage()


def make_unsafe(kind: str, path: Path, tmp_path: Path) -> Path | None:
    """Make ``path`` an unsafe directory of ``kind``; return the symlink's target, if any."""
    if kind == "open to others":
        path.mkdir()
        path.chmod(0o777)
    elif kind == "open to the group":
        path.mkdir()
        path.chmod(0o750)
    elif kind == "owned by another user":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a directory away")
        path.mkdir(mode=0o700)
        os.chown(path, OTHER_UID, OTHER_UID)
    elif kind == "a symlink":
        target = tmp_path / "target"
        target.mkdir(mode=0o700)
        path.symlink_to(target)
        return target
    elif kind == "a file":
        path.write_text("")
        path.chmod(0o600)
    return None


UNSAFE = ["open to others", "open to the group", "owned by another user", "a symlink", "a file"]


class TestOpenWorkerCache:
    def test_creates_a_private_directory(self, cache_dir: Path) -> None:
        previous = os.umask(0)
        try:
            cache = open_worker_cache(str(cache_dir))
        finally:
            os.umask(previous)
        assert isinstance(cache, WorkerCache)
        assert mode(cache_dir) == 0o700 and os.stat(cache_dir).st_uid == os.geteuid()

    @pytest.mark.parametrize("kind", UNSAFE)
    def test_refuses_an_unsafe_directory_once_and_writes_nothing(
        self, kind: str, cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        target = make_unsafe(kind, cache_dir, tmp_path)
        before = mode(cache_dir)
        with caplog.at_level(logging.WARNING, logger="airflow_sm_refs"):
            assert open_worker_cache(str(cache_dir)) is None
            assert open_worker_cache(str(cache_dir)) is None
        warnings = [r.getMessage() for r in caplog.records if r.name == "airflow_sm_refs"]
        assert len(warnings) == 1, warnings
        assert str(cache_dir) in warnings[0]
        assert mode(cache_dir) == before  # not "fixed" behind the operator's back
        if cache_dir.is_dir() and not cache_dir.is_symlink():
            assert os.listdir(cache_dir) == []
        if target is not None:
            assert os.listdir(target) == []

    def test_missing_parent_is_refused(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        assert open_worker_cache(str(tmp_path / "no" / "such")) is None
        assert "Not using" in caplog.text

    def test_memoised_per_process(self, cache_dir: Path) -> None:
        first = open_worker_cache(str(cache_dir))
        assert open_worker_cache(str(cache_dir) + "/") is first
        reset_worker_caches()
        assert open_worker_cache(str(cache_dir)) is not first

    def test_disabled_touches_nothing(self, cache_dir: Path) -> None:
        assert open_worker_cache(str(cache_dir), enabled=False) is None
        assert not cache_dir.exists()

    def test_default_directory_is_on_the_ram_filesystem(self, private_default_dir: Path) -> None:
        expected = private_default_dir / f"airflow-sm-refs-{os.geteuid()}"
        assert default_worker_cache_dir() == str(expected)
        cache = open_worker_cache(None)
        assert cache is not None and cache.directory == str(expected)
        assert mode(expected) == 0o700

    def test_no_ram_filesystem_means_no_tier(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setattr(worker_cache, "RAM_FS", str(tmp_path / "no-shm"))
        assert default_worker_cache_dir() is None
        assert open_worker_cache(None) is None

    def test_backend_kwargs(self, cache_dir: Path) -> None:
        backend = SecretsManagerRefsBackend(region_name="us-east-1", shared_cache_dir=str(cache_dir))
        assert not cache_dir.exists()  # __init__ does no disk work
        shared = backend.resolver.shared
        assert isinstance(shared, WorkerCache) and shared.directory == str(cache_dir)
        assert SecretsManagerRefsBackend(shared_cache_dir=str(cache_dir), shared_cache=False).resolver.shared is None
        assert SecretsManagerRefsBackend(shared_cache_dir=str(cache_dir), cache_ttl_seconds=0).resolver.shared is None

    def test_backend_with_an_unsafe_directory_keeps_working(
        self, aws: AwsStandIn, monkeypatch: pytest.MonkeyPatch, cache_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        make_unsafe("open to others", cache_dir, cache_dir.parent)
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        configure_backend(
            monkeypatch, region_name="us-east-1", endpoint_url=aws.endpoint_url, shared_cache_dir=str(cache_dir)
        )
        set_conn(monkeypatch, "db", CONN)
        with caplog.at_level(logging.INFO, logger="airflow_sm_refs"):
            assert get_connection("db").password == "old-pässword-1"
            assert get_connection("db").password == "old-pässword-1"
        assert aws.calls() == 1  # the in-process tier still works
        warnings = [r.getMessage() for r in caplog.records if r.name == "airflow_sm_refs" and r.levelno > logging.INFO]
        assert len(warnings) == 1 and "Not using" in warnings[0]
        assert os.listdir(cache_dir) == []


class TestClearWorkerCache:
    def test_removes_every_entry_and_the_next_lookup_fetches(self, cache: WorkerCache, cache_dir: Path) -> None:
        get(cache, Fetcher(payload(OLD)))
        get(cache, Fetcher(payload(OLD)), key=("identity-b", *KEY[1:]))
        (cache_dir / "not-ours.txt").write_text("left alone")
        assert clear_worker_cache(str(cache_dir)) == 2
        assert os.listdir(cache_dir) == ["not-ours.txt"]
        fetch = Fetcher(payload(NEW))
        assert get(cache, fetch)[:2] == (payload(NEW), "aws")
        assert clear_worker_cache(str(cache_dir)) == 1

    def test_default_directory(self, private_default_dir: Path) -> None:
        cache = open_worker_cache(None)
        assert cache is not None
        get(cache, Fetcher(payload()))
        assert clear_worker_cache() == 1

    def test_missing_directory_is_empty(self, tmp_path: Path) -> None:
        assert clear_worker_cache(str(tmp_path / "never-made")) == 0

    @pytest.mark.parametrize("kind", ["open to others", "owned by another user", "a symlink"])
    def test_refuses_an_unsafe_directory(self, kind: str, cache_dir: Path, tmp_path: Path) -> None:
        target = make_unsafe(kind, cache_dir, tmp_path)
        planted = (target or cache_dir) / ("0" * 64 + ".entry")
        planted.write_text("")
        with pytest.raises(PermissionError, match=str(cache_dir)):
            clear_worker_cache(str(cache_dir))
        assert planted.exists()


# --- real task processes ------------------------------------------------------
@pytest.fixture(scope="module")
def task_processes(tmp_path_factory: pytest.TempPathFactory, aws_server: AwsStandIn) -> Iterator[TaskProcesses]:
    """A warm parent that forks task processes, as a worker does."""
    with TaskProcesses(tmp_path_factory.mktemp("task-processes") / "stderr.log") as processes:
        yield processes


def task_env(aws: AwsStandIn, cache_dir: Path, **backend_kwargs: Any) -> dict[str, str | None]:
    """What a task process sees: the plugin as ``[secrets] backend`` and one connection."""
    kwargs = {"region_name": "us-east-1", "endpoint_url": aws.endpoint_url, "shared_cache_dir": str(cache_dir)}
    return {
        "AIRFLOW__SECRETS__BACKEND": BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({**kwargs, **backend_kwargs}),
        "AIRFLOW_CONN_DB": json.dumps(CONN),
    }


def entry_expiry(env: dict[str, str | None]) -> float:
    """When the entry the task processes share expires (wall clock), read as a task process would find it."""
    kwargs = json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"] or "{}")
    resolver = SecretsManagerRefsBackend(**kwargs).resolver
    assert resolver.shared is not None
    held = resolver.shared.peek(resolver.cache_key(parse_reference(REFERENCE)), resolver.cache_ttl_seconds)
    assert held is not None, "no entry"
    return held[1]


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def sources(results: list[dict[str, Any]]) -> list[str]:
    """Where each task process's value came from, as its log line says."""
    found = []
    for result in results:
        lines = [msg for _, msg in result["log"] if msg.endswith(": ok")]
        found.append(lines[0].rsplit(" from ", 1)[1].rsplit(" in ", 1)[0] if lines else "-")
    return found


def assert_values(results: list[dict[str, Any]], secret: str) -> None:
    expected = digest(json.loads(secret)["password"])
    assert [r.get("digest") == expected for r in results] == [True] * len(results), results
    assert_no_value_logged(results)


def assert_no_value_logged(results: list[dict[str, Any]]) -> None:
    for result in results:
        for _, message in result["log"]:
            assert "pässword" not in message


class TestAcrossTaskProcesses:
    def test_eight_processes_at_once_make_one_fetch(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        results = task_processes.run(8, task_env(aws, cache_dir))
        assert_values(results, OLD)
        assert aws.calls() == 1
        assert sorted(sources(results)) == ["aws"] + ["worker cache"] * 7
        assert len({r["pid"] for r in results}) == 8

    def test_fresh_interpreters_at_once_make_one_fetch(self, aws: AwsStandIn, cache_dir: Path, tmp_path: Path) -> None:
        # As above, with nothing inherited through a fork (3, not 8: each imports Airflow, ~5 s of CPU).
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        results = spawn_lookups(3, task_env(aws, cache_dir), tmp_path)
        assert_values(results, OLD)
        assert aws.calls() == 1

    def test_later_processes_within_the_ttl_make_no_call(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        env = task_env(aws, cache_dir)
        task_processes.run(1, env)
        aws.reset_counts()
        for _ in range(3):
            results = task_processes.run(4, env)
            assert_values(results, OLD)
            assert sources(results) == ["worker cache"] * 4
        assert aws.calls() == 0

    @pytest.mark.wallclock
    def test_rotation_is_seen_after_expiry(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        # Margins for a loaded 2-core machine, where starting 4 task processes takes seconds.
        env = task_env(aws, cache_dir, cache_ttl_seconds=20)
        assert_values(task_processes.run(4, env), OLD)
        expires = entry_expiry(env)
        aws.client().put_secret_value(SecretId="prod/db", SecretString=NEW)
        assert_values(task_processes.run(4, env), OLD)  # still fresh: served as cached
        sleep_until(expires + 0.05)
        aws.reset_counts()
        assert_values(task_processes.run(8, env), NEW)
        assert aws.calls() == 1

    @pytest.mark.parametrize("how", ["deleted", "access revoked"])
    def test_gone_secret_fails_after_expiry_and_no_process_gets_the_old_value(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path, how: str
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        # negative_cache_seconds=0: this test is about the value being dropped;
        # remembering the failure itself is tests/test_negative_cache.py's subject.
        env = task_env(aws, cache_dir, cache_ttl_seconds=1, stale_if_error_seconds=300, negative_cache_seconds=0)
        assert_values(task_processes.run(1, env), OLD)
        expires = entry_expiry(env)
        if how == "deleted":
            aws.client().delete_secret(SecretId="prod/db", ForceDeleteWithoutRecovery=True)
        sleep_until(expires + 0.05)
        with aws.failing(ACCESS_DENIED) if how == "access revoked" else contextlib.nullcontext():
            results = task_processes.run(8, env)
        error = "SecretNotFoundError" if how == "deleted" else "SecretAccessDeniedError"
        assert [r.get("error") for r in results] == [error] * 8, results
        assert not any("digest" in r for r in results)
        assert all("prod/db" in r["message"] for r in results)
        assert_no_value_logged(results)
        # The value is dropped, not kept for later.
        aws.reset_counts()
        (result,) = task_processes.run(1, env)
        if how == "deleted":
            assert result.get("error") == error
        else:  # access restored: the current value, fetched anew
            assert_values([result], OLD)
        assert aws.calls() == 1

    @pytest.mark.wallclock
    @pytest.mark.parametrize("fault", [THROTTLING, INTERNAL_ERROR], ids=["throttling", "5xx"])
    def test_transient_failure_serves_stale_value_within_window_then_fails(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path, fault: InjectedFault
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        env = task_env(
            aws,
            cache_dir,
            cache_ttl_seconds=1,
            # Wide enough that a burst of task processes on a loaded 2-core machine all fall inside it.
            stale_if_error_seconds=20,
            # One attempt per fetch (botocore's max_attempts counts retries, total_max_attempts all tries).
            config_kwargs={"retries": {"total_max_attempts": 1, "mode": "standard"}},
        )
        assert_values(task_processes.run(1, env), OLD)
        expires = entry_expiry(env)
        sleep_until(expires + 0.05)
        aws.reset_counts()
        with aws.failing(fault):
            within = task_processes.run(4, env)
            assert_values(within, OLD)
            assert sources(within) == ["worker cache (stale)"] * 4
            assert aws.calls() == 1  # one attempt for the whole worker
            for result in within:
                warnings = [m for level, m in result["log"] if level == "WARNING"]
                assert len(warnings) == 1 and "'prod/db' (AWSCURRENT)" in warnings[0] and fault.code in warnings[0]
            sleep_until(expires + 20 + 0.05)
            outside = task_processes.run(2, env)
        assert [r.get("error") for r in outside] == ["SecretTransientError"] * 2, outside
        assert all(fault.code in r["message"] for r in outside)
        aws.reset_counts()
        assert_values(task_processes.run(2, env), OLD)  # AWS is back
        assert aws.calls() == 1

    @pytest.mark.parametrize("kind", ["open to others", "owned by another user", "a symlink"])
    def test_unsafe_directory_is_refused_and_nothing_is_written(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path, tmp_path: Path, kind: str
    ) -> None:
        target = make_unsafe(kind, cache_dir, tmp_path)
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        results = task_processes.run(3, task_env(aws, cache_dir))
        assert_values(results, OLD)
        assert aws.calls() == 3  # no sharing, but every task gets its value
        for result in results:
            warnings = [m for level, m in result["log"] if level == "WARNING"]
            assert len(warnings) == 1 and "Not using" in warnings[0] and str(cache_dir) in warnings[0]
        assert os.listdir(target if target is not None else cache_dir) == []

    def test_truncated_entry_is_a_miss(self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        env = task_env(aws, cache_dir)
        task_processes.run(1, env)
        entries = list(cache_dir.glob("*.entry"))  # one per spelling of the secret: name, partial and full ARN
        assert len(entries) == 3
        for entry in entries:
            data = entry.read_bytes()
            entry.write_bytes(data[: len(data) - 20])
        aws.reset_counts()
        results = task_processes.run(4, env)
        assert_values(results, OLD)
        assert aws.calls() == 1
        assert entry.read_bytes() != data[: len(data) - 20]

    def test_cache_clear_forces_the_next_lookup_to_fetch(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        env = task_env(aws, cache_dir)
        task_processes.run(1, env)
        aws.client().put_secret_value(SecretId="prod/db", SecretString=NEW)
        assert_values(task_processes.run(2, env), OLD)
        assert clear_worker_cache(str(cache_dir)) == 3  # the secret under its name, partial and full ARN
        aws.reset_counts()
        results = task_processes.run(4, env)
        assert_values(results, NEW)
        assert aws.calls() == 1

    def test_different_identities_never_read_each_others_entries(
        self, aws: AwsStandIn, task_processes: TaskProcesses, cache_dir: Path
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString=OLD)
        env = task_env(aws, cache_dir)
        other_credentials = {**env, "AWS_ACCESS_KEY_ID": "AKIAOTHERWORKERROLE"}
        other_endpoint = {**task_env(aws, cache_dir, endpoint_url=aws.endpoint_url + "/")}
        for variant in (env, other_credentials, other_endpoint):
            aws.reset_counts()
            assert sorted(sources(task_processes.run(2, variant))) == ["aws", "worker cache"]
            assert aws.calls() == 1
        assert len(list(cache_dir.glob("*.entry"))) == 3 * 3  # three identities, each the secret's three spellings
