"""The custom ops the ports use: the compiled mlic.ops kernels. Without the extension
they raise an error that says how to build it (the pure-PyTorch references in
mlic.ops.reference run only when called by name)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mlic import ops


def require() -> None:
    """Raises ExtensionNotBuilt (with how to build it) when the compiled ops are missing;
    the ports call it when they are built."""
    ops.assert_has_ops()


def roi_pool(features: Tensor, rois: Tensor, pooled: int, spatial_scale: float, score_scale: float,
             score_bias: float) -> Tensor:
    return ops.roi_pool(features, rois.detach(), pooled, pooled, spatial_scale, score_scale, score_bias)[0]


def max_pool_2x2(x: Tensor) -> Tensor:
    """Caffe MAX pooling, kernel 2, stride 2, no pad. F.max_pool2d(ceil_mode=True) is
    the same computation whenever the input has at least 2 rows and columns: both give
    ceil((H-2)/2)+1 windows starting at 2i, clipped to the input (with k = s and no pad
    the last window always starts inside), and both keep the first maximum of a window
    in row-major order. A 1-pixel side is outside PyTorch's domain: mlic's Caffe pooling
    then (one clipped window, as Caffe)."""
    if x.shape[-1] >= 2 and x.shape[-2] >= 2:
        return F.max_pool2d(x, 2, 2, 0, ceil_mode=True)
    return ops.caffe_pool2d(x, 2, 2, 0, "max")


def two_stream(cls_logits: Tensor, det_logits: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """WSDDN head on [N, R, C]: (image [N, C], region [N, R, C], class softmax,
    region softmax); the two softmaxes are returned for inspection (no gradient)."""
    return torch.ops.mlic.wsddn_two_stream(cls_logits, det_logits)
