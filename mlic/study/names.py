"""The names a person reads for the jobs of the demo and the study.

Jobs are stored under short keys (folder names such as ``nokd`` or
``kd-ce-decay-s1fc-all``); everything printed, tabled or plotted names them with
:func:`name`, in the README's words, and shows the key beside the name where a reader
may want to open the folder (:func:`with_key`).
"""
from __future__ import annotations

import re
from typing import List, Optional

STANDIN = "pretrain"
TEACHER = "teacher"

_FIXED = {
    STANDIN: "ImageNet stand-in",
    TEACHER: "teacher (WSDDN)",
    "nokd": "student without KD",
    "nokd-equal-budget": "student without KD, trained as long as stage 1 + stage 2",
}


def _join(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _stage1_phrase(stage1: str, regions: str) -> Optional[str]:
    """How an arm's stage 1 departs from the released one (None: it does not)."""
    if stage1 == "skip":
        return "no stage 1"
    where = [] if stage1 == "convs+fc" else ["on the convs only"]
    if regions == "topk":
        where.append("over the top-k regions")
    return "stage 1 " + ", ".join(where) if where else None


def arm_name(arm) -> str:
    """A distilled student (an mlic.study.pipeline.Arm) by what it changes in the released
    recipe."""
    parts = []
    if arm.kd_loss == "l2":
        parts.append("the paper's L2 loss")
    if arm.teacher == "frozen":
        parts.append("a frozen teacher")
    s1 = _stage1_phrase(arm.stage1, arm.regions)
    if s1:
        parts.append(s1)
    ss = "" if arm.soft_scale is None else f", soft-scale lr_mult {arm.soft_scale:g}"
    if not parts:
        return f"student, KD as released (soft cross-entropy){ss}"
    if parts == ["no stage 1"]:
        return f"student, KD without stage 1{ss}"
    return f"student, KD with {_join(parts)}{ss}"


def stage1_name(key: str) -> Optional[str]:
    m = re.fullmatch(r"stage1-(fc|convs)-(all|topk)-(caffe-decay|frozen)", key)
    if not m:
        return None
    parts = ["on the convs only"] if m.group(1) == "convs" else []
    if m.group(2) == "topk":
        parts.append("over the top-k regions")
    if m.group(3) == "frozen":
        parts.append("with a frozen teacher")
    return "KD stage 1 (feature level)" + (f": {', '.join(parts)}" if parts else ", as released")


_ARM_KEY = re.compile(r"kd-(ce|l2)-(decay|frozen)-s1(skip|fc-all|fc-topk|convs-all|convs-topk)(?:-ss([0-9.e+-]+))?")


def _arm(key: str):
    """The Arm whose key this is (Arm.key read backwards), or None."""
    from mlic.study.pipeline import Arm

    m = _ARM_KEY.fullmatch(key)
    if not m:
        return None
    s1, _, regions = m.group(3).partition("-")
    arm = Arm("soft-ce" if m.group(1) == "ce" else "l2", "caffe-decay" if m.group(2) == "decay" else "frozen",
              {"skip": "skip", "fc": "convs+fc", "convs": "convs"}[s1], regions or "all",
              None if m.group(4) is None else float(m.group(4)))
    return arm if arm.key == key else None


def name(key: str) -> str:
    """The readable name of a job key; a key with folders before it (``seed3/...``,
    ``lr0.01/...``, ``budget/...``, ``tune/...``) gets what they mean around the name.
    An unknown key is returned as it is."""
    seed = re.match(r"seed(\d+)/(.*)", key)
    if seed:
        return f"seed {seed.group(1)}: {name(seed.group(2))}"
    rate = re.match(r"lr([0-9.e+-]+)/(.*)", key)
    if rate:
        return f"{name(rate.group(2))}, at base rate {rate.group(1)}"
    tune = re.match(r"tune/(teacher_lr|lr|soft_scale)([0-9.e+-]+)/(.*)", key)
    if tune:
        what = {"teacher_lr": "base rate", "lr": "base rate", "soft_scale": "soft-scale lr_mult"}[tune.group(1)]
        return f"{name(tune.group(3))}, {what} {tune.group(2)} (choosing on the validation split)"
    budget = re.fullmatch(r"budget/(.*)-(\d+)", key)
    if budget:
        return f"{name(budget.group(1))}, {budget.group(2)} iterations in all"
    if key in _FIXED:
        return _FIXED[key]
    s1 = stage1_name(key)
    if s1:
        return s1
    arm = _arm(key)
    return arm_name(arm) if arm is not None else key


def with_key(key: str) -> str:
    """The name with the key (the job's folder) beside it."""
    n = name(key)
    return n if n == key else f"{n} [{key}]"
