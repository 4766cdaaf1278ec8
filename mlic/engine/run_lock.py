"""One run per output folder: a lock on <out>/run.lock that the system releases when the
process ends, however it ends (kill -9 included), so a killed run never leaves it stuck.
The file names the holder, for the sentence that refuses a second run."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from mlic.errors import OutputError, UserInputError

log = logging.getLogger("mlic.engine")

LOCK_NAME = "run.lock"


class FolderInUse(UserInputError):
    """Another process holds the output folder."""


# what flock says when another open file holds the lock (EACCES on some file systems)
_HELD_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _named_holder(fd: int) -> str:
    """The sentence the holding process wrote into the lock file."""
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that has not said which"


def make_out_folder(out: os.PathLike, flag: str = "--out") -> None:
    """The folder a run writes (`flag` names it), created when missing; OutputError
    naming it and the cause otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{flag} {out}: cannot create the folder ({exc.strerror or exc})") from None


@contextlib.contextmanager
def hold_folder(folder: os.PathLike, flag: str = "--out"):
    """Holds `folder` for the duration; FolderInUse (naming the other process) when
    another run holds it, OutputError when the lock file cannot be created."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{flag} {folder}: cannot write there ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _HELD_ERRNOS:
                log.warning("%s %s: the folder cannot be locked (%s): nothing keeps a second run from writing "
                            "into it at the same time", flag, folder, exc.strerror or exc)
                yield
                return
            raise FolderInUse(f"{flag} {folder} is in use by another run ({_named_holder(fd)}); wait for it to end, or give "
                              "another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def holder(folder: os.PathLike) -> Optional[str]:
    """Who holds `folder` now (the lock file's sentence), or None when no live process
    does; for a caller about to delete the folder. Nothing is written."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return _named_holder(fd) if exc.errno in _HELD_ERRNOS else None
    finally:
        os.close(fd)
    return None
