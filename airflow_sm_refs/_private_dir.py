"""Opening the per-worker cache directory only if it is private to this user.

The directory holds secret values, so it is the boundary that keeps them from
other local users. The default one sits on ``/dev/shm``, which every user can
write to: someone else may create the path first, as a directory of their own
or as a symlink to one, before this worker does. So the directory is used only
if:

- it is not a symlink, so nobody can point the cache somewhere of their own;
- it is owned by this user, since the owner of a directory can change its mode
  whenever they like;
- its mode is ``0700``, so no other user can list, remove or swap the files in it.

The path is checked with ``lstat``, opened with ``O_NOFOLLOW | O_DIRECTORY`` and
the descriptor checked again with ``fstat``: the path could be replaced between
the check and the open, the descriptor cannot. Every later file operation goes
through that descriptor (``dir_fd``), never through the path, and opens its file
with ``O_NOFOLLOW`` too.
"""

from __future__ import annotations

import os
import stat


def _check_private(st: os.stat_result, path: str) -> None:
    """Raise :class:`PermissionError` unless ``st`` is a directory of this user's with mode ``0700``."""
    if stat.S_ISLNK(st.st_mode):
        raise PermissionError(f"{path} is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} is owned by uid {st.st_uid}, not by this worker's user (uid {os.geteuid()})")
    if st.st_mode & 0o077:
        raise PermissionError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, open to group or others; it must be 0700"
        )


def _open_private_dir(path: str, *, create: bool) -> int:
    """Open ``path`` as a directory only this user can enter; return its descriptor.

    :raises PermissionError: it is a symlink, not a directory, someone else's, or open to others
    :raises OSError: it cannot be created or opened
    """
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    _check_private(os.lstat(path), path)
    # lstat then open: the descriptor is what every later file operation goes
    # through, so checking it again closes the gap between the two.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_private(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd
