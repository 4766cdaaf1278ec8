"""What each training stage runs: the model (a prototxt port), its objective and its
predictions, over batches of the HumanAttData pipeline."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

from torch import Tensor, nn

from mlic.errors import UserInputError

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
    net: Optional[object] = None  # the NetConfig of a stage's port


def _loss_sum(out: Dict[str, Tensor], names) -> Dict[str, Tensor]:
    losses = {k: out[k] for k in names if k in out}
    if not losses:
        raise RuntimeError(f"the model returned none of the losses {list(names)}; got {sorted(out)}")
    total = sum(losses.values())
    return {"loss": total, **{k: v.detach() for k, v in losses.items()}} if len(losses) > 1 else {"loss": total}


def scores_pinned(image_scores: Tensor, labels: Tensor) -> Tensor:
    """1 when every image score sits at CrossEntropyLoss's clamp bounds and most positive
    labels at the bottom one (a diverged WSDDN: its loss stays finite and its scores say
    nothing), else 0."""
    from mlic.caffe.functional import CE_EPS

    p = image_scores.detach().reshape(labels.shape).float()
    at_bounds = ((p <= CE_EPS) | (p >= 1 - CE_EPS)).all()
    pos = labels.reshape(p.shape) > 0.5
    low = ((p <= CE_EPS) & pos).sum() * 2 > pos.sum()
    return (at_bounds & low & pos.any()).float()


def build_task(stage: str, cfg, switches: Optional[Switches] = None, device: str = "cpu") -> Task:
    from prototxt_ports import WSDDN, KDStage1, KDStage2, Student
    from prototxt_ports.losses import sigmoid_cross_entropy_loss

    switches = switches or Switches()
    if stage not in STAGES:
        raise UserInputError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")

    if stage == "wsddn":
        model = WSDDN(cfg)

        def step(m, b):
            out = m(b.data, b.rois, b.labels)
            return {**_loss_sum(out, ["loss"]), "scores_pinned": scores_pinned(out["image_level_score"], b.labels)}

        def predict(m, b):
            return m.predict(b.data, b.rois)

        return Task(stage, model.to(device), step, predict, "WSDDN teacher (CrossEntropyLoss on image scores)", cfg)

    if stage == "student":
        model = Student(cfg)

        def step(m, b):
            logits = m(b.data)[m.head_name]
            return {"loss": sigmoid_cross_entropy_loss(logits, b.labels)}

        def predict(m, b):
            return m.predict(b.data), None

        return Task(stage, model.to(device), step, predict, "student without KD (SigmoidCrossEntropyLoss)", cfg)

    if stage == "stage1":
        extra = {"topk": switches.topk} if switches.regions == "topk" else {}
        model = KDStage1(cfg, stage1_train=switches.stage1_train, teacher=switches.teacher,
                         regions=switches.regions, **extra)

        def step(m, b):
            return _loss_sum(m(b.data, label_roi=b.label_roi), ["loss_euclid"])

        return Task(stage, model.to(device), step, None, "KD stage 1 (feature-level) " + switches.describe(), cfg)

    model = KDStage2(cfg, kd_loss=switches.kd_loss, teacher=switches.teacher)

    def step(m, b):
        return _loss_sum(m(b.data, label_roi=b.label_roi), ["loss_soft", "loss_sig"])

    def predict(m, b):
        return m.student.predict(b.data), None

    return Task(stage, model.to(device), step, predict, "KD stage 2 (prediction-level) " + switches.describe(),
                cfg)


def build_prototxt_task(path: str, device: str, source: Optional[str] = None, root_folder: str = "",
                        batch_size: Optional[int] = None):
    """(Task, HumanAttDataConfig) for a Caffe net: a CaffeNet in phase TRAIN whose objective
    (sum of loss_weight x loss tops) is minimised, fed by its HumanAttData layer's settings;
    source / root_folder / batch_size override the layer's."""
    from mlic.caffe import CaffeNet

    if not os.path.isfile(path):
        raise UserInputError(f"--prototxt: {path} does not exist")
    try:
        net = CaffeNet(path, "TRAIN")
    except (ValueError, RuntimeError) as e:
        raise UserInputError(f"--prototxt: {e}") from None
    if not net.loss_tops:
        raise UserInputError(f"--prototxt {path}: the net has no loss (no top with a loss_weight) in phase TRAIN")
    overrides = {}
    if source:
        overrides["source"] = source
    if root_folder:
        overrides["root_folder"] = root_folder
    if batch_size:
        overrides["batch_size"] = batch_size
    data, (top_data, top_label) = net.human_att_data(**overrides)
    if not os.path.isabs(data.source) and not os.path.isfile(data.source):
        near = os.path.join(os.path.dirname(os.path.abspath(path)), data.source)
        if os.path.isfile(near):
            data = replace(data, source=near)

    def step(m, b):
        m(**{top_data: b.data, top_label: b.label_roi})
        return {"loss": m.objective}

    describe = f"{path} (net '{net.name}', losses {dict(net.loss_tops)})"
    return Task("prototxt", net.to(device), step, None, describe), data
