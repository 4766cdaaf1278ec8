"""A KD net's teacher: which of its layers are the teacher's (by name), and the reference a
KD run keeps instead of a copy of the teacher's weights: the --teacher file's path and
SHA-256, checked wherever that file is read again."""
from __future__ import annotations

import os
from pathlib import Path

from mlic.caffe.errors import CaffemodelError
from mlic.errors import UserInputError
from mlic.integrity import file_sha256, verify_file

# The KD nets' teacher: its learned layers carry _wsd_ in their names (conv_wsd_1_1,
# fc_wsd_6, ...); the temperature Scale layers and the region sum belong to it too.
TEACHER_MARK = "_wsd_"
TEACHER_CONSTANT_LAYERS = ("temp_branch1_learn", "temp_branch2_learn", "image_level_score")


def is_teacher_layer(name: str) -> bool:
    """A layer whose weights must come from a trained teacher (conv_wsd_*, fc_wsd_*)."""
    return TEACHER_MARK in name


def belongs_to_teacher(name: str) -> bool:
    return is_teacher_layer(name) or name in TEACHER_CONSTANT_LAYERS


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
    recorded = verify_file(p)
    return {"path": str(p.resolve()), "sha256": recorded or file_sha256(p)}


def check_teacher_reference(ref: dict, current: dict, what: str) -> None:
    """The teacher a checkpoint was trained with is the one given now."""
    if ref and ref.get("sha256") != current["sha256"]:
        raise UserInputError(f"{what} was trained with the teacher {ref.get('path')} (SHA-256 "
                             f"{str(ref.get('sha256'))[:16]}...), but --teacher {current['path']} is a different "
                             f"file (SHA-256 {current['sha256'][:16]}...); give the same teacher")


class TeacherReferenceError(CaffemodelError, UserInputError):
    """A file that refers to its teacher names one that is gone or has changed."""


def referenced_teacher_file(ref: dict, source: str) -> str:
    """The teacher file a KD checkpoint refers to (ref: its path and SHA-256), after
    checking that it is still the one the checkpoint was trained with."""
    path = ref.get("path")
    if not path or not os.path.isfile(path):
        raise TeacherReferenceError(f"{source}: refers to its teacher {path}, which does not exist (a KD checkpoint "
                                    f"keeps the teacher's path and hash, not its weights, unless trained with "
                                    f"--embed-teacher)")
    got = file_sha256(path)
    if got != ref.get("sha256"):
        raise TeacherReferenceError(f"{source}: refers to its teacher {path}, which has changed since (SHA-256 "
                                    f"{got[:16]}... instead of {str(ref.get('sha256'))[:16]}...)")
    return path
