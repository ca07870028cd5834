"""Lock stripes of the per-worker tier: of the processes that miss one entry at once, one fetches.

A directory has a fixed set of lock files, ``stripe-00.lock`` to
``stripe-63.lock``, so they never grow with the entries; an entry takes the
stripe its name hashes to, with ``flock``. The others wait on it, then read
what the holder wrote. A process holds one stripe at a time, except a batch,
which takes all of its stripes in one sorted order: no two holders can each
wait for the other. A waiter gives up after a timeout and fetches anyway, so
a stuck holder costs a call, never a task.

Each fetch is an *attempt* with a random name, written into its entry: a
process that waited compares it with the one it saw before waiting to tell
whether another process has just tried (and its outcome is to be reused).

Fork-safe: a forked child closes its copies of the lock files other threads
held at the fork (a copy would keep the lock held for as long as the child
lives).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from airflow_sm_refs._worker_entry import _entry_name
from airflow_sm_refs._worker_store import _FILE_FLAGS, _describe

log = logging.getLogger("airflow_sm_refs")

#: how many lock files a directory has; entries share them by hash
LOCK_STRIPES = 64

_STRIPE_FILE = re.compile(r"stripe-\d{2}\.lock")
#: one lock file per entry, as versions before the stripes made them
_LEGACY_LOCK_FILE = re.compile(r"[0-9a-f]{64}\.lock")


def _lock_name(name: str) -> str:
    """The lock stripe of the entry named ``name`` (a SHA-256 in hex)."""
    return f"stripe-{int(name[:8], 16) % LOCK_STRIPES:02d}.lock"


def _stripes_in_order(keys: list[tuple[str, ...]]) -> list[tuple[str, tuple[str, ...]]]:
    """One (entry name, key) per lock stripe ``keys`` use, in the order every batch takes them."""
    stripes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for key in keys:
        name = _entry_name(key)
        stripes.setdefault(_lock_name(name), (name, key))
    return [stripes[stripe] for stripe in sorted(stripes)]


# Lock files held by this process, and by which thread: a forked child closes
# the ones of threads it does not have.
_HELD: dict[int, int] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def _hold_stripe(
    dir_fd: int | None,
    name: str,
    key: tuple[str, ...],
    timeout: float,
    lock_until: Callable[[int, float], bool],
) -> Iterator[None]:
    """Hold the stripe of the entry named ``name``; after ``timeout`` s (or if locking fails), go on without it.

    :param lock_until: :func:`_lock_until`, or a test's watcher around it
    """
    deadline = time.monotonic() + timeout
    lock_file = _lock_name(name)
    fd = None
    try:
        while fd is None and dir_fd is not None:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | _FILE_FLAGS, 0o600, dir_fd=dir_fd)
            if not lock_until(fd, deadline):
                log.warning(
                    "Waited %.0f s for another process's fetch of %s; fetching without waiting longer",
                    timeout,
                    _describe(key),
                )
                break
            # A lock file removed while we waited (cache clear) locks nothing: take the one in place.
            try:
                in_place = os.stat(lock_file, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                in_place = None
            held = os.fstat(fd)
            if in_place is None or (in_place.st_dev, in_place.st_ino) != (held.st_dev, held.st_ino):
                os.close(fd)
                fd = None
    except OSError as exc:
        log.debug("Cannot lock the worker cache entry for %s (%s); fetching without the lock", _describe(key), exc)
    if fd is not None:
        with _HELD_LOCK:
            _HELD[fd] = threading.get_ident()
    try:
        yield
    finally:
        if fd is not None:
            with _HELD_LOCK:
                _HELD.pop(fd, None)
            os.close(fd)  # releases the flock


def _lock_until(fd: int, deadline: float) -> bool:
    """Take ``fd``'s ``flock``, polling until ``deadline`` (monotonic); whether it was taken."""
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


def _writer_is_gone(pid: int) -> bool:
    """Whether the process that made a temporary file has exited (so the file is litter)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _release_other_threads_locks() -> None:
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    me = threading.get_ident()
    # A copy of a lock file another thread held keeps its flock held for as
    # long as this child lives: every other process would wait on it.
    for fd, holder in list(_HELD.items()):
        if holder != me:
            _HELD.pop(fd, None)
            try:
                os.close(fd)
            except OSError:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_other_threads_locks)
