"""The student (S-Cls) of train_stage1 / train_stage2, also the deployable classifier.

Image path (stage 2 and deploy):
    data --Interp--> data_size224 --VGG16--> conv5_3 --pool5--> fc6/relu6/drop6
      --> fc7/relu7/drop7 --> fc8_mscoco [N, C] [--Scale--> fc8_mscoco_soft]
RoI path (stage 1):
    data --Interp--> data_size224 --VGG16--> conv5_3 --ROIPooling(roi_224)-->
      roi_pooling_224 --> fc6 --> fc7
The student always resizes inside the network (Interp with aligned corners; identity
when the input already has the student's size), like the released nets.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from mlic.ops.functional import caffe_interp
from prototxt_ports import _ops
from prototxt_ports.base import CaffeScale, caffe_linear
from mlic.ops import geometry
from prototxt_ports.config import NetConfig
from prototxt_ports.vgg import VGG16


class Student(VGG16):
    """VGG16 classifier on the image resized to cfg.student_size.

    fc6_input: "pool5" (stage 2, deploy: fc6 sees pool5) or "roi" (stage 1: fc6 sees the
      RoI-pooled conv5_3). With the released sizes (224 -> 7x7 pool5, 7x7 RoI pooling)
      both give the same fc6 shape and either path runs on the same weights.
    head: build the classifier cfg.student_head (fc8_mscoco); train_stage1 has none.
    soft_scale: add the Scale layer <head>_soft (per class, filler cfg.soft_scale_init).
    dropout: drop6/drop7 active in training mode.

    forward(data, all_blobs=False) -> {data_size224, conv5_3, pool5, fc6, fc7,
      fc8_mscoco, [fc8_mscoco_soft]} (+ every conv/pool blob with all_blobs).
    forward_rois(data, roi_small [K,6], all_blobs=False) -> {data_size224, conv5_3,
      roi_pooling_224, fc6, fc7}.
    """

    def __init__(self, cfg: NetConfig = NetConfig(), *, fc6_input: str = "pool5", head: bool = True,
                 soft_scale: bool = False, dropout: bool = True):
        if fc6_input not in ("pool5", "roi"):
            raise ValueError(f"fc6_input must be 'pool5' or 'roi', got {fc6_input!r}")
        if soft_scale and not head:
            raise ValueError("soft_scale needs the classifier head (head=True)")
        if fc6_input == "roi":
            _ops.require()
        super().__init__(cfg, "vgg", final_pool=True)
        self.fc6_input = fc6_input
        self.head_name = cfg.student_head if head else None
        self.soft_name = f"{cfg.student_head}_soft" if soft_scale else None
        self.dropout_enabled = dropout
        s = cfg.student_size
        self.resize_name = f"data_size{s}"
        self.roi_pool_name = f"roi_pooling_{s}"
        self.pool5_name = self.body_plan[-1][1]
        p5 = geometry.pool_output_size(cfg.feature_size(s), 2, 2, 0, False)
        self.pool5_size = p5
        side = cfg.pooled_size if fc6_input == "roi" else p5
        if side < 1:
            raise ValueError(f"student_size {s} is too small for the conv body")
        m = cfg.multipliers
        self._add_caffe_layer("fc6", "InnerProduct", caffe_linear(self.out_channels * side * side, cfg.fc_width),
                              m["fc"])
        self._add_caffe_layer("fc7", "InnerProduct", caffe_linear(cfg.fc_width, cfg.fc_width), m["fc"])
        if head:
            self._add_caffe_layer(self.head_name, "InnerProduct", caffe_linear(cfg.fc_width, cfg.num_classes),
                                  m["head"])
        if soft_scale:
            self._add_caffe_layer(self.soft_name, "Scale",
                                  CaffeScale((cfg.num_classes,), 1, cfg.soft_scale_init), m["soft_scale"])

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.cfg.dropout, self.training and self.dropout_enabled)

    def resize(self, data: Tensor) -> Tensor:
        if data.dim() != 4:
            raise ValueError(f"data must be [N, 3, H, W], got shape {tuple(data.shape)}")
        s = self.cfg.student_size
        return caffe_interp(data, s, s)

    def _fc(self, x: Tensor, blobs: Dict[str, Tensor]) -> Tensor:
        fc6 = self.fc6
        if x[0].numel() != fc6.in_features:
            raise ValueError(
                f"Student fc6 takes {fc6.in_features} inputs per sample (built with fc6_input={self.fc6_input!r}), "
                f"got {tuple(x.shape[1:])} = {x[0].numel()}; the pool5 and RoI-pooling sizes of this config differ "
                f"(pool5 {self.pool5_size}x{self.pool5_size}, RoI {self.cfg.pooled_size}x{self.cfg.pooled_size})")
        x = self._drop(F.relu(fc6(x.flatten(1))))
        blobs["fc6"] = x
        x = self._drop(F.relu(self.fc7(x)))
        blobs["fc7"] = x
        return x

    def forward(self, data: Tensor, all_blobs: bool = False) -> Dict[str, Tensor]:
        blobs: Dict[str, Tensor] = {}
        x = self.resize(data)
        blobs[self.resize_name] = x
        feat = self.run_body(x, blobs if all_blobs else None, stop_at=self.feature_name)
        blobs[self.feature_name] = feat
        x = _ops.max_pool_2x2(feat)
        blobs[self.pool5_name] = x
        x = self._fc(x, blobs)
        if self.head_name is not None:
            x = getattr(self, self.head_name)(x)
            blobs[self.head_name] = x
            if self.soft_name is not None:
                blobs[self.soft_name] = getattr(self, self.soft_name)(x)
        return blobs

    def forward_rois(self, data: Tensor, rois: Tensor, all_blobs: bool = False) -> Dict[str, Tensor]:
        """RoI path: rois [K, 6] in the student's frame (WsdRoigenSingleScale)."""
        cfg = self.cfg
        blobs: Dict[str, Tensor] = {}
        x = self.resize(data)
        blobs[self.resize_name] = x
        feat = self.run_body(x, blobs if all_blobs else None, stop_at=self.feature_name)
        blobs[self.feature_name] = feat
        pooled = _ops.roi_pool(feat, rois, cfg.pooled_size, cfg.spatial_scale, cfg.roi_score_scale,
                               cfg.roi_score_bias)
        blobs[self.roi_pool_name] = pooled
        self._fc(pooled, blobs)
        return blobs

    @torch.no_grad()
    def predict(self, data: Tensor) -> Tensor:
        """Class probabilities sigmoid(fc8) [N, C] (call .eval() first for deploy)."""
        if self.head_name is None:
            raise ValueError("this Student has no classifier head")
        return torch.sigmoid(self.forward(data)[self.head_name])
