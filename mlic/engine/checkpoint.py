"""Checkpoints: written atomically (a crash mid-write never leaves a truncated file in place
of a good one), each with its SHA-256 beside it (``<file>.sha256``, in `sha256sum -c`
format), checked when read, and found again for --resume, newest intact first."""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch

from mlic.errors import RunStopped, UserInputError
from mlic.integrity import file_sha256

log = logging.getLogger("mlic.engine")

CKPT_RE = re.compile(r"^iter_(\d+)\.pt$")
HASH_SUFFIX = ".sha256"
# atomic_save's partial files: ".<name>.<random>.tmp"
PARTIAL_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


class CheckpointError(UserInputError):
    """A checkpoint (or weights file with a hash) that cannot be used: missing, truncated,
    not matching its hash, or not loadable."""


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (full disk, no permission, ...)."""


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


def hash_path(path: os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + HASH_SUFFIX)


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointWriteError(f"no space left on device writing {path}")
    if exc.errno == errno.EFBIG:
        return CheckpointWriteError(f"file size limit exceeded writing {path}")
    return CheckpointWriteError(f"cannot write {path}: {exc.strerror or exc}")


def _cause_oserror(exc: BaseException) -> Optional[OSError]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _write_atomic(path: Path, write: Callable[[Any], None],
                  before_replace: Optional[Callable[[str], None]] = None) -> str:
    """Writes `path` through a temporary file in the same folder (fsynced, then renamed
    over `path`); returns the SHA-256 of what was written. `before_replace(digest)` runs
    between the two."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    writer = None
    try:
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
        if isinstance(exc, (CheckpointWriteError, KeyboardInterrupt, SystemExit)):
            raise
        oserr = (writer.error if writer is not None else None) or _cause_oserror(exc)
        if oserr is not None:
            raise _write_error(path, oserr) from exc
        raise
    return digest


def atomic_save(obj: Any, path: os.PathLike) -> Path:
    """torch.save(obj) to `path` atomically, with its hash in <path>.sha256. The hash file
    is renamed into place first: a kill between the two renames leaves the previous file
    (or none) behind a hash that does not match it, which reads as corrupt, never as
    intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write_hash(digest: str) -> None:
        _write_atomic(hash_path(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))

    _write_atomic(path, lambda f: torch.save(obj, f), before_replace=write_hash)
    return path


def recorded_sha256(path: os.PathLike) -> Optional[str]:
    """The hash in <path>.sha256, or None when there is none."""
    side = hash_path(path)
    try:
        text = side.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and re.fullmatch(r"[0-9a-fA-F]{64}", text[0]) else None


def verify(path: os.PathLike) -> Optional[str]:
    """Checks `path` against its recorded hash; returns the hash (None: none recorded).
    Raises CheckpointError when the file is missing or does not match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    want = recorded_sha256(path)
    if want is None:
        return None
    got = file_sha256(path)
    if got != want:
        raise CheckpointError(f"{path} is corrupt: its SHA-256 differs from the one recorded in "
                              f"{hash_path(path).name} (a truncated or altered file)")
    return got


def load_checkpoint(path: os.PathLike) -> dict:
    """The checkpoint's contents, after checking its hash (a file without one is read as
    it is, e.g. from an older version)."""
    path = Path(path)
    verify(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None


def checkpoint_dir(out_dir: os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: os.PathLike, iteration: int) -> Path:
    return checkpoint_dir(out_dir) / f"iter_{iteration:08d}.pt"


def list_checkpoints(out_dir: os.PathLike) -> List[Tuple[int, Path]]:
    """(iteration, path) of the checkpoints in <out_dir>/checkpoints, newest first."""
    d = checkpoint_dir(out_dir)
    if not d.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))), reverse=True)


def latest_checkpoint(out_dir: os.PathLike) -> Optional[Path]:
    found = list_checkpoints(out_dir)
    return found[0][1] if found else None


def latest_intact_checkpoint(out_dir: os.PathLike) -> Optional[Path]:
    """The newest checkpoint whose hash matches (or that has none), without loading it."""
    for _, p in list_checkpoints(out_dir):
        try:
            verify(p)
            return p
        except CheckpointError:
            continue
    return None


def load_newest_intact(out_dir: os.PathLike) -> Optional[Tuple[Path, dict]]:
    """(path, state) of the newest checkpoint that is intact and loads; a corrupt newer
    one is skipped with a warning. None when there is no checkpoint; CheckpointError when
    there are some but none is usable."""
    found = list_checkpoints(out_dir)
    problems = []
    for _, p in found:
        try:
            state = load_checkpoint(p)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", p, exc)
            problems.append(str(exc))
            continue
        if problems:
            log.warning("resuming from %s, the newest intact checkpoint", p)
        return p, state
    if problems:
        raise CheckpointError(f"no intact checkpoint in {checkpoint_dir(out_dir)} ({'; '.join(problems)}); "
                              "remove the folder to start afresh")
    return None


def remove_stale_partials(folder: os.PathLike) -> int:
    """Removes the partial files a killed atomic_save left in `folder` (and hash files
    whose checkpoint is missing); returns the bytes freed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    freed = 0
    for p in folder.iterdir():
        stale = PARTIAL_RE.match(p.name) is not None
        if p.name.endswith(HASH_SUFFIX) and CKPT_RE.match(p.name[: -len(HASH_SUFFIX)]):
            stale = not p.with_name(p.name[: -len(HASH_SUFFIX)]).exists()
        if stale and p.is_file():
            freed += p.stat().st_size
            p.unlink(missing_ok=True)
    return freed


def remove_checkpoint(path: os.PathLike) -> None:
    Path(path).unlink(missing_ok=True)
    hash_path(path).unlink(missing_ok=True)
