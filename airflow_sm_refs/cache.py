"""The in-process cache: a bounded TTL store with single-flight loading.

It knows nothing of AWS (as in aws-secretsmanager-caching-python): it stores
whatever a loader returns, decides when that has expired, and makes sure that
threads missing the same key at once share one load. The clock is a
parameter, so expiry is tested with a fake clock instead of ``sleep``.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

__all__ = ["TTLCache", "CacheResult", "copy_error", "jittered_ttl"]

V = TypeVar("V")

#: at most this fraction of the TTL is taken off at random, so entries loaded
#: together do not all expire together; never added, so a value is never
#: served past ``cache_ttl_seconds``
DEFAULT_JITTER = 0.1


def jittered_ttl(ttl: float, jitter: float = DEFAULT_JITTER, rand: Callable[[], float] = random.random) -> float:
    """Return ``ttl`` shortened by up to ``jitter`` of itself, at random."""
    return ttl * (1.0 - jitter * rand())


def copy_error(exc: BaseException) -> BaseException:
    """A new exception equal to ``exc``, so that one waiter adding context never shows in another's.

    Rebuilt the way pickling would (``__reduce__``), which keeps this
    package's errors' attributes; the cause and traceback are carried over.
    ``exc`` itself is returned for an exception that cannot be rebuilt.
    """
    try:
        reduced = exc.__reduce__()
        if isinstance(reduced, str) or len(reduced) < 2:
            return exc
        copy = reduced[0](*reduced[1])
        if len(reduced) > 2 and reduced[2]:
            copy.__dict__.update(reduced[2])
    except Exception:  # noqa: BLE001 - an odd exception type: sharing it beats losing it
        return exc
    if not isinstance(copy, BaseException):
        return exc
    copy.__cause__ = exc.__cause__
    copy.__suppress_context__ = exc.__suppress_context__
    return copy.with_traceback(exc.__traceback__)


#: how long a remembered failure is raised again: one number for every kind of failure,
#: or one per error class name (``SecretNotFoundError``, ``SecretAccessDeniedError``)
FailureWindow = Union[float, Mapping[str, float]]


def window_for(window: FailureWindow, kind: str) -> float:
    """The seconds ``window`` gives a failure of class ``kind``."""
    if isinstance(window, Mapping):
        return float(window.get(kind, 0.0))
    return float(window)


def longest(window: FailureWindow) -> float:
    """The longest seconds ``window`` gives any failure (0: none is remembered)."""
    if isinstance(window, Mapping):
        return max((float(w) for w in window.values()), default=0.0)
    return float(window)


@dataclass
class _Entry(Generic[V]):
    value: V
    #: when the value was fetched, on this cache's clock (earlier than its load
    #: when it came from the worker tier already some seconds old)
    fetched_at: float
    #: this entry's draw of the jitter, in [0, 1): every reader shortens its own TTL by it
    draw: float
    #: the TTL of whoever loaded it, for :meth:`TTLCache.peek` without a TTL of its own
    ttl: float

    def lifetime(self, ttl: float, jitter: float) -> float:
        return ttl * (1.0 - jitter * self.draw)


@dataclass(frozen=True)
class CacheResult(Generic[V]):
    """A value and how it was obtained: ``"hit"``, ``"load"`` or ``"stale"``."""

    value: V
    source: str
    #: for ``"stale"``: why the reload failed
    error: BaseException | None = None


class _Flight:
    """One load in progress, which other threads wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: CacheResult | None = None
        self.error: BaseException | None = None


#: every cache of this process, so that a forked child can reset them
_INSTANCES: weakref.WeakSet[TTLCache] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for cache in list(_INSTANCES):
        cache._after_fork()


class TTLCache(Generic[V]):
    """A thread-safe, size-bounded cache whose entries expire.

    Freshness is judged by each caller's own ``ttl`` against the time the
    value was fetched, so two users of one cache with different TTLs each get
    what they asked for. Fork-safe: a forked child gets a new lock and no
    loads in flight (the threads running them were not copied); the values stay.

    :param maxsize: most entries kept; the least recently used go first
    :param timer: the clock, ``time.monotonic`` unless a test injects one
    :param jitter: fraction of the TTL that may be taken off at random
    :param rand: source of randomness for the jitter
    """

    def __init__(
        self,
        maxsize: int = 1024,
        *,
        timer: Callable[[], float] = time.monotonic,
        jitter: float = DEFAULT_JITTER,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.maxsize = maxsize
        self.timer = timer
        self.jitter = jitter
        self.rand = rand
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        #: key -> (error, when it was answered): not-found and denied answers, remembered briefly
        self._failures: dict[Hashable, tuple[BaseException, float]] = {}
        _INSTANCES.add(self)

    def _after_fork(self) -> None:
        # The lock may have been held, and the flights led, by threads that
        # exist only in the parent: waiting on them would hang for ever.
        self._lock = threading.Lock()
        self._flights = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._failures.clear()

    def remember_failure(self, key: Hashable, exc: BaseException, *, age: float = 0.0) -> None:
        """Remember that loading ``key`` failed with ``exc``, ``age`` seconds ago.

        :meth:`recent_failure` hands out copies of it for as long as the
        caller's window lasts. A successful load of ``key`` forgets it.
        """
        with self._lock:
            self._failures[key] = (copy_error(exc), self.timer() - max(age, 0.0))
            while len(self._failures) > self.maxsize:
                del self._failures[next(iter(self._failures))]

    def value_of(self, key: Hashable) -> V | None:
        """The value held for ``key``, fresh or not; ``None`` if none is."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.value

    def drop(self, key: Hashable) -> None:
        """Forget the value held for ``key``."""
        with self._lock:
            self._entries.pop(key, None)

    def drop_where(self, matches: Callable[[Any], bool]) -> None:
        """Forget the value held for every key that ``matches``."""
        with self._lock:
            for key in [k for k in self._entries if matches(k)]:
                del self._entries[key]

    def put(self, key: Hashable, value: V, *, ttl: float) -> None:
        """Store ``value`` for ``key``, fetched just now (by a batch, or under another spelling of a secret)."""
        if ttl <= 0:
            return
        with self._lock:
            self._failures.pop(key, None)
            entry = _Entry(value, self.timer(), self.rand(), ttl)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def recent_failure(self, key: Hashable, window: FailureWindow) -> BaseException | None:
        """A copy of the failure remembered for ``key`` if it is less than its ``window`` old, else ``None``."""
        if longest(window) <= 0:
            return None
        with self._lock:
            remembered = self._failures.get(key)
            if remembered is None:
                return None
            exc, at = remembered
            if not at <= self.timer() < at + window_for(window, type(exc).__name__):
                return None
        return copy_error(exc)

    def peek(self, key: Hashable, ttl: float | None = None) -> V | None:
        """The fresh value for ``key``, or ``None``; never loads, never waits for a load.

        :param ttl: the caller's TTL; ``None``: the TTL of whoever loaded it
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not self._fresh(entry, entry.ttl if ttl is None else ttl, self.timer()):
                return None
            self._entries.move_to_end(key)
            return entry.value

    def _fresh(self, entry: _Entry[V], ttl: float, now: float) -> bool:
        return entry.fetched_at <= now < entry.fetched_at + entry.lifetime(ttl, self.jitter)

    def get_or_load(
        self,
        key: Hashable,
        loader: Callable[[], V],
        *,
        ttl: float,
        stale_if_error: float = 0.0,
        is_transient: Callable[[BaseException], bool] = lambda exc: False,
        age: Callable[[], float] | None = None,
    ) -> CacheResult[V]:
        """Return the fresh value for ``key``, loading it once if needed.

        If the load fails with an error ``is_transient`` accepts, and an
        expired value is still within ``stale_if_error`` seconds of its
        expiry, that value is returned with source ``"stale"``. Any other
        failure drops the entry and is raised to every waiting caller, each
        getting its own copy of the error.

        :param ttl: seconds after its fetch a value is fresh for this caller
            (up to ``jitter`` less); 0 disables caching
        :param age: asked after a load: how many seconds old the loaded value
            already is (a value from the worker tier); ``None``: just fetched
        """
        with self._lock:
            now = self.timer()
            entry = self._entries.get(key)
            if entry is not None and self._fresh(entry, ttl, now):
                self._entries.move_to_end(key)
                return CacheResult(entry.value, "hit")
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                # Each waiter its own error: the caller adds its connection and
                # field to it (``located``), which must not show in another lookup.
                raise copy_error(flight.error)
            assert flight.result is not None
            return flight.result
        try:
            flight.result = self._load(key, loader, ttl, stale_if_error, is_transient, age)
            return flight.result
        except BaseException as exc:
            # Copied before the leader's caller can add its context to ``exc``.
            flight.error = copy_error(exc)
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def _load(
        self,
        key: Hashable,
        loader: Callable[[], V],
        ttl: float,
        stale_if_error: float,
        is_transient: Callable[[BaseException], bool],
        age: Callable[[], float] | None,
    ) -> CacheResult[V]:
        try:
            value = loader()
        except BaseException as exc:
            with self._lock:
                now = self.timer()
                entry = self._entries.get(key)
                if entry is not None and is_transient(exc):
                    # This caller's own TTL and window, from the value's fetch.
                    stale_until = entry.fetched_at + entry.lifetime(ttl, self.jitter) + max(stale_if_error, 0.0)
                    if entry.fetched_at <= now < stale_until:
                        return CacheResult(entry.value, "stale", exc)
                self._entries.pop(key, None)
            raise
        if ttl <= 0:
            with self._lock:
                self._failures.pop(key, None)
        else:
            already = max(0.0, age()) if age is not None else 0.0
            with self._lock:
                self._failures.pop(key, None)
                entry = _Entry(value, self.timer() - already, self.rand(), ttl)
                if self._fresh(entry, ttl, entry.fetched_at + already):
                    self._entries[key] = entry
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.maxsize:
                        self._entries.popitem(last=False)
                else:  # already expired (a stale value from the worker tier): keep nothing
                    self._entries.pop(key, None)
        return CacheResult(value, "load")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
