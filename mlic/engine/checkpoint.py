"""Checkpoints: written atomically (a crash mid-write never leaves a truncated file in place
of a good one), each with its SHA-256 beside it (``<file>.sha256``, in `sha256sum -c`
format), checked when read, and found again for --resume, newest intact first."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch

from mlic.errors import RunStopped, UserInputError
from mlic.integrity import (HASH_SUFFIX, IntegrityError, file_sha256, hash_path, recorded_hash_file,  # noqa: F401
                            recorded_sha256, verify_file, warn_unverified, write_with_hash)

log = logging.getLogger("mlic.engine")

CKPT_RE = re.compile(r"^iter_(\d+)\.pt$")
# atomic_save's partial files: ".<name>.<random>.tmp"
PARTIAL_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


class CheckpointError(UserInputError):
    """A checkpoint (or weights file with a hash) that cannot be used: missing, truncated,
    not matching its hash, or not loadable."""


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (full disk, no permission, ...)."""


def atomic_save(obj: Any, path: os.PathLike) -> Path:
    """torch.save(obj) to `path` atomically, with its hash in <path>.sha256
    (mlic.integrity.write_with_hash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_with_hash(path, lambda f: torch.save(obj, f), CheckpointWriteError)


def verify(path: os.PathLike) -> Optional[str]:
    """Checks `path` against its recorded hash; returns the hash (None: none recorded).
    Raises CheckpointError when the file is missing or does not match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return verify_file(path)
    except IntegrityError as exc:
        raise CheckpointError(str(exc)) from None


def load_checkpoint(path: os.PathLike) -> dict:
    """The checkpoint's contents, after checking its hash (a file without one is read as
    it is, with a warning)."""
    path = Path(path)
    if verify(path) is None:
        warn_unverified(path)
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
    """The newest checkpoint whose hash matches, else the newest without a hash (unverified),
    without loading it."""
    unverified = None
    for _, p in list_checkpoints(out_dir):
        try:
            if verify(p) is not None:
                return p
            unverified = unverified or p
        except CheckpointError:
            continue
    return unverified


def load_newest_intact(out_dir: os.PathLike) -> Optional[Tuple[Path, dict]]:
    """(path, state) of the newest checkpoint that matches its hash and loads; a corrupt
    newer one is skipped with a warning, and so is one without a hash (unverified), which
    is taken only when no verified one loads. None when there is no checkpoint;
    CheckpointError when there are some but none is usable."""
    found = [p for _, p in list_checkpoints(out_dir)]
    unverified = [p for p in found if recorded_hash_file(p) is None]
    problems = []
    for p in [p for p in found if p not in unverified] + unverified:
        try:
            state = load_checkpoint(p)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", p, exc)
            problems.append(str(exc))
            continue
        skipped = [q for q in found if q in unverified and found.index(q) < found.index(p)]
        for q in skipped:
            log.warning("skipping checkpoint %s: it has no SHA-256 beside it, so it cannot be verified; "
                        "an older verified one is used instead", q)
        if problems or skipped:
            log.warning("resuming from %s, the newest %s checkpoint", p,
                        "unverified" if p in unverified else "intact")
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
