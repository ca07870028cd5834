"""The in-process tier: expiry with a fake clock, jitter, size bound, single-flight, stale-if-error."""

from __future__ import annotations

import json
import threading

import pytest

from airflow_sm_refs import SecretNotFoundError, SecretsManagerRefsBackend, SecretTransientError
from airflow_sm_refs._aws import clients_for_settings
from airflow_sm_refs.cache import TTLCache, jittered_ttl
from airflow_sm_refs.resolver import SecretResolver, _is_transient
from standins.aws import INTERNAL_ERROR, THROTTLING, AwsStandIn
from tests.conftest import FakeClock, lookup_fails, set_conn

pytestmark = pytest.mark.compat


class Transient(Exception):
    pass


class TestTTLCache:
    def test_value_served_until_expiry_then_reloaded(self) -> None:
        clock = FakeClock()
        cache: TTLCache[str] = TTLCache(timer=clock, jitter=0)
        loads: list[int] = []

        def load() -> str:
            loads.append(1)
            return f"v{len(loads)}"

        assert cache.get_or_load("k", load, ttl=60).value == "v1"
        clock.advance(59.9)
        assert cache.get_or_load("k", load, ttl=60).source == "hit"
        clock.advance(0.2)
        result = cache.get_or_load("k", load, ttl=60)
        assert (result.value, result.source) == ("v2", "load")

    def test_jitter_only_ever_shortens(self) -> None:
        assert jittered_ttl(300, 0.1, lambda: 0.0) == 300
        assert jittered_ttl(300, 0.1, lambda: 0.999) == pytest.approx(270.03)
        clock = FakeClock()
        cache: TTLCache[str] = TTLCache(timer=clock, jitter=0.1, rand=lambda: 1.0)
        cache.get_or_load("k", lambda: "v", ttl=100)
        clock.advance(90.01)
        assert cache.get_or_load("k", lambda: "new", ttl=100).value == "new"

    def test_size_is_bounded_least_recently_used_first(self) -> None:
        cache: TTLCache[int] = TTLCache(maxsize=3, timer=FakeClock())
        for i in range(3):
            cache.get_or_load(i, lambda i=i: i, ttl=60)
        cache.get_or_load(0, lambda: -1, ttl=60)  # touch 0
        cache.get_or_load(3, lambda: 3, ttl=60)  # evicts 1
        assert len(cache) == 3
        assert cache.get_or_load(1, lambda: 100, ttl=60).value == 100
        assert cache.get_or_load(0, lambda: -1, ttl=60).source == "hit"

    @staticmethod
    def _all_callers_arrived(callers: int) -> tuple[FakeClock, threading.Event]:
        """A clock that tells when ``callers`` lookups have checked the cache.

        ``get_or_load`` reads the clock once on entry, under its lock, before
        it joins or starts a load; the leader's loader waits for every caller
        to have done so, so all of them really arrive during the one load.
        """
        arrived = threading.Event()
        count = 0
        count_lock = threading.Lock()
        base = FakeClock()

        def clock() -> float:
            nonlocal count
            with count_lock:
                count += 1
                if count >= callers:
                    arrived.set()
            return base()

        return clock, arrived  # type: ignore[return-value]

    def test_concurrent_misses_make_one_load(self) -> None:
        callers = 16
        clock, arrived = self._all_callers_arrived(callers)
        cache: TTLCache[str] = TTLCache(timer=clock)
        loads = 0
        start = threading.Barrier(callers)

        def slow_load() -> str:
            nonlocal loads
            loads += 1
            assert arrived.wait(10), "not every caller reached the cache during the load"
            return "value"

        results: list[str] = []

        def caller() -> None:
            start.wait(10)
            results.append(cache.get_or_load("k", slow_load, ttl=60).value)

        threads = [threading.Thread(target=caller) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert arrived.is_set()
        assert loads == 1
        assert results == ["value"] * callers

    def test_concurrent_waiters_share_the_failure(self) -> None:
        callers = 4
        clock, arrived = self._all_callers_arrived(callers)
        cache: TTLCache[str] = TTLCache(timer=clock)
        loads = 0
        start = threading.Barrier(callers)

        def failing() -> str:
            nonlocal loads
            loads += 1
            assert arrived.wait(10), "not every caller reached the cache during the load"
            raise SecretNotFoundError("gone")

        errors: list[BaseException] = []

        def worker() -> None:
            start.wait(10)
            try:
                cache.get_or_load("k", failing, ttl=60)
            except SecretNotFoundError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert loads == 1  # one failed load, its error handed to every waiter
        assert len(errors) == callers
        assert len({id(e) for e in errors}) == callers  # each waiter its own copy
        assert len(cache) == 0

    def test_stale_value_only_for_transient_errors_within_window(self) -> None:
        clock = FakeClock()
        cache: TTLCache[str] = TTLCache(timer=clock, jitter=0)
        cache.get_or_load("k", lambda: "old", ttl=10, stale_if_error=30)

        def fail_transient() -> str:
            raise Transient

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, Transient)

        clock.advance(15)
        result = cache.get_or_load("k", fail_transient, ttl=10, stale_if_error=30, is_transient=transient)
        assert (result.value, result.source) == ("old", "stale")
        clock.advance(30)  # 45 s after load: past expiry + window
        with pytest.raises(Transient):
            cache.get_or_load("k", fail_transient, ttl=10, stale_if_error=30, is_transient=transient)

    def test_permanent_error_drops_the_entry(self) -> None:
        clock = FakeClock()
        cache: TTLCache[str] = TTLCache(timer=clock, jitter=0)
        cache.get_or_load("k", lambda: "old", ttl=10, stale_if_error=30)
        clock.advance(11)

        def gone() -> str:
            raise SecretNotFoundError("gone")

        with pytest.raises(SecretNotFoundError):
            cache.get_or_load("k", gone, ttl=10, stale_if_error=30, is_transient=_is_transient)
        assert len(cache) == 0

    def test_zero_ttl_caches_nothing(self) -> None:
        cache: TTLCache[int] = TTLCache()
        counter = iter(range(10))
        assert cache.get_or_load("k", lambda: next(counter), ttl=0).value == 0
        assert cache.get_or_load("k", lambda: next(counter), ttl=0).value == 1


@pytest.fixture
def clocked_backend(backend_configured: AwsStandIn) -> tuple[SecretsManagerRefsBackend, FakeClock]:
    """A backend whose in-process cache runs on a fake clock (TTL 300 s, no jitter)."""
    clock = FakeClock()
    backend = SecretsManagerRefsBackend(region_name="us-east-1", endpoint_url=backend_configured.endpoint_url)
    backend.resolver = SecretResolver(
        clients_for_settings(backend.aws_settings),
        cache_ttl_seconds=300,
        stale_if_error_seconds=120,
        cache=TTLCache(timer=clock, jitter=0),
    )
    return backend, clock


class TestExpiryThroughTheBackend:
    def test_rotation_is_picked_up_after_ttl(
        self, clocked_backend: tuple[SecretsManagerRefsBackend, FakeClock], backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        backend, clock = clocked_backend
        client = backend_configured.client()
        client.create_secret(Name="rot", SecretString=json.dumps({"password": "before-rotation"}))
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm:password:rot}}"})
        assert backend.get_connection("db").password == "before-rotation"
        client.put_secret_value(SecretId="rot", SecretString=json.dumps({"password": "after-rotation"}))
        clock.advance(299)
        assert backend.get_connection("db").password == "before-rotation"  # cached, as documented
        clock.advance(2)
        assert backend.get_connection("db").password == "after-rotation"
        assert backend_configured.calls() == 2

    def test_deleted_secret_fails_after_ttl_and_is_dropped(
        self, clocked_backend: tuple[SecretsManagerRefsBackend, FakeClock], backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        backend, clock = clocked_backend
        client = backend_configured.client()
        client.create_secret(Name="doomed", SecretString="doomed-value")
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm::doomed}}"})
        assert backend.get_connection("db").password == "doomed-value"
        client.delete_secret(SecretId="doomed", ForceDeleteWithoutRecovery=True)
        clock.advance(301)
        for _ in range(2):  # the entry is gone: every later lookup asks AWS again and fails
            with lookup_fails(SecretNotFoundError, match="doomed"):
                backend.get_connection("db")
        assert backend_configured.calls() == 3

    def test_revoked_access_fails_after_ttl_even_within_stale_window(
        self, clocked_backend: tuple[SecretsManagerRefsBackend, FakeClock], backend_configured: AwsStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from standins.aws import ACCESS_DENIED
        from airflow_sm_refs import SecretAccessDeniedError

        backend, clock = clocked_backend
        backend_configured.client().create_secret(Name="revoked", SecretString="revoked-value")
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm::revoked}}"})
        backend.get_connection("db")
        clock.advance(301)
        with backend_configured.failing(ACCESS_DENIED), lookup_fails(SecretAccessDeniedError):
            backend.get_connection("db")

    def test_transient_failure_serves_stale_within_window_only(
        self,
        clocked_backend: tuple[SecretsManagerRefsBackend, FakeClock],
        backend_configured: AwsStandIn,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        backend, clock = clocked_backend
        backend_configured.client().create_secret(Name="flaky", SecretString="flaky-value")
        set_conn(monkeypatch, "db", {"conn_type": "postgres", "password": "{{workato:sm::flaky}}"})
        backend.get_connection("db")
        clock.advance(301)
        with backend_configured.failing(THROTTLING):
            assert backend.get_connection("db").password == "flaky-value"
        assert "Serving the expired cached value of flaky" in caplog.text
        assert "flaky-value" not in caplog.text
        clock.advance(120)  # 421 s: past 300 + 120
        with backend_configured.failing(INTERNAL_ERROR), lookup_fails(SecretTransientError):
            backend.get_connection("db")
