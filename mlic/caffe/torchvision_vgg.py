"""torchvision's ImageNet VGG16 as starting weights for the released nets.

torchvision's VGG16 takes RGB in [0, 1], normalised per channel by ImageNet's mean and
std; the released nets take BGR in 0..255 minus a BGR mean, times the data layer's
``scale``. The map from one input to the other is per-channel affine,

    x_tv[c] = a[c] * x_caffe[2 - c] + b[c],
    a[c] = 1 / (255 * std[c] * scale),  b[c] = (mean_bgr[2 - c] - 255 * mean[c]) / (255 * std[c]),

so folding it into conv1_1 (weights times a[c], channels reversed; b[c] times the
weights' spatial sums added to the bias) makes conv1_1 on the Caffe input equal
torchvision's conv1_1 on its own input. Exactly so wherever the 3x3 window lies inside the
image; on the one-pixel border the zero padding stands for a different colour in the two
conventions unless b = 0: with the released mean (103.52, 116.28, 123.675) the blue
channel's b is -1.7e-4 (torchvision's 0.406 * 255 = 103.53), a difference far below the
rounding of 8-bit pixels.

The rest maps by position: features.{0,2,5,...,28} -> conv1_1 ... conv5_3,
classifier.0 / .3 / .6 -> fc6 / fc7 / fc8 (fc6 reads pool5's 512 x 7 x 7 in the same
channel-major order as Caffe's InnerProduct).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import torch

from mlic.caffe.errors import CaffemodelError

PREFIX = "torchvision:"
# torchvision's IMAGENET1K_V1 weights for vgg16, as torchvision names the file in its cache
VGG16_FILE = "vgg16-397923af.pth"
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
          "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_NAMES: Dict[str, str] = {
    **{f"features.{i}": name for i, name in zip(_CONV_INDEX, _CONVS)},
    "classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8",
}


@dataclass(frozen=True)
class InputTransform:
    """What the net's data layer does to 0..255 BGR pixels: subtract ``mean_bgr``, then
    multiply by ``scale`` (Caffe's transform_param mean_value and scale)."""

    mean_bgr: Tuple[float, float, float]
    scale: float = 1.0

    def __post_init__(self):
        if len(self.mean_bgr) != 3:
            raise ValueError(f"the input transform needs 3 BGR mean values, got {list(self.mean_bgr)}")
        if not self.scale > 0:
            raise ValueError(f"the input transform's scale must be positive, got {self.scale}")

    @classmethod
    def from_values(cls, mean_values: Sequence[float], scale: float = 1.0) -> "InputTransform":
        """From Caffe's mean_value list: none (0), one for all channels, or three (BGR)."""
        mv = tuple(float(m) for m in mean_values)
        if len(mv) == 0:
            mv = (0.0, 0.0, 0.0)
        elif len(mv) == 1:
            mv = mv * 3
        return cls(mv, float(scale))


def is_torchvision_spec(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def resolve(spec: str) -> str:
    """The local file behind 'torchvision:vgg16' (torchvision's cache: $TORCH_HOME/hub/
    checkpoints) or 'torchvision:PATH'. Never downloads."""
    what = spec[len(PREFIX):]
    if what == "vgg16":
        path = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)
        if not os.path.isfile(path):
            raise CaffemodelError(
                f"{spec}: torchvision's VGG16 weights are not in the local cache ({path}); nothing is downloaded "
                f"here: run torchvision.models.vgg16(weights='IMAGENET1K_V1') once where there is network access "
                f"(or copy {VGG16_FILE} there), or give the file as torchvision:/path/to/{VGG16_FILE}")
        return path
    if not os.path.isfile(what):
        raise CaffemodelError(f"{spec}: expected torchvision:vgg16 (torchvision's cache) or torchvision:PATH to "
                              f"its state dict file, and {what!r} is no such file")
    return what


def looks_like_vgg16(state) -> bool:
    return isinstance(state, dict) and "features.0.weight" in state and "classifier.0.weight" in state


def vgg16_param_dict(state, transform: InputTransform, source: str = "<state dict>"
                     ) -> "OrderedDict[str, torch.Tensor]":
    """torchvision's VGG16 state dict -> {'conv1_1/0': ..., 'fc8/1': ...} with the input
    convention folded into conv1_1 (see the module docstring)."""
    if not looks_like_vgg16(state):
        raise CaffemodelError(f"{source}: not a torchvision VGG16 state dict (no features.0.weight / "
                              f"classifier.0.weight)")
    extra = sorted(k for k in state if k.rpartition(".")[0] not in VGG16_NAMES)
    if extra:
        raise CaffemodelError(f"{source}: not torchvision's plain VGG16: unexpected entries {extra[:4]} "
                              f"(batch-norm or another architecture?)")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for prefix, name in VGG16_NAMES.items():
        for i, kind in enumerate(("weight", "bias")):
            key = f"{prefix}.{kind}"
            if key not in state:
                raise CaffemodelError(f"{source}: torchvision VGG16 state dict lacks {key}")
            out[f"{name}/{i}"] = state[key].detach().to(torch.float32).clone()
    w, b = fold_input_convention(out["conv1_1/0"], out["conv1_1/1"], transform)
    out["conv1_1/0"], out["conv1_1/1"] = w, b
    return out


def fold_input_convention(weight: torch.Tensor, bias: torch.Tensor, transform: InputTransform,
                          mean_rgb: Sequence[float] = IMAGENET_MEAN_RGB, std_rgb: Sequence[float] = IMAGENET_STD_RGB
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv1_1 (weight [O, 3(RGB), k, k], bias [O]) for torchvision's normalised RGB input
    -> the same conv for the Caffe input (weight channels in BGR order)."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"conv1_1 must take 3 input channels, got weight shape {tuple(weight.shape)}")
    w64, b64 = weight.to(torch.float64), bias.to(torch.float64)
    a = torch.tensor([1.0 / (255.0 * s * transform.scale) for s in std_rgb], dtype=torch.float64)
    mean_for_rgb = [transform.mean_bgr[2 - c] for c in range(3)]
    off = torch.tensor([(mean_for_rgb[c] - 255.0 * mean_rgb[c]) / (255.0 * std_rgb[c]) for c in range(3)],
                       dtype=torch.float64)
    folded = w64 * a.view(1, 3, 1, 1)
    new_bias = b64 + (w64.sum(dim=(2, 3)) * off.view(1, 3)).sum(1)
    return folded.flip(1).to(weight.dtype).contiguous(), new_bias.to(bias.dtype)

