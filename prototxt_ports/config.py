"""Sizes and hyper-parameters of the ported networks (defaults: the released prototxts)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from mlic.ops import geometry

# The VGG16 conv body of all four released nets up to conv5_3 (the student adds pool5).
VGG16_BODY: Tuple[str, ...] = (
    "conv1_1:64", "conv1_2:64", "pool1",
    "conv2_1:128", "conv2_2:128", "pool2",
    "conv3_1:256", "conv3_2:256", "conv3_3:256", "pool3",
    "conv4_1:512", "conv4_2:512", "conv4_3:512", "pool4",
    "conv5_1:512", "conv5_2:512", "conv5_3:512",
)

# transform_param mean_value of the released nets' data layers (B, G, R), subtracted from
# 0..255 pixels
RELEASED_MEAN_BGR: Tuple[float, float, float] = (103.52, 116.28, 123.675)

# (lr_mult, decay_mult) per learnable blob (weight, bias), as in the released prototxts.
RELEASED_MULTIPLIERS: Dict[str, Tuple[Tuple[float, float], ...]] = {
    "conv": ((1.0, 1.0), (2.0, 0.0)),          # conv*_*, conv_wsd_*_*
    "fc": ((1.0, 1.0), (2.0, 0.0)),            # fc6, fc7, fc_wsd_6, fc_wsd_7
    "head": ((10.0, 10.0), (20.0, 0.0)),       # fc8_c, fc8_d, fc_wsd_8_*, fc8_mscoco
    "region_sum": ((0.0, 0.0),),               # image_level_score (1x1 conv, no bias)
    "temperature": ((1.0, 0.0),),              # temp_branch1_learn, temp_branch2_learn
    "soft_scale": ((10.0, 0.0),),              # fc8_mscoco_soft
}

_CONV_RE = re.compile(r"^conv(\d+)_(\d+):(\d+)$")
_POOL_RE = re.compile(r"^pool(\d+)$")


@dataclass(frozen=True)
class BodyLayer:
    kind: str       # "conv" or "pool"
    block: int
    index: int      # conv index within the block (0 for a pool)
    channels: int   # output channels of a conv (after the width multiplier); 0 for a pool


@dataclass(frozen=True)
class NetConfig:
    """Everything that sizes the ports.

    num_classes: C (80 for MS-COCO, 81 for NUS-WIDE); num_rois: B, proposals per image.
    input_size: the teacher's image side (672); student_size: the side the student
      resizes its input to inside the network (224; names the blobs data_size224,
      roi_224, roi_pooling_224).
    width: channel multiplier of the conv body (0.125 -> 8, 16, 32, 64, 64 channels);
      fc_dim: width of fc6/fc7 (None: round(4096 * width)).
    body: the conv body as "convB_I:channels" and "poolB" entries (default VGG16 up to
      conv5_3; smaller bodies describe reduced test nets). Pools are Caffe MAX 2x2/2.
    pooled_size, spatial_scale, roi_score_scale, roi_score_bias: ROIPooling params.
    temp_branch1_init / temp_branch2_init: the stage-2 teacher Scale fillers
      (logits x 2, i.e. T = 0.5); soft_scale_init: fc8_mscoco_soft's filler (0.2, T = 5).
    student_head: name of the student's last InnerProduct (its Scale is <name>_soft).
    conv_init: "xavier" (Caffe's xavier filler: U(-sqrt(3/fan_in), +)) or "zeros"
      (what the prototxts say: their convs give no filler, Caffe's default is constant 0,
      because they are meant to be loaded from ImageNet weights).
    multipliers: (lr_mult, decay_mult) per layer kind, see RELEASED_MULTIPLIERS.
    """

    num_classes: int = 80
    num_rois: int = 500
    input_size: int = 672
    student_size: int = 224
    width: float = 1.0
    fc_dim: Optional[int] = None
    body: Tuple[str, ...] = VGG16_BODY
    pooled_size: int = 7
    spatial_scale: float = 0.0625
    roi_score_scale: float = 1.0
    roi_score_bias: float = 0.0
    dropout: float = 0.5
    temp_branch1_init: float = 2.0
    temp_branch2_init: float = 2.0
    soft_scale_init: float = 0.2
    student_head: str = "fc8_mscoco"
    conv_init: str = "xavier"
    multipliers: Dict[str, Tuple[Tuple[float, float], ...]] = field(
        default_factory=lambda: dict(RELEASED_MULTIPLIERS), hash=False)

    def __post_init__(self):
        def bad(what):
            raise ValueError(f"NetConfig: {what}")

        for name in ("num_classes", "num_rois", "input_size", "student_size", "pooled_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.width, (int, float)) and self.width > 0 and math.isfinite(self.width)):
            bad(f"width must be a positive number, got {self.width!r}")
        if self.fc_dim is not None and (not isinstance(self.fc_dim, int) or self.fc_dim < 1):
            bad(f"fc_dim must be a positive integer or None, got {self.fc_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.spatial_scale > 0:
            bad(f"spatial_scale must be positive, got {self.spatial_scale!r}")
        if self.conv_init not in ("xavier", "zeros"):
            bad(f"conv_init must be 'xavier' or 'zeros', got {self.conv_init!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.student_head or ""):
            bad(f"student_head must be a layer name (letters, digits, _), got {self.student_head!r}")
        missing = set(RELEASED_MULTIPLIERS) - set(self.multipliers)
        if missing:
            bad(f"multipliers lacks {sorted(missing)}")
        self.body_layers()  # validates the body

    # -- derived sizes
    @property
    def fc_width(self) -> int:
        return self.fc_dim if self.fc_dim is not None else max(1, int(round(4096 * self.width)))

    def body_layers(self) -> List[BodyLayer]:
        """The parsed body (channels scaled by width)."""
        out, seen, convs = [], set(), 0
        for i, item in enumerate(self.body):
            m = _CONV_RE.match(item) if isinstance(item, str) else None
            if m:
                b, j, c = (int(g) for g in m.groups())
                ch = max(1, int(round(c * self.width)))
                out.append(BodyLayer("conv", b, j, ch))
                key = ("conv", b, j)
                convs += 1
            else:
                m = _POOL_RE.match(item) if isinstance(item, str) else None
                if not m:
                    raise ValueError(
                        f"NetConfig: body entry {i} is {item!r}; expected 'convB_I:channels' (e.g. 'conv1_1:64') "
                        f"or 'poolB' (e.g. 'pool1')")
                out.append(BodyLayer("pool", int(m.group(1)), 0, 0))
                key = ("pool", int(m.group(1)), 0)
            if key in seen:
                raise ValueError(f"NetConfig: body entry {i} ({item!r}) repeats a layer name")
            seen.add(key)
        if not convs or out[-1].kind != "conv":
            raise ValueError("NetConfig: the body must end with a conv layer (its output feeds RoI pooling)")
        return out

    @property
    def feature_channels(self) -> int:
        return self.body_layers()[-1].channels

    def feature_size(self, size: int) -> int:
        """Side of the last conv's output for an input side `size` (Caffe pooling rule)."""
        for layer in self.body_layers():
            if layer.kind == "pool":
                size = geometry.pool_output_size(size, 2, 2, 0, False)
        return size

    def replace(self, **changes) -> "NetConfig":
        return replace(self, **changes)
