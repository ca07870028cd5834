"""Entry files of the per-worker tier: read and written whole, private to the worker's user.

One file per entry, named by a SHA-256 of its key (file names are hashes, not
secret names). A writer fills ``.<name>.<pid>.<random>.tmp`` (mode ``0600``,
created exclusively) and renames it over ``<name>.entry``, so a reader sees the
old entry or the new one, never half of one; the writer's pid in the
temporary name lets the sweep tell litter from a write in progress. Every file
is opened relative to the directory's descriptor without following symlinks.

A file that is not a regular file, not owned by the reader's uid, open to group
or others, or too large is a miss, as is one that does not decode
(:mod:`airflow_sm_refs._worker_entry`): the checks are made on the opened
descriptor, so a file swapped in after them is not read.

This module knows nothing of expiry, locks or the directory's bounds.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat

from airflow_sm_refs._worker_entry import _MAX_ENTRY_BYTES, _decode, _encode, _Entry

log = logging.getLogger("airflow_sm_refs")

_ENTRY_FILE = re.compile(r"[0-9a-f]{64}\.entry")
_TEMP_FILE = re.compile(r"\.[0-9a-f]{64}\.(\d+)\.[0-9a-f]+\.tmp")

_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def _describe(key: tuple[str, ...]) -> str:
    """``secret 'prod/db' (AWSCURRENT)``, from a cache key, for logs."""
    secret_id, version = key[2], key[3]
    kind, _, label = version.partition(":")
    return f"secret {secret_id!r} ({f'version id {label}' if kind == 'id' else label or version})"


def _read_entry(dir_fd: int | None, name: str, key: tuple[str, ...] | None, euid: int) -> _Entry | None:
    """The entry named ``name`` if it is intact, for ``key`` (``None``: any), and private to ``euid``; otherwise ``None``."""
    if dir_fd is None:  # closed (and dir_fd=None would mean the current directory)
        return None
    try:
        fd = os.open(name + ".entry", os.O_RDONLY | os.O_NONBLOCK | _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("Worker cache entry %s cannot be opened (%s); treating it as a miss", name if key is None else _describe(key), exc)
        return None
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != euid
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
        log.debug("Worker cache entry %s is corrupt or incomplete; treating it as a miss", name if key is None else _describe(key))
    return entry


def _write_entry(dir_fd: int, name: str, entry: _Entry) -> None:
    """Replace the entry named ``name`` with ``entry``, atomically.

    :raises OSError: it could not be written (a full ``/dev/shm``, a removed
        directory); no temporary file is left behind, then or on any other exception
    """
    data = _encode(entry)
    temp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    written = False
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # The sweep reads ages from stat: mtime is when the value was fetched.
            os.utime(fd, (entry.fetched_at, entry.fetched_at))
        finally:
            os.close(fd)
        os.replace(temp, name + ".entry", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        written = True
    finally:
        if not written:  # also on KeyboardInterrupt and the like: no stray copy of a value
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass


def _unlink_file(dir_fd: int | None, file: str) -> None:
    """Delete ``file`` from the directory, if it is there."""
    if dir_fd is not None:
        try:
            os.unlink(file, dir_fd=dir_fd)
        except OSError:
            pass
