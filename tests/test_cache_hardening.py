"""Issue 10, cache items: each fails on the code before the hardening.

- 5: every reader applies its own TTL and stale window to the fetch time.
- 6: a 200 answer without a secret is an error, cached nowhere.
- 8: the cache directory stays bounded.
- 9: credential errors are denials: no stale value.
- 10: each waiter of a shared fetch gets its own error.
- 11: a fork during a fetch leaves the child working.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_sm_refs import SecretAccessDeniedError, SecretNotFoundError, SecretTransientError, parse_reference
from airflow_sm_refs._aws import RegionalClients
from airflow_sm_refs._worker_entry import _decode, _Entry
from airflow_sm_refs.cache import TTLCache
from airflow_sm_refs.fetch import SecretPayload, fetch_secret
from airflow_sm_refs.resolver import CacheSettings, SecretResolver
from airflow_sm_refs.worker_cache import LOCK_STRIPES, WorkerCache
from standins.aws import AwsStandIn
from tests.conftest import FakeClock, configure_backend, get_connection, lookup_fails, set_conn
from tests.test_worker_cache import Fetcher

pytestmark = pytest.mark.compat

KEY = ("identity-a", "us-east-1", "prod/db", "stage:AWSCURRENT")


def payload(string: str = '{"password": "pässword-1"}', version: str = "v1") -> SecretPayload:
    return SecretPayload("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf", version, string, None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "worker-cache"


def worker(cache_dir: Path, clock: FakeClock, **kwargs: Any) -> WorkerCache:
    kwargs.setdefault("rand", lambda: 0.0)
    return WorkerCache(str(cache_dir), timer=clock, **kwargs)


def boto_client(endpoint_url: str, **kwargs: Any) -> Any:
    import boto3
    from botocore.config import Config

    from airflow_sm_refs._aws import quiet_secret_bodies

    quiet_secret_bodies()  # as the plugin's own clients do
    # A session of its own: boto3's default one keeps the credentials it found first.
    return boto3.session.Session().client(
        "secretsmanager",
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=5),
        **kwargs,
    )


# --- item 5 -----------------------------------------------------------------------------
class TestEachReadersTTL:
    def test_a_short_ttl_reader_is_not_served_a_long_ttl_writers_old_entry(self, cache_dir: Path, clock: FakeClock) -> None:
        writer, reader = worker(cache_dir, clock), worker(cache_dir, clock)
        writer.get_or_fetch(KEY, Fetcher(payload(version="v1")), ttl=3600, stale_if_error=0)
        clock.advance(30 * 60)
        fetch = Fetcher(payload(version="v2"))
        served, source, age = reader.get_or_fetch(KEY, fetch, ttl=60, stale_if_error=0)
        assert (served.version_id, source, age) == ("v2", "aws", 0)
        assert fetch.calls == 1
        # ...and the writer, at its own TTL, now reads the newer fetch.
        assert writer.get_or_fetch(KEY, Fetcher(SecretNotFoundError("x")), ttl=3600, stale_if_error=0)[:2] == (
            payload(version="v2"),
            "worker cache",
        )

    def test_each_readers_stale_window_counts_from_the_fetch(self, cache_dir: Path, clock: FakeClock) -> None:
        worker(cache_dir, clock).get_or_fetch(KEY, Fetcher(payload()), ttl=3600, stale_if_error=3600)
        clock.advance(100)
        reader = worker(cache_dir, clock)
        with pytest.raises(SecretTransientError):  # 100 s after the fetch: past 60 + 30
            reader.get_or_fetch(KEY, Fetcher(SecretTransientError("throttled")), ttl=60, stale_if_error=30)

    def test_the_process_tier_applies_each_callers_ttl(self) -> None:
        clock = FakeClock()
        cache: TTLCache[str] = TTLCache(timer=clock, jitter=0)
        cache.get_or_load("k", lambda: "old", ttl=3600)
        clock.advance(120)
        assert cache.get_or_load("k", lambda: "new", ttl=60).value == "new"
        assert cache.peek("k", 60) == "new"

    def test_a_worker_entry_keeps_its_age_in_the_process_tier(self, cache_dir: Path, clock: FakeClock) -> None:
        # Fetched 50 s ago by another process: this process may keep it 10 s more, not 60.
        worker(cache_dir, clock).get_or_fetch(KEY, Fetcher(payload(version="v1")), ttl=60, stale_if_error=0)
        clock.advance(50)
        ref = parse_reference("{{workato:sm::prod/db}}")
        clients = RegionalClients(lambda region: None, "us-east-1", KEY[0])
        resolver = SecretResolver(
            clients, cache_ttl_seconds=60, stale_if_error_seconds=0, cache=TTLCache(timer=clock, jitter=0), shared=worker(cache_dir, clock)
        )
        assert resolver.payload(ref) == (payload(version="v1"), "worker cache")
        clock.advance(9)
        assert resolver.payload(ref)[1] == "process cache"
        clock.advance(1)
        assert resolver.cache.peek(resolver.cache_key(ref), 60) is None

    @given(ttl=st.floats(0.001, 1e6), jitter=st.floats(0, 1), draw=st.floats(0, 1, exclude_max=True))
    def test_jitter_only_ever_shortens(self, ttl: float, jitter: float, draw: float) -> None:
        entry = _Entry(KEY, "a", payload(), fetched_at=1000.0, draw=draw)
        assert entry.lifetime(ttl, jitter) <= ttl
        assert not entry.is_fresh(1000.0 + ttl, ttl, jitter)

    def test_an_entry_from_the_future_is_not_fresh(self, cache_dir: Path, clock: FakeClock) -> None:
        worker(cache_dir, clock).get_or_fetch(KEY, Fetcher(payload(version="v1")), ttl=300, stale_if_error=0)
        clock.advance(-3600)  # the wall clock stepped back an hour
        assert worker(cache_dir, clock).get_or_fetch(KEY, Fetcher(payload(version="v2")), ttl=300, stale_if_error=0)[1] == "aws"


# --- item 6 -----------------------------------------------------------------------------
class _LoginPage(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>Please sign in to the proxy</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def login_page() -> Iterator[str]:
    """A proxy that answers every request with 200 and an HTML page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LoginPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class TestAnswerWithoutASecret:
    def test_is_a_transient_error_cached_in_neither_tier(self, login_page: str, cache_dir: Path, clock: FakeClock) -> None:
        clients = RegionalClients(lambda region: boto_client(login_page, aws_access_key_id="k", aws_secret_access_key="s"), "us-east-1", "html")
        ref = parse_reference("{{workato:sm::prod/db}}")
        with pytest.raises(SecretTransientError, match="without SecretString or SecretBinary"):
            fetch_secret(clients, ref)
        shared = worker(cache_dir, clock)
        resolver = SecretResolver(clients, cache=TTLCache(timer=clock), shared=shared)
        for _ in range(2):  # and again: nothing was kept
            with pytest.raises(SecretTransientError):
                resolver.resolve(ref)
        assert len(resolver.cache) == 0
        assert shared.peek(resolver.cache_key(ref)) is None

    def test_fails_the_lookup_through_airflow(
        self, login_page: str, monkeypatch: pytest.MonkeyPatch, cache_dir: Path, aws: AwsStandIn
    ) -> None:
        configure_backend(monkeypatch, region_name="us-east-1", endpoint_url=login_page, shared_cache_dir=str(cache_dir))
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:prod/db}}"})
        with lookup_fails(SecretTransientError, match="without SecretString"):
            get_connection("db")
        assert not any(holds_a_value(p) for p in entries(cache_dir))


def _key_of(path: Path) -> tuple[str, ...]:
    return tuple(json.loads(path.read_bytes().split(b"\n", 1)[1])["key"])


# --- item 8 -----------------------------------------------------------------------------
def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.entry"))


def holds_a_value(path: Path) -> bool:
    entry = _decode(path.read_bytes(), _key_of(path))
    return entry is not None and entry.payload is not None


class TestBoundedDirectory:
    def test_failing_references_leave_no_value_and_a_fixed_set_of_lock_files(self, cache_dir: Path, clock: FakeClock) -> None:
        cache = worker(cache_dir, clock)
        for i in range(200):
            key = (*KEY[:2], f"missing/{i}", KEY[3])
            with pytest.raises(SecretNotFoundError):
                cache.get_or_fetch(key, Fetcher(SecretNotFoundError(f"missing/{i}")), ttl=300, stale_if_error=300)
        assert len(list(cache_dir.glob("*.lock"))) <= LOCK_STRIPES
        assert not any(holds_a_value(p) for p in entries(cache_dir))
        assert not list(cache_dir.glob(".*.tmp"))

    def test_a_permanent_failure_removes_the_value_even_when_the_record_cannot_be_written(
        self, cache_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = worker(cache_dir, clock)
        cache.get_or_fetch(KEY, Fetcher(payload()), ttl=60, stale_if_error=300)
        clock.advance(61)
        monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        with pytest.raises(SecretNotFoundError):
            cache.get_or_fetch(KEY, Fetcher(SecretNotFoundError("gone")), ttl=60, stale_if_error=300)
        monkeypatch.undo()
        assert not any(holds_a_value(p) for p in entries(cache_dir))
        assert not list(cache_dir.glob(".*.tmp"))

    def test_entries_past_ttl_and_stale_window_are_deleted_by_the_next_write(self, cache_dir: Path, clock: FakeClock) -> None:
        cache = worker(cache_dir, clock)
        cache.get_or_fetch(KEY, Fetcher(payload()), ttl=60, stale_if_error=30)
        first = Path(cache.entry_path(KEY))
        clock.advance(89)
        cache.get_or_fetch((*KEY[:2], "other", KEY[3]), Fetcher(payload()), ttl=60, stale_if_error=30)
        assert first.exists()  # still within 60 + 30
        clock.advance(1)
        cache.get_or_fetch((*KEY[:2], "third", KEY[3]), Fetcher(payload()), ttl=60, stale_if_error=30)
        assert not first.exists()
        assert len(entries(cache_dir)) == 2

    def test_size_cap_evicts_the_oldest_fetched_first(self, cache_dir: Path, clock: FakeClock) -> None:
        cache = worker(cache_dir, clock, max_entries=5)
        keys = [(*KEY[:2], f"s{i}", KEY[3]) for i in range(8)]
        for key in keys:
            cache.get_or_fetch(key, Fetcher(payload()), ttl=3600, stale_if_error=0)
            clock.advance(1)
        assert {p.name for p in entries(cache_dir)} == {Path(cache.entry_path(k)).name for k in keys[3:]}

    def test_a_dead_writers_temporary_file_is_removed(self, cache_dir: Path, clock: FakeClock) -> None:
        cache = worker(cache_dir, clock)
        cache.get_or_fetch(KEY, Fetcher(payload()), ttl=60, stale_if_error=0)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)  # a pid that no longer runs
        litter = cache_dir / f".{'a' * 64}.{pid}.0badf00d.tmp"
        litter.write_text("half a value")
        alive = cache_dir / f".{'b' * 64}.{os.getpid()}.0badf00d.tmp"  # a write in progress here
        alive.write_text("")
        cache.get_or_fetch((*KEY[:2], "other", KEY[3]), Fetcher(payload()), ttl=60, stale_if_error=0)
        assert not litter.exists() and alive.exists()

    def test_cache_settings_carry_the_cap_to_the_worker_cache(self, cache_dir: Path) -> None:
        assert CacheSettings().shared_cache_max_entries == 1000
        clients = RegionalClients(lambda region: None, "us-east-1", "id")
        shared = CacheSettings(shared_cache_dir=str(cache_dir), shared_cache_max_entries=3).resolver_for(clients).shared
        assert isinstance(shared, WorkerCache) and shared.max_entries == 3
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="shared_cache_max_entries"):
                CacheSettings(shared_cache_max_entries=bad)  # type: ignore[arg-type]


# --- item 9 -----------------------------------------------------------------------------
@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An environment where botocore's credential chain finds nothing (as after an instance role is removed)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


class TestCredentialErrors:
    def test_no_credentials_is_access_denied(self, aws: AwsStandIn, no_credentials: None) -> None:
        clients = RegionalClients(lambda region: boto_client(aws.endpoint_url), "us-east-1", "none")
        with pytest.raises(SecretAccessDeniedError, match="NoCredentialsError"):
            fetch_secret(clients, parse_reference("{{workato:sm::prod/db}}"))

    def test_a_failing_credential_provider_is_access_denied(self, aws: AwsStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        config = tmp_path / "config"
        config.write_text("[profile broken]\ncredential_process = /bin/false\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))

        def make_client(region: str | None) -> Any:
            import boto3

            return boto3.session.Session(profile_name="broken").client(
                "secretsmanager", region_name="us-east-1", endpoint_url=aws.endpoint_url
            )

        clients = RegionalClients(make_client, "us-east-1", "broken")
        with pytest.raises(SecretAccessDeniedError, match="CredentialRetrievalError"):
            fetch_secret(clients, parse_reference("{{workato:sm::prod/db}}"))

    def test_losing_credentials_serves_no_stale_value(
        self, aws: AwsStandIn, cache_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        aws.client().create_secret(Name="prod/db", SecretString="creds-value-1")
        ref = parse_reference("{{workato:sm::prod/db}}")
        cache: TTLCache[SecretPayload] = TTLCache(timer=clock, jitter=0)
        good = RegionalClients(lambda region: boto_client(aws.endpoint_url), "us-east-1", "worker-role")
        before = SecretResolver(good, 60, 600, cache=cache, shared=worker(cache_dir, clock))
        assert before.resolve(ref).value == "creds-value-1"
        clock.advance(61)  # expired, well within the stale window
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        lost = RegionalClients(lambda region: boto_client(aws.endpoint_url), "us-east-1", "worker-role")
        after = SecretResolver(lost, 60, 600, cache=cache, shared=worker(cache_dir, clock))
        with pytest.raises(SecretAccessDeniedError):
            after.resolve(ref)
        assert len(cache) == 0 and after.shared is not None and after.shared.peek(after.cache_key(ref)) is None


# --- item 10 ----------------------------------------------------------------------------
def located_concurrently(lookup: Callable[[], Any], conn_ids: list[str], started: threading.Event) -> dict[str, BaseException]:
    """Run one lookup per connection at once; each adds its connection to the error it gets."""
    errors: dict[str, BaseException] = {}

    def run(conn_id: str) -> None:
        try:
            lookup()
        except SecretNotFoundError as exc:
            errors[conn_id] = exc.located(conn_id=conn_id, field="password")

    threads = [threading.Thread(target=run, args=(c,)) for c in conn_ids]
    threads[0].start()
    assert started.wait(5)
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)  # the others are waiting on the first one's fetch
    release.set()
    for t in threads:
        t.join(10)
    return errors


#: lets the first lookup's fetch finish
release = threading.Event()


class TestEachWaiterItsOwnError:
    @pytest.mark.parametrize("tier", ["process", "worker"])
    def test_one_lookups_context_never_shows_in_anothers(self, tier: str, cache_dir: Path) -> None:
        release.clear()
        started = threading.Event()

        def slow_not_found() -> SecretPayload:
            started.set()
            release.wait(5)
            raise SecretNotFoundError("secret 'prod/db' (AWSCURRENT): ResourceNotFoundException", reference="{{workato:sm::prod/db}}")

        if tier == "process":
            cache: TTLCache[SecretPayload] = TTLCache()

            def lookup() -> Any:
                return cache.get_or_load(KEY, slow_not_found, ttl=60)
        else:
            def lookup() -> Any:  # each thread as its own task process would: its own instance
                return WorkerCache(str(cache_dir)).get_or_fetch(KEY, slow_not_found, ttl=60, stale_if_error=0)

        conn_ids = ["warehouse", "reporting", "billing"]
        errors = located_concurrently(lookup, conn_ids, started)
        assert sorted(errors) == sorted(conn_ids)
        for conn_id, error in errors.items():
            others = [c for c in conn_ids if c != conn_id]
            assert f"connection {conn_id!r}" in str(error)
            assert not any(o in str(error) for o in others), str(error)
        assert len({id(e) for e in errors.values()}) == 3


# --- item 11 ----------------------------------------------------------------------------
def in_fork(child: Callable[[], str], timeout: float = 10.0) -> str:
    """Run ``child`` in a forked process; its result, or ``"hung"`` after ``timeout`` seconds."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            result = child()
        except BaseException as exc:  # noqa: BLE001
            result = f"{type(exc).__name__}: {exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return "hung"
        return os.read(read_end, 4096).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


class TestFork:
    def test_a_fork_during_a_load_leaves_the_child_working(self) -> None:
        cache: TTLCache[str] = TTLCache()
        in_flight, done = threading.Event(), threading.Event()

        def parent_load() -> str:
            in_flight.set()
            done.wait(10)
            return "parent"

        thread = threading.Thread(target=lambda: cache.get_or_load("k", parent_load, ttl=60))
        thread.start()
        try:
            assert in_flight.wait(5)
            assert in_fork(lambda: cache.get_or_load("k", lambda: "child", ttl=60).value) == "child"
        finally:
            done.set()
            thread.join(5)
        assert cache.get_or_load("k", lambda: "again", ttl=60).value == "parent"

    def test_a_fork_while_a_client_is_being_built_leaves_the_child_working(self) -> None:
        parent = os.getpid()
        building, done = threading.Event(), threading.Event()

        def make_client(region: str | None) -> Any:
            if os.getpid() == parent and region == "eu-west-1":
                building.set()
                done.wait(10)
            return object()

        clients = RegionalClients(make_client, "us-east-1", "id")
        before = clients.client("us-east-1")
        thread = threading.Thread(target=clients.client, args=("eu-west-1",))
        thread.start()
        try:
            assert building.wait(5)
            child = in_fork(lambda: "new" if clients.client("us-east-1") is not before else "inherited")
            assert child == "new"  # built in the child, not the parent's (its sockets are the parent's)
        finally:
            done.set()
            thread.join(5)

    def test_a_child_forked_during_a_fetch_does_not_hold_the_lock(self, cache_dir: Path) -> None:
        fetching, done = threading.Event(), threading.Event()
        parent_cache = WorkerCache(str(cache_dir))

        def slow_fetch() -> SecretPayload:
            fetching.set()
            done.wait(10)
            return payload()

        thread = threading.Thread(target=parent_cache.get_or_fetch, args=(KEY, slow_fetch), kwargs={"ttl": 60, "stale_if_error": 0})
        thread.start()
        assert fetching.wait(5)
        # A long-lived child (a task process) forked while the parent holds the entry's lock...
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
        os.close(read_end)
        try:
            done.set()
            thread.join(5)
            # ...must not keep it locked: another process's miss an hour later is not kept waiting.
            other = WorkerCache(str(cache_dir), lock_timeout=3, timer=lambda: time.time() + 3600)
            started = time.monotonic()
            assert other.get_or_fetch(KEY, Fetcher(payload()), ttl=60, stale_if_error=0)[1] == "aws"
            assert time.monotonic() - started < 2
        finally:
            os.close(write_end)
            os.waitpid(pid, 0)
