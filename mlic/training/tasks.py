"""What each training stage runs: the model (a prototxt port), its objective and its
predictions, over batches of the HumanAttData pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

STAGES = ("wsddn", "stage1", "stage2", "student")


@dataclass
class Switches:
    """SPEC section 8: the paper's variants; each default is the released code's behaviour."""

    kd_loss: str = "soft-ce"          # stage 2: "soft-ce" (code) | "l2" (paper)
    stage1_train: str = "convs+fc"    # stage 1: "convs+fc" (code) | "convs" (paper)
    teacher: str = "caffe-decay"      # KD stages: "caffe-decay" (code) | "frozen"
    regions: str = "all"              # stage 1: "all" (code) | "topk" (paper's R')
    topk: int = 50

    def describe(self) -> str:
        return (f"kd-loss={self.kd_loss} stage1-train={self.stage1_train} teacher={self.teacher} "
                f"regions={self.regions}" + (f" (k={self.topk})" if self.regions == "topk" else ""))


@dataclass
class Task:
    stage: str
    model: nn.Module
    step: Callable[[nn.Module, object], Dict[str, Tensor]]
    # (image probabilities [N, C], region-class scores [N, B, C] or None); None: no classifier
    predict: Optional[Callable[[nn.Module, object], Tuple[Tensor, Optional[Tensor]]]]
    describe: str = ""


def _loss_sum(out: Dict[str, Tensor], names) -> Dict[str, Tensor]:
    losses = {k: out[k] for k in names if k in out}
    if not losses:
        raise RuntimeError(f"the model returned none of the losses {list(names)}; got {sorted(out)}")
    total = sum(losses.values())
    return {"loss": total, **{k: v.detach() for k, v in losses.items()}} if len(losses) > 1 else {"loss": total}


def build_task(stage: str, cfg, switches: Optional[Switches] = None, device: str = "cpu") -> Task:
    from prototxt_ports import WSDDN, KDStage1, KDStage2, Student
    from prototxt_ports.losses import sigmoid_cross_entropy_loss

    switches = switches or Switches()
    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")

    if stage == "wsddn":
        model = WSDDN(cfg)

        def step(m, b):
            return _loss_sum(m(b.data, b.rois, b.labels), ["loss"])

        def predict(m, b):
            return m.predict(b.data, b.rois)

        return Task(stage, model.to(device), step, predict, "WSDDN teacher (CrossEntropyLoss on image scores)")

    if stage == "student":
        model = Student(cfg)

        def step(m, b):
            logits = m(b.data)[m.head_name]
            return {"loss": sigmoid_cross_entropy_loss(logits, b.labels)}

        def predict(m, b):
            return m.predict(b.data), None

        return Task(stage, model.to(device), step, predict, "student without KD (SigmoidCrossEntropyLoss)")

    if stage == "stage1":
        extra = {"topk": switches.topk} if switches.regions == "topk" else {}
        model = KDStage1(cfg, stage1_train=switches.stage1_train, teacher=switches.teacher,
                         regions=switches.regions, **extra)

        def step(m, b):
            return _loss_sum(m(b.data, label_roi=b.label_roi), ["loss_euclid"])

        return Task(stage, model.to(device), step, None, "KD stage 1 (feature-level) " + switches.describe())

    model = KDStage2(cfg, kd_loss=switches.kd_loss, teacher=switches.teacher)

    def step(m, b):
        return _loss_sum(m(b.data, label_roi=b.label_roi), ["loss_soft", "loss_sig"])

    def predict(m, b):
        return m.student.predict(b.data), None

    return Task(stage, model.to(device), step, predict, "KD stage 2 (prediction-level) " + switches.describe())
