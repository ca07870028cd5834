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
  directory and renamed into place, opened without following symlinks.
- One lock file per entry (``flock``): processes that miss the same secret at
  once make one AWS call; the others wait, then read what it wrote.
- An entry carries its key, its length and a SHA-256 of its body, so a
  corrupt, truncated or misplaced file is a miss, never a value
  (:mod:`airflow_sm_refs._worker_entry` describes the format).

Like the in-process tier, this one knows nothing of AWS: it stores what
``fetch`` returns and decides when that has expired. The clock is wall time
(entries are shared across processes) and a parameter, for tests.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from airflow_sm_refs._exceptions import SecretFetchError
from airflow_sm_refs._private_dir import _open_private_dir
from airflow_sm_refs._worker_entry import (
    _MAX_ENTRY_BYTES,
    _decode,
    _encode,
    _Entry,
    _entry_name,
    _Failure,
)
from airflow_sm_refs.cache import DEFAULT_JITTER, jittered_ttl
from airflow_sm_refs.fetch import SecretPayload

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

#: while AWS fails transiently, one attempt per entry per this many seconds;
#: in between, every process serves the stale value without calling
DEFAULT_STALE_RETRY_SECONDS = 5.0

_ENTRY_FILE = re.compile(r"[0-9a-f]{64}\.entry")
_LOCK_FILE = re.compile(r"[0-9a-f]{64}\.lock")
_TEMP_FILE = re.compile(r"\.[0-9a-f]{64}\.\d+\.[0-9a-f]+\.tmp")

_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def default_worker_cache_dir() -> str | None:
    """``/dev/shm/airflow-sm-refs-<uid>`` where ``/dev/shm`` exists, else ``None`` (the tier is off)."""
    if not os.path.isdir(RAM_FS):
        return None
    return os.path.join(RAM_FS, f"airflow-sm-refs-{os.geteuid()}")


def _describe(key: tuple[str, ...]) -> str:
    """``secret 'prod/db' (AWSCURRENT)``, from a cache key, for logs."""
    secret_id, version = key[2], key[3]
    kind, _, label = version.partition(":")
    return f"secret {secret_id!r} ({f'version id {label}' if kind == 'id' else label or version})"


class WorkerCache:
    """Secret payloads shared by every process of a worker, in a private directory.

    :param directory: the directory; created ``0700`` if missing
    :param timer: the wall clock, ``time.time`` unless a test injects one
    :param jitter: fraction of the TTL that may be taken off at random
    :param rand: source of randomness for the jitter
    :param lock_timeout: seconds to wait for another process's fetch before fetching anyway
    :param stale_retry_seconds: while serving a stale value, seconds between attempts to refresh it
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
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.timer = timer
        self.jitter = jitter
        self.rand = rand
        self.lock_timeout = lock_timeout
        self.stale_retry_seconds = stale_retry_seconds
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
    ) -> tuple[SecretPayload, str, float]:
        """Return the payload for ``key``, its source and its remaining lifetime in seconds.

        The source is ``"aws"`` when this call fetched, ``"worker cache"`` for
        a fresh entry, ``"worker cache (stale)"`` for an expired value served
        because AWS failed for a transient reason (lifetime ``0``, so no other
        tier keeps it). A permanent failure drops the value and is raised.

        :param key: (identity digest, region, secret id, version)
        :param fetch: one AWS call; raises :class:`SecretFetchError` subclasses
        :param ttl: seconds a fetched value stays fresh (up to ``jitter`` less); 0 bypasses the tier
        :param stale_if_error: seconds past expiry an entry may be served when the fetch fails transiently
        """
        if ttl <= 0 or self._dir_fd is None:
            return fetch(), "aws", max(ttl, 0.0)
        name = _entry_name(key)
        seen = self._read(name, key)
        now = self.timer()
        if seen is not None and seen.is_fresh(now):
            assert seen.payload is not None
            return seen.payload, "worker cache", seen.expires_at - now
        with self._locked(name, key):
            current = self._read(name, key)
            now = self.timer()
            if current is not None and current.is_fresh(now):
                assert current.payload is not None
                return current.payload, "worker cache", current.expires_at - now
            if current is not None and current.failure is not None:
                tried_meanwhile = seen is None or seen.attempt != current.attempt
                backing_off = now < current.retry_at and current.can_serve_stale(now, stale_if_error)
                if tried_meanwhile or backing_off:
                    # Another process has just tried: its outcome is ours, without another call.
                    return self._after_failure(current, current.failure, now, stale_if_error)
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
            if failure.transient and current is not None and current.can_serve_stale(now, stale_if_error):
                marked = replace(
                    current, attempt=_new_attempt(), retry_at=now + self.stale_retry_seconds, failure=failure
                )
                self._write(name, marked)
                return self._after_failure(marked, failure, now, stale_if_error)
            # The value (if any) is dropped; the error stays for the processes
            # waiting on this attempt.
            self._write(name, _Entry(key, _new_attempt(), None, failure=failure))
            raise
        lifetime = jittered_ttl(ttl, self.jitter, self.rand)
        self._write(name, _Entry(key, _new_attempt(), payload, expires_at=self.timer() + lifetime))
        return payload, "aws", lifetime

    def _after_failure(
        self, entry: _Entry, failure: _Failure, now: float, stale_if_error: float
    ) -> tuple[SecretPayload, str, float]:
        if not (failure.transient and entry.can_serve_stale(now, stale_if_error)):
            raise failure.error()
        assert entry.payload is not None
        log.warning(
            "Serving the expired value of %s from the worker cache for up to %.0f s more: AWS failed: %s",
            _describe(entry.key),
            entry.expires_at + stale_if_error - now,
            failure.detail,
        )
        return entry.payload, "worker cache (stale)", 0.0

    # --- inspection ---------------------------------------------------------
    def peek(self, key: tuple[str, ...]) -> tuple[SecretPayload, float] | None:
        """The payload held for ``key`` and when it expires (wall clock), fresh or not; no AWS call."""
        entry = self._read(_entry_name(key), key)
        if entry is None or entry.payload is None:
            return None
        return entry.payload, entry.expires_at

    def entry_path(self, key: tuple[str, ...]) -> str:
        """The file that holds ``key``'s entry."""
        return os.path.join(self.directory, _entry_name(key) + ".entry")

    # --- files --------------------------------------------------------------
    def _read(self, name: str, key: tuple[str, ...]) -> _Entry | None:
        dir_fd = self._dir_fd
        if dir_fd is None:  # closed (and dir_fd=None would mean the current directory)
            return None
        try:
            fd = os.open(name + ".entry", os.O_RDONLY | os.O_NONBLOCK | _FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("Worker cache entry for %s cannot be opened (%s); treating it as a miss", _describe(key), exc)
            return None
        try:
            st = os.fstat(fd)
            if (
                not stat.S_ISREG(st.st_mode)
                or st.st_uid != self._euid
                or st.st_mode & 0o077
                or st.st_size > _MAX_ENTRY_BYTES
            ):
                return None
            chunks = []
            size = 0
            while chunk := os.read(fd, 65536):
                size += len(chunk)
                if size > _MAX_ENTRY_BYTES:
                    return None
                chunks.append(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        entry = _decode(b"".join(chunks), key)
        if entry is None:
            log.debug("Worker cache entry for %s is corrupt or incomplete; treating it as a miss", _describe(key))
        return entry

    def _write(self, name: str, entry: _Entry) -> None:
        dir_fd = self._dir_fd
        if dir_fd is None:
            return
        data = _encode(entry)
        temp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, 0o600, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temp, name + ".entry", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            # A full /dev/shm or a removed directory must not fail the task:
            # the value is still returned, other processes fetch their own.
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
            level = logging.DEBUG if self._write_warned else logging.WARNING
            self._write_warned = True
            log.log(
                level,
                "Could not write the worker cache entry for %s in %s: %s",
                _describe(entry.key),
                self.directory,
                exc,
            )

    @contextmanager
    def _locked(self, name: str, key: tuple[str, ...]) -> Iterator[None]:
        """Hold the entry's lock; after ``lock_timeout`` (or if locking fails), go on without it."""
        deadline = time.monotonic() + self.lock_timeout
        dir_fd = self._dir_fd
        fd = None
        try:
            while fd is None and dir_fd is not None:
                fd = os.open(name + ".lock", os.O_RDWR | os.O_CREAT | _FILE_FLAGS, 0o600, dir_fd=dir_fd)
                if not _lock_until(fd, deadline):
                    log.warning(
                        "Waited %.0f s for another process's fetch of %s; fetching without waiting longer",
                        self.lock_timeout,
                        _describe(key),
                    )
                    break
                # A lock file removed while we waited (cache clear) locks nothing: take the one in place.
                try:
                    in_place = os.stat(name + ".lock", dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    in_place = None
                held = os.fstat(fd)
                if in_place is None or (in_place.st_dev, in_place.st_ino) != (held.st_dev, held.st_ino):
                    os.close(fd)
                    fd = None
        except OSError as exc:
            log.debug("Cannot lock the worker cache entry for %s (%s); fetching without the lock", _describe(key), exc)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock


def _lock_until(fd: int, deadline: float) -> bool:
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _new_attempt() -> str:
    return secrets.token_hex(8)


# --- one instance per directory per process ---------------------------------
_OPENED: dict[tuple[int, str], WorkerCache | None] = {}
_OPENED_LOCK = threading.Lock()


def open_worker_cache(directory: str | None, *, enabled: bool = True) -> WorkerCache | None:
    """The worker cache in ``directory`` (default :func:`default_worker_cache_dir`), or ``None`` when off.

    The directory is created ``0700`` if missing and checked; a refused one is
    logged once per process and ``None`` returned. The outcome is remembered
    per process, so Airflow's frequent backend instantiation costs a dict lookup.
    """
    if not enabled:
        return None
    path = directory or default_worker_cache_dir()
    memo_key = (os.getpid(), os.path.abspath(path) if path else "")
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
                cache = WorkerCache(path)
            except OSError as exc:
                log.warning(
                    "Not using %s for the per-worker secrets cache: %s. Secrets are cached per process only.",
                    path,
                    exc,
                )
        _OPENED[memo_key] = cache
        return cache


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
    removed = 0
    try:
        for name in os.listdir(fd):
            is_entry = _ENTRY_FILE.fullmatch(name) is not None
            if not (is_entry or _LOCK_FILE.fullmatch(name) or _TEMP_FILE.fullmatch(name)):
                continue  # not ours: leave it
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            removed += is_entry
    finally:
        os.close(fd)
    return removed
