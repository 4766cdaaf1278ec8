"""The two knowledge-distillation stages (train_stage1, train_stage2): a WSDDN teacher
with the KD names (conv_wsd_*, fc_wsd_*) and a Student, wired as the released nets.

The teacher never receives a gradient (propagate_down 0 into it everywhere), so it runs
under torch.no_grad(). What happens to its parameters in the solver is the `teacher`
option (SPEC section 8):
  "caffe-decay" (default, the released nets): the teacher's blobs keep their prototxt
      lr_mult/decay_mult (1/1, 2/0, 10/10, ...; temperatures 1/0), so Caffe's SGD still
      applies weight decay to them (mlic.solver.CaffeSGD does, with decay_without_grad).
  "frozen": lr_mult 0 and decay_mult 0 for every teacher blob, requires_grad False.

Stage 1 options: stage1_train "convs+fc" (released: student convs, fc6, fc7 learn) or
"convs" (paper: only the convs; fc6/fc7 get lr_mult 0 and requires_grad False, the
gradient still flows through them); regions "all" (released: all B proposals, each
pooled feature weighted by its Edge-Box score) or "topk" (paper's subset R': per image
the k proposals with the highest teacher objectness, max over classes of the teacher's
proposal_score, computed in the same teacher forward; the teacher then has its fc8 heads).

Stage 2 option: kd_loss "soft-ce" (released: SigmoidCrossEntropyLoss of
fc8_mscoco_soft against the teacher's image_level_score) or "l2" (paper: squared L2
between sigmoid(fc8_mscoco_soft) and the teacher's scores, / (2 num)).

Both stages keep the teacher's Dropout active in training mode as the released TRAIN
nets do (its targets are dropped-out features); teacher_dropout=False turns it off.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from prototxt_ports.base import CaffeLayerEntry, CaffePort
from prototxt_ports.config import NetConfig
from prototxt_ports.losses import euclidean_loss, probability_l2_loss, sigmoid_cross_entropy_loss
from prototxt_ports.rois import as_rois, single_scale_rois, split_inputs
from prototxt_ports.student import Student
from prototxt_ports.wsddn import WSDDN, wsddn_to_kd_name

TEACHER_MODES = ("caffe-decay", "frozen")


class _KDBase(CaffePort):
    teacher: WSDDN
    student: Student

    def __init__(self, cfg: NetConfig, teacher: str):
        super().__init__()
        if teacher not in TEACHER_MODES:
            raise ValueError(f"teacher must be one of {TEACHER_MODES}, got {teacher!r}")
        self.cfg = cfg
        self.teacher_mode = teacher

    def _setup_teacher(self) -> None:
        if self.teacher_mode == "frozen":
            self.teacher.set_multipliers(0.0, 0.0)

    def caffe_entries(self) -> List[CaffeLayerEntry]:
        return self.teacher.caffe_entries() + self.student.caffe_entries()

    def _inputs(self, data, label_roi, labels, list_roi, rois):
        if data.dim() != 4:
            raise ValueError(f"data must be [N, 3, H, W], got shape {tuple(data.shape)}")
        labels, list_roi, rois = split_inputs(data, self.cfg.num_classes, label_roi, labels, list_roi, rois)
        roi = as_rois(rois, list_roi, data.shape[0], self.cfg.num_rois)
        return labels, list_roi, roi

    def _run_teacher(self, data: Tensor, roi: Tensor, all_blobs: bool) -> Dict[str, Tensor]:
        with torch.no_grad():
            return self.teacher(data, roi, all_blobs=all_blobs)


class KDStage1(_KDBase):
    """train_stage1: EuclideanLoss between the teacher's fc_wsd_7 on the full image's
    proposals and the student's fc7 on the same proposals in its 224 frame.

    forward(data, label_roi) or forward(data, labels=..., list_roi=... | rois=...)
    -> dict with the teacher blobs (conv_wsd_5_3, roi_pooling, fc_wsd_6, fc_wsd_7),
    the student blobs (data_size224, conv5_3, roi_pooling_224, fc6, fc7), roi,
    roi_224, loss_euclid (= loss; num = number of RoIs used), and for regions="topk"
    objectness [N, B] and roi_index (rows of roi used).
    """

    def __init__(self, cfg: NetConfig = NetConfig(), *, stage1_train: str = "convs+fc",
                 teacher: str = "caffe-decay", regions: str = "all", topk: Optional[int] = None,
                 teacher_dropout: bool = True):
        super().__init__(cfg, teacher)
        if stage1_train not in ("convs+fc", "convs"):
            raise ValueError(f"stage1_train must be 'convs+fc' or 'convs', got {stage1_train!r}")
        if regions not in ("all", "topk"):
            raise ValueError(f"regions must be 'all' or 'topk', got {regions!r}")
        if regions == "topk":
            if topk is None or not 1 <= int(topk) <= cfg.num_rois:
                raise ValueError(f"regions='topk' needs topk in [1, num_rois={cfg.num_rois}], got {topk!r}")
        elif topk is not None:
            raise ValueError("topk is only used with regions='topk'")
        self.stage1_train, self.regions, self.topk = stage1_train, regions, topk
        self.teacher = WSDDN(cfg, "kd", heads=regions == "topk", dropout=teacher_dropout)
        self.student = Student(cfg, fc6_input="roi", head=False)
        self._setup_teacher()
        if stage1_train == "convs":
            self.student.set_multipliers(0.0, 0.0, layers=["fc6", "fc7"])
        self.roi_small_name = f"roi_{cfg.student_size}"

    def forward(self, data: Tensor, label_roi: Optional[Tensor] = None, *, labels: Optional[Tensor] = None,
                list_roi: Optional[Tensor] = None, rois: Optional[Tensor] = None,
                all_blobs: bool = False) -> Dict[str, Tensor]:
        cfg = self.cfg
        labels, list_roi, roi = self._inputs(data, label_roi, labels, list_roi, rois)
        roi_small = single_scale_rois(roi, cfg.student_size, cfg.input_size)
        out: Dict[str, Tensor] = {}
        if labels is not None:
            out["label"] = labels
        t = self._run_teacher(data, roi, all_blobs)
        target = t["fc_wsd_7"]
        used = roi_small
        if self.regions == "topk":
            n, b = data.shape[0], cfg.num_rois
            objectness = t["proposal_score"].amax(2)  # [N, B]
            order = torch.sort(objectness, dim=1, descending=True, stable=True).indices[:, : self.topk]
            idx = (torch.sort(order, dim=1).values + torch.arange(n, device=order.device).view(n, 1) * b).reshape(-1)
            out["objectness"], out["roi_index"] = objectness, idx
            target, used = target[idx], roi_small[idx]
        s = self.student.forward_rois(data, used, all_blobs=all_blobs)
        loss = euclidean_loss(target, s["fc7"])
        out.update(t)
        out.update(s)
        out["roi"], out[self.roi_small_name] = roi, roi_small
        if list_roi is not None:
            out["list_roi"] = list_roi
        out["loss_euclid"] = loss
        out["loss"] = loss
        return out


class KDStage2(_KDBase):
    """train_stage2: teacher image scores with temperature Scale layers as soft targets
    of the student's scaled logits, plus the labels for its raw logits.

    forward(data, label_roi) or forward(data, labels=..., list_roi=... | rois=...)
    -> dict with the teacher blobs (..., temp_branch1_learn, temp_branch2_learn,
    class_score, proposal_score, proposal_class_score, image_level_score [N, C]), the
    student blobs (data_size224, conv5_3, pool5, fc6, fc7, fc8_mscoco,
    fc8_mscoco_soft), label, roi, loss_soft, loss_sig and
    loss = soft_weight * loss_soft + hard_weight * loss_sig (released weights 1, 1).
    """

    def __init__(self, cfg: NetConfig = NetConfig(), *, kd_loss: str = "soft-ce", teacher: str = "caffe-decay",
                 teacher_dropout: bool = True, soft_weight: float = 1.0, hard_weight: float = 1.0):
        super().__init__(cfg, teacher)
        if kd_loss not in ("soft-ce", "l2"):
            raise ValueError(f"kd_loss must be 'soft-ce' or 'l2', got {kd_loss!r}")
        self.kd_loss = kd_loss
        self.soft_weight, self.hard_weight = float(soft_weight), float(hard_weight)
        self.teacher = WSDDN(cfg, "kd", heads=True, temperature=True, dropout=teacher_dropout)
        self.student = Student(cfg, fc6_input="pool5", head=True, soft_scale=True)
        self._setup_teacher()

    def forward(self, data: Tensor, label_roi: Optional[Tensor] = None, *, labels: Optional[Tensor] = None,
                list_roi: Optional[Tensor] = None, rois: Optional[Tensor] = None,
                all_blobs: bool = False) -> Dict[str, Tensor]:
        cfg = self.cfg
        labels, list_roi, roi = self._inputs(data, label_roi, labels, list_roi, rois)
        if labels is None:
            raise ValueError("stage 2 needs the image labels (label_roi, or labels=...) for loss_sig")
        if labels.shape[0] != data.shape[0] or labels[0].numel() != cfg.num_classes:
            raise ValueError(f"labels must be [N, C] = [{data.shape[0]}, {cfg.num_classes}], "
                             f"got {tuple(labels.shape)}")
        t = self._run_teacher(data, roi, all_blobs)
        s = self.student(data, all_blobs=all_blobs)
        soft_logits = s[self.student.soft_name]
        logits = s[self.student.head_name]
        target = t["image_level_score"]
        if self.kd_loss == "soft-ce":
            loss_soft = sigmoid_cross_entropy_loss(soft_logits, target)
        else:
            loss_soft = probability_l2_loss(soft_logits, target)
        loss_sig = sigmoid_cross_entropy_loss(logits, labels)
        out: Dict[str, Tensor] = {"label": labels, "roi": roi}
        if list_roi is not None:
            out["list_roi"] = list_roi
        out.update(t)
        out.update(s)
        out["loss_soft"], out["loss_sig"] = loss_soft, loss_sig
        out["loss"] = self.soft_weight * loss_soft + self.hard_weight * loss_sig
        return out

    @torch.no_grad()
    def monitor(self, out: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Scalars that explain a stage-2 run, from a forward's blobs: the learnable soft
        scale (fc8_mscoco_soft: mean, min, max over classes), the soft targets (mean, and the
        share saturated below 0.01 or above 0.99), and each loss term's gradient at the
        student's classifier: the norm of d loss / d fc8 weight for the soft and the hard
        term, and the cosine between the two (negative: the teacher pulls against the labels)."""
        x = out[self.student.head_name]
        scale = getattr(self.student, self.student.soft_name).weight
        t = out["image_level_score"].reshape(x.shape)
        y = out["label"].reshape(x.shape)
        num = x.shape[0]
        p_soft = torch.sigmoid(scale * x)
        # d loss / d fc8 output (SPEC section 3; the paper's L2 through the sigmoid)
        g_soft = scale * (p_soft - t) / num
        if self.kd_loss == "l2":
            g_soft = g_soft * p_soft * (1 - p_soft)
        g_soft = self.soft_weight * g_soft
        g_hard = self.hard_weight * (torch.sigmoid(x) - y) / num
        fc7 = out["fc7"].reshape(num, -1)
        w_soft, w_hard = g_soft.t() @ fc7, g_hard.t() @ fc7
        n_soft, n_hard = w_soft.norm(), w_hard.norm()
        cos = (w_soft * w_hard).sum() / (n_soft * n_hard).clamp_min(1e-30)
        return {"soft_scale": scale.mean(), "soft_scale_min": scale.min(), "soft_scale_max": scale.max(),
                "target_mean": t.mean(), "target_saturated": ((t < 0.01) | (t > 0.99)).float().mean(),
                "grad_fc8_soft": n_soft, "grad_fc8_hard": n_hard, "grad_fc8_cos": cos}
