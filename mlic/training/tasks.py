"""What each training stage runs: the model (a prototxt port), its objective and its
predictions, over batches of the HumanAttData pipeline."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from mlic.caffe import CaffeNet
from mlic.errors import UserInputError
from mlic.ops.functional import CE_EPS
from prototxt_ports import WSDDN, KDStage1, KDStage2, Student
from prototxt_ports.losses import sigmoid_cross_entropy_loss

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
    p = image_scores.detach().reshape(labels.shape).float()
    at_bounds = ((p <= CE_EPS) | (p >= 1 - CE_EPS)).all()
    pos = labels.reshape(p.shape) > 0.5
    low = ((p <= CE_EPS) & pos).sum() * 2 > pos.sum()
    return (at_bounds & low & pos.any()).float()


def build_task(stage: str, cfg, switches: Optional[Switches] = None, device: str = "cpu",
               memory_format: str = "channels_last") -> Task:
    """The stage's port on `device`, its conv bodies in `memory_format` (CaffePort.set_memory_format)."""
    switches = switches or Switches()
    if stage not in STAGES:
        raise UserInputError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    task = _build_task(stage, cfg, switches)
    task.model = task.model.set_memory_format(memory_format).to(device)
    return task


def _build_task(stage: str, cfg, switches: Switches) -> Task:

    if stage == "wsddn":
        model = WSDDN(cfg)

        def step(m, b):
            out = m(b.data, b.rois, b.labels)
            return {**_loss_sum(out, ["loss"]), "scores_pinned": scores_pinned(out["image_level_score"], b.labels)}

        def predict(m, b):
            return m.predict(b.data, b.rois)

        return Task(stage, model, step, predict, "WSDDN teacher (CrossEntropyLoss on image scores)", cfg)

    if stage == "student":
        model = Student(cfg)

        def step(m, b):
            logits = m(b.data)[m.head_name]
            return {"loss": sigmoid_cross_entropy_loss(logits, b.labels)}

        def predict(m, b):
            return m.predict(b.data), None

        return Task(stage, model, step, predict, "student without KD (SigmoidCrossEntropyLoss)", cfg)

    if stage == "stage1":
        extra = {"topk": switches.topk} if switches.regions == "topk" else {}
        model = KDStage1(cfg, stage1_train=switches.stage1_train, teacher=switches.teacher,
                         regions=switches.regions, **extra)

        def step(m, b):
            return _loss_sum(m(b.data, label_roi=b.label_roi), ["loss_euclid"])

        return Task(stage, model, step, None, "KD stage 1 (feature-level) " + switches.describe(), cfg)

    model = KDStage2(cfg, kd_loss=switches.kd_loss, teacher=switches.teacher)

    def step(m, b):
        out = m(b.data, label_roi=b.label_roi)
        return {**_loss_sum(out, ["loss_soft", "loss_sig"]), **m.monitor(out)}  # monitor: logged only

    def predict(m, b):
        return m.student.predict(b.data), None

    return Task(stage, model, step, predict, "KD stage 2 (prediction-level) " + switches.describe(), cfg)


def build_prototxt_task(path: str, device: str, source: Optional[str] = None, root_folder: str = "",
                        batch_size: Optional[int] = None):
    """(Task, HumanAttDataConfig) for a Caffe net: a CaffeNet in phase TRAIN whose objective
    (sum of loss_weight x loss tops) is minimised, fed by its HumanAttData layer's settings;
    source / root_folder / batch_size override the layer's."""
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
    loss_tops = list(net.loss_tops)

    def step(m, b):
        m(**{top_data: b.data, top_label: b.label_roi})
        if len(loss_tops) == 1:
            return {"loss": m.objective}
        # each loss top as well, as a stage's own step reports them
        return {"loss": m.objective, **{t: m.blobs[t].detach().reshape(()) for t in loss_tops}}

    score = classifier_scores(net, top_label)
    predict = None
    if score is not None:
        blob, sigmoid = score

        def predict(m, b):
            m(**{top_data: b.data, top_label: b.label_roi})
            s = m.blobs[blob].detach().reshape(b.labels.shape)
            return (torch.sigmoid(s) if sigmoid else s), None

    describe = f"{path} (net '{net.name}', losses {dict(net.loss_tops)})"
    if score is not None:
        describe += f"; image scores for testing: {'sigmoid of ' if score[1] else ''}blob '{score[0]}'"
    return Task("prototxt", net.to(device), step, predict, describe), data


def classifier_scores(net, label_top: str) -> Optional[Tuple[str, bool]]:
    """(blob, through a sigmoid) of a Caffe net's image scores: the first bottom of its
    CrossEntropyLoss (probabilities) or SigmoidCrossEntropyLoss (logits) against the
    labels sliced from the data layer's label_roi top; None when the net has no such loss
    (train_stage1 only matches features)."""
    source = {}  # a Split layer's tops (inserted for blobs with several consumers) -> its bottom
    for lp in net.layer_params:
        if lp.type == "Split":
            source.update({t: lp.bottom[0] for t in lp.top})

    def origin(blob):
        while blob in source:
            blob = source[blob]
        return blob

    labels = {lp.top[0] for lp in net.layer_params
              if lp.type == "Slice" and [origin(b) for b in lp.bottom] == [label_top]}
    for lp in net.layer_params:
        if lp.type in ("CrossEntropyLoss", "SigmoidCrossEntropyLoss") and len(lp.bottom) == 2 \
                and origin(lp.bottom[1]) in labels:
            return origin(lp.bottom[0]), lp.type == "SigmoidCrossEntropyLoss"
    return None
