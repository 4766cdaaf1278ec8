"""Checkpoints written atomically (a crash mid-write never leaves a truncated file in
place of a good one) and found again for --resume."""
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

CKPT_RE = re.compile(r"^iter_(\d+)\.pt$")


def atomic_save(obj: Any, path: os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def checkpoint_path(out_dir: os.PathLike, iteration: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"iter_{iteration:08d}.pt"


def latest_checkpoint(out_dir: os.PathLike) -> Optional[Path]:
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc})") from exc
