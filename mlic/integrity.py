"""The SHA-256 of a file: what checkpoints record beside themselves and what KD runs record
of their teacher file."""
import hashlib
import os

_CHUNK = 1 << 20


def file_sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
