"""Keeping a per-worker cache directory bounded, and emptying it.

Every write sweeps: entries older than the writer's TTL plus stale window go
(and any from a clock that stepped back), then the oldest beyond
``max_entries``, then temporary files of writers that died and lock files of
the versions before stripes. Ages come from each file's mtime, which a writer
sets to its value's fetch time, so a sweep reads no entry.

Clearing removes every file of ours (entries, lock files, temporary files) and
leaves anything else in the directory alone.
"""

from __future__ import annotations

import logging
import os

from airflow_sm_refs._worker_locks import _LEGACY_LOCK_FILE, _STRIPE_FILE, _writer_is_gone
from airflow_sm_refs._worker_store import _ENTRY_FILE, _TEMP_FILE

log = logging.getLogger("airflow_sm_refs")


def _sweep(dir_fd: int, keep: str, max_age: float, *, now: float, max_entries: int, directory: str) -> None:
    """Delete entries older than ``max_age`` at ``now``, then the oldest beyond ``max_entries``, and dead writers' temp files.

    ``keep`` (the entry just written) stays, and counts towards ``max_entries``.
    """
    kept: list[tuple[float, str]] = []
    doomed: list[str] = []
    try:
        with os.scandir(dir_fd) as listing:
            oldest, newest, keep_file = now - max_age, now + max_age, keep + ".entry"
            for item in listing:
                file = item.name
                if file.endswith(".entry"):
                    if file == keep_file or not _ENTRY_FILE.fullmatch(file):
                        continue
                    try:
                        fetched_at = item.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue
                    # Past every window the writer knows of, or from a clock that stepped back.
                    if oldest < fetched_at <= newest:
                        kept.append((fetched_at, file))
                    else:
                        doomed.append(file)
                elif file.endswith(".tmp"):
                    match = _TEMP_FILE.fullmatch(file)
                    if match and _writer_is_gone(int(match.group(1))):
                        doomed.append(file)
                elif file.endswith(".lock") and _LEGACY_LOCK_FILE.fullmatch(file):
                    doomed.append(file)
    except OSError as exc:
        log.debug("Cannot list the worker cache in %s to sweep it: %s", directory, exc)
        return
    excess = len(kept) + 1 - max_entries
    if excess > 0:
        kept.sort()
        doomed += [file for _, file in kept[:excess]]
    for file in doomed:
        try:
            os.unlink(file, dir_fd=dir_fd)
        except OSError:
            pass


def _remove_all(dir_fd: int) -> int:
    """Delete every file of ours in the directory; how many of them were entries."""
    removed = 0
    for name in os.listdir(dir_fd):
        is_entry = _ENTRY_FILE.fullmatch(name) is not None
        ours = _STRIPE_FILE.fullmatch(name) or _LEGACY_LOCK_FILE.fullmatch(name) or _TEMP_FILE.fullmatch(name)
        if not (is_entry or ours):
            continue  # not ours: leave it
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        removed += is_entry
    return removed
