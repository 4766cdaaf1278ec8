"""A KD run's reference to its teacher: the --teacher file's path and SHA-256, which KD
checkpoints and final.pt record instead of a copy of the teacher's weights."""
from __future__ import annotations

import logging
from pathlib import Path

from mlic.caffe.weight_files import initialize_weights, is_teacher_layer
from mlic.engine.checkpoint import verify
from mlic.integrity import file_sha256
from mlic.errors import UserInputError

log = logging.getLogger("mlic.train")


def is_teacher_key(key: str) -> bool:
    """A state-dict entry of a layer a KD net takes from the teacher file (*_wsd_*:
    teacher.conv_wsd_1_1.weight in our ports, layers.conv_wsd_1_1.weight in a CaffeNet).
    Not the temperature Scale layers: stage 2 trains them, so checkpoints keep them."""
    parts = key.split(".")
    return len(parts) >= 2 and is_teacher_layer(parts[-2])


def teacher_reference(path: str) -> dict:
    """{"path", "sha256"} of a --teacher file (a hash recorded beside it must match)."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"--teacher: {p} does not exist")
    recorded = verify(p)
    return {"path": str(p.resolve()), "sha256": recorded or file_sha256(p)}


def check_teacher_reference(ref: dict, current: dict, what: str) -> None:
    """The teacher a checkpoint was trained with is the one given now."""
    if ref and ref.get("sha256") != current["sha256"]:
        raise UserInputError(f"{what} was trained with the teacher {ref.get('path')} (SHA-256 "
                             f"{str(ref.get('sha256'))[:16]}...), but --teacher {current['path']} is a different "
                             f"file (SHA-256 {current['sha256'][:16]}...); give the same teacher")


def load_referenced_teacher(model, ref: dict, what: str) -> None:
    """Loads the teacher a KD checkpoint refers to (by path) into the net's teacher layers,
    after checking that the file is still the one it was trained with (SHA-256)."""
    p = Path(ref["path"])
    if not p.is_file():
        raise UserInputError(f"{what} refers to its teacher {p}, which does not exist (KD checkpoints keep the "
                             "teacher's path and hash, not its weights, unless trained with --embed-teacher)")
    got = file_sha256(p)
    if got != ref["sha256"]:
        raise UserInputError(f"{what} refers to its teacher {p}, which has changed since (SHA-256 {got[:16]}... "
                             f"instead of {ref['sha256'][:16]}...)")
    for line in initialize_weights(model, None, str(p)).lines():
        log.info("%s", line)
