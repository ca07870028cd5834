"""The in-process cache: a bounded TTL store with single-flight loading.

It knows nothing of AWS (as in aws-secretsmanager-caching-python): it stores
whatever a loader returns, decides when that has expired, and makes sure that
threads missing the same key at once share one load. The clock is a
parameter, so expiry is tested with a fake clock instead of ``sleep``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["TTLCache", "CacheResult", "jittered_ttl"]

V = TypeVar("V")

#: at most this fraction of the TTL is taken off at random, so entries loaded
#: together do not all expire together; never added, so a value is never
#: served past ``cache_ttl_seconds``
DEFAULT_JITTER = 0.1


def jittered_ttl(ttl: float, jitter: float = DEFAULT_JITTER, rand: Callable[[], float] = random.random) -> float:
    """Return ``ttl`` shortened by up to ``jitter`` of itself, at random."""
    return ttl * (1.0 - jitter * rand())


@dataclass
class _Entry(Generic[V]):
    value: V
    expires_at: float
    stale_until: float


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


class TTLCache(Generic[V]):
    """A thread-safe, size-bounded cache whose entries expire.

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

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def peek(self, key: Hashable) -> V | None:
        """The fresh value for ``key``, or ``None``; never loads, never waits for a load."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self.timer() >= entry.expires_at:
                return None
            self._entries.move_to_end(key)
            return entry.value

    def get_or_load(
        self,
        key: Hashable,
        loader: Callable[[], V],
        *,
        ttl: float | Callable[[], float],
        stale_if_error: float = 0.0,
        is_transient: Callable[[BaseException], bool] = lambda exc: False,
    ) -> CacheResult[V]:
        """Return the fresh value for ``key``, loading it once if needed.

        If the load fails with an error ``is_transient`` accepts, and an
        expired value is still within ``stale_if_error`` seconds of its
        expiry, that value is returned with source ``"stale"``. Any other
        failure drops the entry and is raised to every waiting caller.

        :param ttl: seconds a loaded value stays fresh (before jitter); 0 disables caching.
            A callable is asked after the load, for a loader that learns the
            remaining lifetime of what it loaded (an entry from the worker tier).
        """
        with self._lock:
            now = self.timer()
            entry = self._entries.get(key)
            if entry is not None and now < entry.expires_at:
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
                raise flight.error
            assert flight.result is not None
            return flight.result
        try:
            flight.result = self._load(key, loader, ttl, stale_if_error, is_transient)
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def _load(
        self,
        key: Hashable,
        loader: Callable[[], V],
        ttl: float | Callable[[], float],
        stale_if_error: float,
        is_transient: Callable[[BaseException], bool],
    ) -> CacheResult[V]:
        try:
            value = loader()
        except BaseException as exc:
            with self._lock:
                now = self.timer()
                entry = self._entries.get(key)
                if entry is not None and is_transient(exc) and now < entry.stale_until:
                    return CacheResult(entry.value, "stale", exc)
                self._entries.pop(key, None)
            raise
        if callable(ttl):
            ttl = ttl()
        if ttl > 0:
            with self._lock:
                now = self.timer()
                expires_at = now + jittered_ttl(ttl, self.jitter, self.rand)
                self._entries[key] = _Entry(value, expires_at, expires_at + max(stale_if_error, 0.0))
                self._entries.move_to_end(key)
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        return CacheResult(value, "load")
