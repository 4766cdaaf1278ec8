"""The VGG16 conv body of the released nets, with Caffe layer names.

Convs are 3x3, pad 1, each followed by ReLU; pools are Caffe MAX 2x2 stride 2. Names
follow a pattern: the WSDDN net and the KD students use conv1_1 ... conv5_3 and pool1
... pool5, the teacher inside the KD nets conv_wsd_1_1 ... conv_wsd_5_3 and
pool_wsd_1 ... .
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from mlic.ops.functional import relu_max_pool
from prototxt_ports import _ops
from prototxt_ports.base import CaffePort, caffe_conv
from prototxt_ports.config import NetConfig

NAME_STYLES: Dict[str, Tuple[str, str]] = {
    "vgg": ("conv{block}_{index}", "pool{block}"),
    "kd": ("conv_wsd_{block}_{index}", "pool_wsd_{block}"),
}


class VGG16(CaffePort):
    """Conv body described by ``cfg.body`` (default VGG16 up to conv5_3).

    names: "vgg" (conv1_1, pool1, ...) or "kd" (conv_wsd_1_1, pool_wsd_1, ...), or give
      conv_pattern / pool_pattern with {block} and {index} fields.
    final_pool: append a pool named after the last conv's block (the student's pool5).

    forward(x) -> {blob name: tensor}: every conv (after its ReLU) and pool output.
    """

    def __init__(self, cfg: NetConfig, names: str = "vgg", *, conv_pattern: Optional[str] = None,
                 pool_pattern: Optional[str] = None, final_pool: bool = False, in_channels: int = 3):
        super().__init__()
        if names not in NAME_STYLES and (conv_pattern is None or pool_pattern is None):
            raise ValueError(f"names must be one of {sorted(NAME_STYLES)} (or give conv_pattern and pool_pattern), "
                             f"got {names!r}")
        cp, pp = NAME_STYLES.get(names, (None, None))
        self.conv_pattern = conv_pattern or cp
        self.pool_pattern = pool_pattern or pp
        self.cfg = cfg
        self.body_plan: List[Tuple[str, str]] = []  # (kind, blob/layer name) in order
        ch = in_channels
        for layer in cfg.body_layers():
            if layer.kind == "conv":
                name = self.conv_pattern.format(block=layer.block, index=layer.index)
                self._add_caffe_layer(name, "Convolution", caffe_conv(ch, layer.channels, cfg.conv_init),
                                      cfg.multipliers["conv"])
                ch = layer.channels
            else:
                name = self.pool_pattern.format(block=layer.block, index=0)
            self.body_plan.append((layer.kind, name))
        if final_pool:  # named after the last conv's block, as pool5 after conv5_3
            last = [layer for layer in cfg.body_layers() if layer.kind == "conv"][-1]
            name = self.pool_pattern.format(block=last.block, index=0)
            if any(n == name for _, n in self.body_plan):
                raise ValueError(f"the body already has a layer named {name!r}; the final pool needs that name")
            self.body_plan.append(("pool", name))
        self.out_channels = ch

    @property
    def feature_name(self) -> str:
        """Blob name of the last conv (conv5_3 / conv_wsd_5_3)."""
        return [n for k, n in self.body_plan if k == "conv"][-1]

    @property
    def conv_names(self) -> List[str]:
        return [n for k, n in self.body_plan if k == "conv"]

    def run_body(self, x: torch.Tensor, blobs: Optional[dict] = None, stop_at: Optional[str] = None) -> torch.Tensor:
        """The body on x; every blob goes into `blobs` when given. Stops after `stop_at`."""
        if x.dim() != 4 or x.shape[1] != self._first_conv().in_channels:
            raise ValueError(f"{type(self).__name__}: expected input [N, {self._first_conv().in_channels}, H, W], "
                             f"got {tuple(x.shape)}")
        x = x.contiguous(memory_format=self.memory_format)
        plan = self.body_plan
        i = 0
        while i < len(plan):
            kind, name = plan[i]
            if kind == "conv":
                x = getattr(self, name)(x)
                if blobs is None and name != stop_at and i + 1 < len(plan) and plan[i + 1][0] == "pool":
                    x = relu_max_pool(x, _ops.max_pool_2x2)  # the conv's own blob is not kept
                    name = plan[i + 1][1]
                    i += 1
                else:
                    # in place: the convolution's backward needs its input, not its output
                    x = F.relu_(x)
            else:
                x = _ops.max_pool_2x2(x)
            if blobs is not None:
                blobs[name] = x
            if name == stop_at:
                break
            i += 1
        return x

    def _first_conv(self):
        return getattr(self, self.conv_names[0])

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        blobs: Dict[str, torch.Tensor] = {}
        self.run_body(x, blobs)
        return blobs
