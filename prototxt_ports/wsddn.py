"""The teacher: WSDDN as in wsddn_train / wsddn_deploy, and as the conv_wsd_* /
fc_wsd_* sub-network of train_stage1 / train_stage2.

Blob flow (released names; the "kd" column is the teacher inside the KD nets):

    data --VGG16--> conv5_3 (conv_wsd_5_3) --ROIPooling(rois)--> roi_pooling
      --fc6/relu6/drop6 (fc_wsd_6)--> --fc7/relu7/drop7 (fc_wsd_7)-->
      --fc8_c (fc_wsd_8_c)--> reshape_branch1 [N,B,C] [--temp_branch1_learn-->]
      --fc8_d (fc_wsd_8_d)--> reshape_branch2 [N,B,C] [--temp_branch2_learn-->]
      --> class_score (softmax over C) x proposal_score (softmax over B)
      = proposal_class_score --image_level_score (region sum)--> [N, C]
      --CrossEntropyLoss(labels)--> loss

The two softmaxes, the product and the region sum run as one fused op
(mlic.ops.wsddn_two_stream) while image_level_score's weight is all ones (its filler,
lr_mult 0); a loaded weight that is not all ones is applied as the general weighted
sum over regions.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from prototxt_ports import _ops
from prototxt_ports.base import CaffeScale, RegionSum, caffe_linear
from prototxt_ports.config import NetConfig
from prototxt_ports.losses import cross_entropy_loss
from prototxt_ports.rois import as_rois, split_inputs
from prototxt_ports.vgg import VGG16

# Caffe layer names of the head per naming style
HEAD_NAMES: Dict[str, Dict[str, str]] = {
    "wsddn": {"fc6": "fc6", "fc7": "fc7", "fc8_c": "fc8_c", "fc8_d": "fc8_d"},
    "kd": {"fc6": "fc_wsd_6", "fc7": "fc_wsd_7", "fc8_c": "fc_wsd_8_c", "fc8_d": "fc_wsd_8_d"},
}
_BODY_STYLE = {"wsddn": "vgg", "kd": "kd"}


def wsddn_to_kd_name(layer: str) -> str:
    """Layer name in a WSDDN model -> the KD teacher's (conv1_1 -> conv_wsd_1_1,
    fc6 -> fc_wsd_6, fc8_c -> fc_wsd_8_c, ...); other names unchanged. For
    ``mlic.caffe.weight_files.load_port(..., rename=wsddn_to_kd_name)``."""
    if layer.startswith("conv") and not layer.startswith("conv_wsd_"):
        return "conv_wsd_" + layer[4:]
    return {"fc6": "fc_wsd_6", "fc7": "fc_wsd_7", "fc8_c": "fc_wsd_8_c", "fc8_d": "fc_wsd_8_d"}.get(layer, layer)


class WSDDN(VGG16):
    """WSDDN teacher.

    names: "wsddn" (conv1_1.., fc6, fc7, fc8_c, fc8_d: wsddn_train/deploy) or "kd"
      (conv_wsd_1_1.., fc_wsd_6, fc_wsd_7, fc_wsd_8_c, fc_wsd_8_d: the KD nets).
    heads: build fc8_c/fc8_d, the two-stream head and image_level_score (train_stage1
      has none: its teacher stops at fc_wsd_7).
    temperature: add the Scale layers temp_branch1_learn (per class, C) and
      temp_branch2_learn (per region, B) on the logits, as in train_stage2.
    dropout: drop6/drop7 active in training mode (Caffe: TRAIN phase).

    forward(data [N,3,H,W], rois [N*B,6] (or list_roi [N,5B] / label_roi), labels
    [N,C] optional, all_blobs=False) -> dict of blobs by their released names:
    conv5_3, roi, roi_pooling, fc6, fc7, fc8_c, fc8_d, reshape_branch1/2,
    [temp_branch1_learn/2_learn], class_score, proposal_score, proposal_class_score
    ([N,B,C]), image_level_score [N,C], and loss when labels are given (also the
    key "loss"). ``all_blobs`` adds every conv/pool blob. Shapes are ours ([N,B,C],
    [N,C]); Caffe's are N x B x C x 1 and N x 1 x C x 1 with the same values.
    """

    def __init__(self, cfg: NetConfig = NetConfig(), names: str = "wsddn", *, heads: bool = True,
                 temperature: bool = False, dropout: bool = True):
        if names not in HEAD_NAMES:
            raise ValueError(f"names must be 'wsddn' or 'kd', got {names!r}")
        if temperature and not heads:
            raise ValueError("temperature Scale layers need the heads (heads=True)")
        _ops.require()
        super().__init__(cfg, _BODY_STYLE[names])
        self.names = names
        self.heads = heads
        self.temperature = temperature
        self.dropout_enabled = dropout
        n = HEAD_NAMES[names]
        self.fc_names = n
        m = cfg.multipliers
        in_f = self.out_channels * cfg.pooled_size ** 2
        self._add_caffe_layer(n["fc6"], "InnerProduct", caffe_linear(in_f, cfg.fc_width), m["fc"])
        self._add_caffe_layer(n["fc7"], "InnerProduct", caffe_linear(cfg.fc_width, cfg.fc_width), m["fc"])
        if heads:
            C, B = cfg.num_classes, cfg.num_rois
            self._add_caffe_layer(n["fc8_c"], "InnerProduct", caffe_linear(cfg.fc_width, C), m["head"])
            if temperature:
                self._add_caffe_layer("temp_branch1_learn", "Scale", CaffeScale((C,), 2, cfg.temp_branch1_init),
                                      m["temperature"])
            self._add_caffe_layer(n["fc8_d"], "InnerProduct", caffe_linear(cfg.fc_width, C), m["head"])
            if temperature:
                self._add_caffe_layer("temp_branch2_learn", "Scale", CaffeScale((B,), 1, cfg.temp_branch2_init),
                                      m["temperature"])
            self._add_caffe_layer("image_level_score", "Convolution", RegionSum(B), m["region_sum"])

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.cfg.dropout, self.training and self.dropout_enabled)

    def forward(self, data: Tensor, rois: Optional[Tensor] = None, labels: Optional[Tensor] = None, *,
                list_roi: Optional[Tensor] = None, label_roi: Optional[Tensor] = None,
                all_blobs: bool = False) -> Dict[str, Tensor]:
        cfg = self.cfg
        if data.dim() != 4:
            raise ValueError(f"data must be [N, 3, H, W], got shape {tuple(data.shape)}")
        labels, list_roi, rois = split_inputs(data, cfg.num_classes, label_roi, labels, list_roi, rois)
        num = data.shape[0]
        roi = as_rois(rois, list_roi, num, cfg.num_rois)
        blobs: Dict[str, Tensor] = {"roi": roi}
        if labels is not None:
            blobs["labels"] = labels
        if list_roi is not None:
            blobs["list_roi"] = list_roi
        feat = self.run_body(data, blobs if all_blobs else None)
        blobs[self.feature_name] = feat
        pooled = _ops.roi_pool(feat, roi, cfg.pooled_size, cfg.spatial_scale, cfg.roi_score_scale,
                               cfg.roi_score_bias)
        blobs["roi_pooling"] = pooled
        n = self.fc_names
        x = self._drop(F.relu(getattr(self, n["fc6"])(pooled.flatten(1))))
        blobs[n["fc6"]] = x
        x = self._drop(F.relu(getattr(self, n["fc7"])(x)))
        blobs[n["fc7"]] = x
        if not self.heads:
            if labels is not None:
                raise ValueError("labels given to a WSDDN without heads (it has no image scores to score)")
            return blobs
        shape = (num, cfg.num_rois, cfg.num_classes)
        c = getattr(self, n["fc8_c"])(x)
        d = getattr(self, n["fc8_d"])(x)
        blobs[n["fc8_c"]], blobs[n["fc8_d"]] = c, d
        r1, r2 = c.reshape(shape), d.reshape(shape)
        blobs["reshape_branch1"], blobs["reshape_branch2"] = r1, r2
        if self.temperature:
            r1, r2 = self.temp_branch1_learn(r1), self.temp_branch2_learn(r2)
            blobs["temp_branch1_learn"], blobs["temp_branch2_learn"] = r1, r2
        image, region, pc, pd = _ops.two_stream(r1, r2)
        blobs["class_score"], blobs["proposal_score"], blobs["proposal_class_score"] = pc, pd, region
        if not self.image_level_score.is_ones():
            image = self.image_level_score(region)
        blobs["image_level_score"] = image
        if labels is not None:
            if labels.shape[0] != num or labels.numel() != image.numel():
                raise ValueError(f"labels must be [N, C] = [{num}, {cfg.num_classes}], got {tuple(labels.shape)}")
            blobs["loss"] = cross_entropy_loss(image, labels)
        return blobs

    @torch.no_grad()
    def predict(self, data: Tensor, rois: Optional[Tensor] = None, *, list_roi: Optional[Tensor] = None):
        """(image scores [N, C], region-class scores [N, B, C]) in eval mode semantics
        of the current module (call .eval() for the deploy net)."""
        out = self.forward(data, rois, list_roi=list_roi)
        return out["image_level_score"], out["proposal_class_score"]
