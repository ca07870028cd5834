"""The per-worker tier: secret payloads shared by every task process of a worker.

Airflow forks a process for every task attempt, so the in-process tier lives
for one task. This tier keeps entries where every task process of the worker
finds them: a private directory on a RAM-backed filesystem (``/dev/shm``), as
Kubernetes secret volumes and Vault Agent sinks do.

- The directory belongs to the worker's user, mode ``0700``, and is not a
  symlink. Anything else is refused with one warning per process, nothing is
  written there, and the in-process tier carries on alone
  (:mod:`airflow_sm_refs._private_dir`).
- One file per entry, mode ``0600``, written to a temporary file in the same
  directory and renamed into place, opened without following symlinks
  (:mod:`airflow_sm_refs._worker_store`).
- A fixed set of lock files (``flock``), one stripe per entry chosen by hash:
  processes that miss the same secret at once make one AWS call; the others
  wait, then read what it wrote. A process holds one stripe at a time
  (:mod:`airflow_sm_refs._worker_locks`).
- Bounded: a failure leaves no file holding a value; every write deletes the
  entries past the writer's TTL plus stale window, then the oldest beyond
  ``max_entries``, and temporary files of writers that died
  (:mod:`airflow_sm_refs._worker_sweep`).
- Each reader judges an entry by its own TTL and stale window, from the time
  the value was fetched.
- An entry carries its key, its length and a SHA-256 of its body, so a
  corrupt, truncated or misplaced file is a miss, never a value
  (:mod:`airflow_sm_refs._worker_entry` describes the format).

Like the in-process tier, this one knows nothing of AWS: it stores what
``fetch`` returns and decides when that has expired. The clock is wall time
(entries are shared across processes) and a parameter, for tests.

Fork-safe: a forked child closes its copies of the lock files other threads
held at the fork (a copy would keep the lock held for as long as the child
lives) and gets a new lock for the table of opened caches.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import replace

from airflow_sm_refs._exceptions import SecretFetchError
from airflow_sm_refs.cache import FailureWindow, window_for
from airflow_sm_refs._private_dir import _open_private_dir
# "X as X": names other modules and tests import from here, though they live in the parts.
from airflow_sm_refs._worker_entry import _decode as _decode
from airflow_sm_refs._worker_entry import _encode as _encode
from airflow_sm_refs._worker_entry import _Entry, _entry_name, _Failure
from airflow_sm_refs._worker_locks import LOCK_STRIPES as LOCK_STRIPES
from airflow_sm_refs._worker_locks import _hold_stripe, _lock_name, _lock_until, _new_attempt, _stripes_in_order
from airflow_sm_refs._worker_store import _ENTRY_FILE, _describe, _read_entry, _unlink_file, _write_entry
from airflow_sm_refs._worker_sweep import _remove_all, _sweep
from airflow_sm_refs.cache import DEFAULT_JITTER
from airflow_sm_refs.fetch import SecretPayload
from airflow_sm_refs.secret_ids import spelling_keys

__all__ = [
    "WorkerCache",
    "clear_worker_cache",
    "default_worker_cache_dir",
    "open_worker_cache",
    "reset_worker_caches",
]

log = logging.getLogger("airflow_sm_refs")

#: the RAM-backed filesystem the default directory lives on
RAM_FS = "/dev/shm"

#: how long a process waits for another one's fetch before fetching itself
DEFAULT_LOCK_TIMEOUT_SECONDS = 120.0

#: most entries kept in a directory; the oldest fetched go first
DEFAULT_MAX_ENTRIES = 1000

#: while AWS fails transiently, one attempt per entry per this many seconds;
#: in between, every process serves the stale value without calling
DEFAULT_STALE_RETRY_SECONDS = 5.0


def default_worker_cache_dir() -> str | None:
    """``/dev/shm/airflow-sm-refs-<uid>`` where ``/dev/shm`` exists, else ``None`` (the tier is off)."""
    if not os.path.isdir(RAM_FS):
        return None
    return os.path.join(RAM_FS, f"airflow-sm-refs-{os.geteuid()}")


class WorkerCache:
    """Secret payloads shared by every process of a worker, in a private directory.

    :param directory: the directory; created ``0700`` if missing
    :param timer: the wall clock, ``time.time`` unless a test injects one
    :param jitter: fraction of the TTL that may be taken off at random
    :param rand: source of randomness for the jitter
    :param lock_timeout: seconds to wait for another process's fetch before fetching anyway
    :param stale_retry_seconds: while serving a stale value, seconds between attempts to refresh it
    :param max_entries: most entries kept; each write evicts the oldest fetched beyond it
    :raises PermissionError: the directory is a symlink, someone else's, or open to group or others
    :raises OSError: the directory cannot be created or opened
    """

    def __init__(
        self,
        directory: str,
        *,
        timer: Callable[[], float] = time.time,
        jitter: float = DEFAULT_JITTER,
        rand: Callable[[], float] = random.random,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
        stale_retry_seconds: float = DEFAULT_STALE_RETRY_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.timer = timer
        self.jitter = jitter
        self.rand = rand
        self.lock_timeout = lock_timeout
        self.stale_retry_seconds = stale_retry_seconds
        self.max_entries = max(1, int(max_entries))
        self._dir_fd: int | None = _open_private_dir(self.directory, create=True)
        self._euid = os.geteuid()
        self._write_warned = False

    def __repr__(self) -> str:
        return f"WorkerCache({self.directory!r})"

    def close(self) -> None:
        """Let go of the directory; from then on every lookup fetches and nothing is stored."""
        fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except (AttributeError, OSError):  # half-built, or the interpreter is shutting down
            pass

    # --- the SharedTier protocol --------------------------------------------
    def get_or_fetch(
        self,
        key: tuple[str, ...],
        fetch: Callable[[], SecretPayload],
        *,
        ttl: float,
        stale_if_error: float,
        negative_ttl: FailureWindow = 0.0,
    ) -> tuple[SecretPayload, str, float]:
        """Return the payload for ``key``, its source and its age (seconds since it was fetched).

        The source is ``"aws"`` when this call fetched (age ``0``), ``"worker
        cache"`` for an entry fresh by *this caller's* ``ttl``, ``"worker
        cache (stale)"`` for an expired value served because AWS failed for a
        transient reason. A permanent failure drops the value and is raised.

        :param key: (identity digest, region, secret id, version)
        :param fetch: one AWS call; raises :class:`SecretFetchError` subclasses
        :param ttl: seconds after its fetch a value is fresh for this caller (up to ``jitter`` less);
            0 bypasses the tier
        :param stale_if_error: seconds past expiry an entry may be served when the fetch fails transiently
        :param negative_ttl: seconds after AWS answered not-found or denied that the same error is
            raised again without a call (its ``remembered_age`` says how old the answer is); 0: never
        """
        if ttl <= 0 or self._dir_fd is None:
            return fetch(), "aws", 0.0
        name = _entry_name(key)
        seen = self._read(name, key)
        now = self.timer()
        if seen is not None and seen.is_fresh(now, ttl, self.jitter):
            assert seen.payload is not None
            return seen.payload, "worker cache", now - seen.fetched_at
        if seen is not None:
            _raise_if_remembered(seen, now, negative_ttl)
        with self._locked(name, key):
            current = self._read(name, key)
            now = self.timer()
            if current is not None and current.is_fresh(now, ttl, self.jitter):
                assert current.payload is not None
                return current.payload, "worker cache", now - current.fetched_at
            if current is not None:
                _raise_if_remembered(current, now, negative_ttl)
            if current is not None and current.failure is not None:
                tried_meanwhile = seen is None or seen.attempt != current.attempt
                backing_off = now < current.retry_at and current.can_serve_stale(now, ttl, stale_if_error, self.jitter)
                if tried_meanwhile or backing_off:
                    # Another process has just tried: its outcome is ours, without another call.
                    return self._after_failure(current, current.failure, now, ttl, stale_if_error)
            return self._fetch(name, key, fetch, current, ttl, stale_if_error)

    def _fetch(
        self,
        name: str,
        key: tuple[str, ...],
        fetch: Callable[[], SecretPayload],
        current: _Entry | None,
        ttl: float,
        stale_if_error: float,
    ) -> tuple[SecretPayload, str, float]:
        try:
            payload = fetch()
        except SecretFetchError as exc:
            now = self.timer()
            failure = _Failure.of(exc)
            failed_at = now
            if failure.transient and current is not None and current.can_serve_stale(now, ttl, stale_if_error, self.jitter):
                marked = replace(
                    current, attempt=_new_attempt(), retry_at=now + self.stale_retry_seconds, failure=failure
                )
                self._write(name, marked, ttl + stale_if_error)
                return self._after_failure(marked, failure, now, ttl, stale_if_error)
            if failure.transient and current is not None and current.failure is not None and current.payload is None:
                if not current.failure.transient:
                    # AWS's last answer was not-found or denied: a retry that fails
                    # transiently must not let another tier serve an older value stale.
                    failure = current.failure
                    exc = failure.error()
                    # ...and it stays as old as it is: a throttled retry does not renew the negative window,
                    # here or in the caller's process tier (which remembers it from ``remembered_age`` ago).
                    failed_at = current.fetched_at
                    exc.remembered_age = now - failed_at
            if not failure.transient and current is not None and current.payload is not None:
                # Gone or denied: the value goes under every spelling of the secret,
                # and the caller learns which secret it was (names only, no value).
                for other in spelling_keys(key, current.payload.arn, current.payload.name):
                    self.drop(other)
                exc.held_arn, exc.held_name = current.payload.arn, current.payload.name
            # The value (if any) is dropped; the error (which holds no value)
            # stays for the processes waiting on this attempt.
            record = _Entry(key, _new_attempt(), None, fetched_at=failed_at, failure=failure)
            if not self._write(name, record, ttl + stale_if_error) and current is not None:
                # Could not replace it (a full /dev/shm): the value must go all the same.
                self._unlink(name + ".entry")
            raise exc from None
        entry = _Entry(key, _new_attempt(), payload, fetched_at=self.timer(), draw=self.rand())
        self._write(name, entry, ttl + stale_if_error)
        return payload, "aws", 0.0

    def _after_failure(
        self, entry: _Entry, failure: _Failure, now: float, ttl: float, stale_if_error: float
    ) -> tuple[SecretPayload, str, float]:
        if not (failure.transient and entry.can_serve_stale(now, ttl, stale_if_error, self.jitter)):
            raise failure.error()
        assert entry.payload is not None
        log.warning(
            "Serving the expired value of %s from the worker cache for up to %.0f s more: AWS failed: %s",
            _describe(entry.key),
            entry.expires_at(ttl, self.jitter) + stale_if_error - now,
            failure.detail,
        )
        return entry.payload, "worker cache (stale)", now - entry.fetched_at

    # --- batches and other spellings ---------------------------------------
    def fresh(self, key: tuple[str, ...], ttl: float, negative_ttl: FailureWindow = 0.0) -> bool:
        """Whether a lookup of ``key`` would be answered from this tier without AWS: a fresh
        value, or a not-found or denied answer within ``negative_ttl``."""
        if ttl <= 0 or self._dir_fd is None:
            return False
        entry = self._read(_entry_name(key), key)
        if entry is None:
            return False
        now = self.timer()
        if entry.is_fresh(now, ttl, self.jitter):
            return True
        try:
            _raise_if_remembered(entry, now, negative_ttl)
        except SecretFetchError:
            return True
        return False

    def store(self, key: tuple[str, ...], payload: SecretPayload, *, ttl: float, stale_if_error: float) -> None:
        """Record ``payload`` for ``key``, fetched just now (by a batch, or under another spelling)."""
        if ttl > 0 and self._dir_fd is not None:
            entry = _Entry(key, _new_attempt(), payload, fetched_at=self.timer(), draw=self.rand())
            self._write(_entry_name(key), entry, ttl + stale_if_error)

    def drop(self, key: tuple[str, ...]) -> None:
        """Delete the entry for ``key``, if any."""
        self._unlink(_entry_name(key) + ".entry")

    def store_failure(self, key: tuple[str, ...], exc: SecretFetchError, *, ttl: float, stale_if_error: float) -> None:
        """Record AWS's not-found or denied answer for ``key`` (from a batch); any value held is dropped."""
        if ttl > 0 and self._dir_fd is not None:
            record = _Entry(key, _new_attempt(), None, fetched_at=self.timer(), failure=_Failure.of(exc))
            if not self._write(_entry_name(key), record, ttl + stale_if_error):
                self._unlink(_entry_name(key) + ".entry")

    def forget_where(
        self,
        matches: Callable[[tuple[str, ...]], bool],
        *,
        record: Callable[[tuple[str, ...]], bool],
        error: SecretFetchError,
        ttl: float,
        stale_if_error: float,
    ) -> None:
        """After AWS said not-found or denied: every entry whose key ``matches`` loses its value.

        Where ``record(key)``, the entry becomes a record of ``error`` (another
        process then never serves its own older copy stale); elsewhere the
        file is deleted. One pass over the directory: it runs only when AWS
        has just said no, never on a lookup that succeeds.
        """
        if self._dir_fd is None:
            return
        try:
            files = [f for f in os.listdir(self._dir_fd) if _ENTRY_FILE.fullmatch(f)]
        except OSError:
            return
        for file in files:
            entry = _read_entry(self._dir_fd, file[: -len(".entry")], None, self._euid)
            if entry is None or entry.payload is None or not matches(entry.key):
                continue
            if record(entry.key):
                self.store_failure(entry.key, error, ttl=ttl, stale_if_error=stale_if_error)
            else:
                self._unlink(file)

    @contextmanager
    def locked_many(self, keys: list[tuple[str, ...]]) -> Iterator[None]:
        """Hold the lock stripes of all ``keys``, taken in one fixed (sorted) order.

        Every other holder takes one stripe and waits for no other while
        holding it, and batches take theirs in the same order: no two holders
        can each wait for the other.
        """
        with ExitStack() as stack:
            for name, key in _stripes_in_order(keys):
                stack.enter_context(self._locked(name, key))
            yield

    # --- inspection ---------------------------------------------------------
    def peek(self, key: tuple[str, ...], ttl: float = 0.0) -> tuple[SecretPayload, float] | None:
        """The payload held for ``key`` and when it expires for a reader with ``ttl`` (wall clock), fresh or not.

        No AWS call. With ``ttl`` 0, the time is when the value was fetched.
        """
        entry = self._read(_entry_name(key), key)
        if entry is None or entry.payload is None:
            return None
        return entry.payload, entry.expires_at(ttl, self.jitter)

    def entry_path(self, key: tuple[str, ...]) -> str:
        """The file that holds ``key``'s entry."""
        return os.path.join(self.directory, _entry_name(key) + ".entry")

    def lock_path(self, key: tuple[str, ...]) -> str:
        """The lock file (stripe) that ``key``'s fetches take, shared with other entries."""
        return os.path.join(self.directory, _lock_name(_entry_name(key)))

    # --- files and locks -----------------------------------------------------
    def _read(self, name: str, key: tuple[str, ...]) -> _Entry | None:
        return _read_entry(self._dir_fd, name, key, self._euid)

    def _unlink(self, file: str) -> None:
        _unlink_file(self._dir_fd, file)

    def _write(self, name: str, entry: _Entry, max_age: float) -> bool:
        """Write ``entry`` atomically, then sweep entries older than ``max_age`` and beyond the cap.

        :return: whether the entry was written
        """
        dir_fd = self._dir_fd
        if dir_fd is None:
            return False
        written = False
        try:
            _write_entry(dir_fd, name, entry)
            written = True
        except OSError as exc:
            # A full /dev/shm or a removed directory must not fail the task:
            # the value is still returned, other processes fetch their own.
            self._log_write_failure(entry, exc)
        _sweep(dir_fd, name, max_age, now=self.timer(), max_entries=self.max_entries, directory=self.directory)
        return written

    def _log_write_failure(self, entry: _Entry, exc: OSError) -> None:
        level = logging.DEBUG if self._write_warned else logging.WARNING
        self._write_warned = True
        log.log(level, "Could not write the worker cache entry for %s in %s: %s", _describe(entry.key), self.directory, exc)

    def _locked(self, name: str, key: tuple[str, ...]) -> AbstractContextManager[None]:
        """Hold the entry's lock stripe; after ``lock_timeout`` (or if locking fails), go on without it."""
        # _lock_until is looked up in this module at each call, so a test can watch a process reach the lock.
        return _hold_stripe(self._dir_fd, name, key, self.lock_timeout, _lock_until)


#: the failures a worker-cache entry remembers for ``negative_ttl``: AWS said no about the secret itself
_NEGATIVE_KINDS = frozenset({"SecretNotFoundError", "SecretAccessDeniedError"})


def _raise_if_remembered(entry: _Entry, now: float, negative_ttl: FailureWindow) -> None:
    """Raise the not-found or denied answer ``entry`` records, if it is less than ``negative_ttl`` old.

    Only a failure is remembered, never a value: a revocation is not delayed.
    """
    failure = entry.failure
    if entry.payload is not None or failure is None or failure.kind not in _NEGATIVE_KINDS:
        return
    if entry.fetched_at <= now < entry.fetched_at + window_for(negative_ttl, failure.kind):
        error = failure.error()
        error.remembered_age = now - entry.fetched_at
        raise error


# --- one instance per directory per process ---------------------------------
_OPENED: dict[tuple[int, str, int], WorkerCache | None] = {}
_OPENED_LOCK = threading.Lock()


def open_worker_cache(
    directory: str | None, *, enabled: bool = True, max_entries: int = DEFAULT_MAX_ENTRIES
) -> WorkerCache | None:
    """The worker cache in ``directory`` (default :func:`default_worker_cache_dir`), or ``None`` when off.

    The directory is created ``0700`` if missing and checked; a refused one is
    logged once per process and ``None`` returned. The outcome is remembered
    per process, so Airflow's frequent backend instantiation costs a dict lookup.
    """
    if not enabled:
        return None
    path = directory or default_worker_cache_dir()
    memo_key = (os.getpid(), os.path.abspath(path) if path else "", max_entries)
    with _OPENED_LOCK:
        if memo_key in _OPENED:
            return _OPENED[memo_key]
        cache: WorkerCache | None = None
        if path is None:
            log.info(
                "No %s here: secrets are cached per process only (name a directory with shared_cache_dir)",
                RAM_FS,
            )
        else:
            try:
                cache = WorkerCache(path, max_entries=max_entries)
            except OSError as exc:
                log.warning(
                    "Not using %s for the per-worker secrets cache: %s. Secrets are cached per process only.",
                    path,
                    exc,
                )
        _OPENED[memo_key] = cache
        return cache


def _reset_after_fork() -> None:
    # (the lock files other threads held are closed by airflow_sm_refs._worker_locks)
    global _OPENED_LOCK
    _OPENED_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def reset_worker_caches() -> None:
    """Forget the caches opened by this process (tests; or after fixing a refused directory).

    Instances still held elsewhere keep working; each lets go of its directory when collected.
    """
    with _OPENED_LOCK:
        _OPENED.clear()


def clear_worker_cache(directory: str | None = None) -> int:
    """Remove every entry of the worker cache in ``directory`` (default :func:`default_worker_cache_dir`).

    Task processes that are running keep what they already hold in their own
    process tier until it expires; every lookup after that fetches again.

    :return: how many entries were removed (0 when the directory does not exist)
    :raises PermissionError: the directory is not private to this user (nothing is removed)
    """
    path = directory or default_worker_cache_dir()
    if path is None:
        return 0
    try:
        fd = _open_private_dir(os.path.abspath(path), create=False)
    except FileNotFoundError:
        return 0
    try:
        return _remove_all(fd)
    finally:
        os.close(fd)
