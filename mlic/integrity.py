"""Files the project writes and reads back: written atomically (a crash mid-write never
leaves a truncated file in place of a good one), with their SHA-256 beside them
(``<file>.sha256``, in `sha256sum -c` format), which every reader checks when it is there.
Also what KD runs record of their teacher file."""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Type

from mlic.errors import UserInputError

log = logging.getLogger("mlic.integrity")

_CHUNK = 1 << 20
HASH_SUFFIX = ".sha256"


class IntegrityError(UserInputError):
    """A file that does not match the SHA-256 recorded beside it."""


def file_sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_path(path: os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + HASH_SUFFIX)


def recorded_hash_file(path: os.PathLike) -> Optional[Path]:
    """The hash file of `path`: beside it, or beside the file a link points to."""
    for p in (Path(path), Path(os.path.realpath(path))):
        if hash_path(p).exists():
            return hash_path(p)
    return None


def recorded_sha256(path: os.PathLike) -> Optional[str]:
    """The hash in <path>.sha256, or None when there is none (or it holds no hash)."""
    side = recorded_hash_file(path)
    try:
        text = side.read_text().split() if side is not None else []
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and re.fullmatch(r"[0-9a-fA-F]{64}", text[0]) else None


def verify_file(path: os.PathLike, label: Optional[str] = None) -> Optional[str]:
    """Checks `path` against the hash recorded beside it; returns that hash, or None when
    there is no hash file. Raises IntegrityError when they differ, or when the hash file
    holds no hash. `label`: how the message names the file (default: its path)."""
    side = recorded_hash_file(path)
    if side is None:
        return None
    label = label or os.fspath(path)
    want = recorded_sha256(path)
    if want is None:
        raise IntegrityError(f"{label}: its hash file {side} holds no SHA-256 (damaged); the file cannot be "
                             "verified")
    if file_sha256(path) != want:
        raise IntegrityError(f"{label} is corrupt: its SHA-256 differs from the one recorded in {side.name} "
                             "(a truncated or altered file)")
    return want


def warn_unverified(path: os.PathLike, label: Optional[str] = None) -> None:
    log.warning("%s has no SHA-256 beside it (%s): it is read unverified", label or os.fspath(path),
                hash_path(path).name)


# ----------------------------------------------------------------------------- writing


class _HashingWriter:
    """A write-only stream that hashes what passes through and keeps the first OSError
    (torch.save wraps it in a RuntimeError from its zip writer)."""

    def __init__(self, raw):
        self.raw, self.sha = raw, hashlib.sha256()
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            n = self.raw.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.sha.update(memoryview(data)[:n] if n is not None else data)
        return len(data) if n is None else n

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def write_error_message(path: os.PathLike, exc: OSError) -> str:
    """One sentence naming the file and the cause of a failed write."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing {path}"
    if exc.errno == errno.EFBIG:
        return f"file size limit exceeded writing {path}"
    return f"cannot write {path}: {exc.strerror or exc}"


def _cause_oserror(exc: BaseException) -> Optional[OSError]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def _interrupt_after():
    """Ctrl-C during a write takes effect when the write is done: raised inside torch's zip
    writer, a KeyboardInterrupt comes out as a RuntimeError, and the file would be lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:  # None: a handler not installed from Python, which cannot be put back
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def atomic_write(path: os.PathLike, write: Callable[[Any], None], error: Type[Exception],
                 before_replace: Optional[Callable[[str], None]] = None) -> str:
    """Writes `path` through a temporary file in the same folder (fsynced, then renamed
    over `path`); returns the SHA-256 of what was written. `before_replace(digest)` runs
    between the two. A failed write leaves nothing behind and raises `error` with one
    sentence naming the file and the cause."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise error(write_error_message(path, exc)) from exc
    writer = None
    try:
        with _interrupt_after():
            with os.fdopen(fd, "wb") as raw:
                writer = _HashingWriter(raw)
                write(writer)
                raw.flush()
                os.fsync(raw.fileno())
            digest = writer.sha.hexdigest()
            if before_replace is not None:
                before_replace(digest)
            os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, (error, KeyboardInterrupt, SystemExit)):
            raise
        oserr = (writer.error if writer is not None else None) or _cause_oserror(exc)
        if oserr is not None:
            raise error(write_error_message(path, oserr)) from exc
        raise
    return digest


def write_with_hash(path: os.PathLike, write: Callable[[Any], None], error: Type[Exception]) -> Path:
    """atomic_write of `path` with its hash in <path>.sha256. The hash file is renamed into
    place first: a kill between the two renames leaves the previous file (or none) behind
    a hash that does not match it, which reads as corrupt, never as intact."""
    path = Path(path)

    def write_hash(digest: str) -> None:
        atomic_write(hash_path(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()), error)

    atomic_write(path, write, error, before_replace=write_hash)
    return path
