"""The custom ops the ports use: the compiled mlic.ops kernels. Without the extension
they raise an error that says how to build it (the pure-PyTorch references in
mlic.ops.reference run only when called by name)."""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

from mlic import ops
from mlic.ops import functional as CF


def require() -> None:
    """Raises ExtensionNotBuilt (with how to build it) when the compiled ops are missing;
    the ports call it when they are built."""
    ops.assert_has_ops()


def roi_pool(features: Tensor, rois: Tensor, pooled: int, spatial_scale: float, score_scale: float,
             score_bias: float) -> Tensor:
    return ops.roi_pool(features, rois.detach(), pooled, pooled, spatial_scale, score_scale, score_bias)


def max_pool_2x2(x: Tensor) -> Tensor:
    """Caffe MAX pooling, kernel 2, stride 2, no pad (PyTorch's max_pool2d where it gives
    Caffe's result: sides of at least 2 pixels)."""
    return CF.caffe_pooling(x, 2, 2, 0, "max")


def two_stream(cls_logits: Tensor, det_logits: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """WSDDN head on [N, R, C]: (image [N, C], region [N, R, C], class softmax,
    region softmax); the two softmaxes are returned for inspection (no gradient)."""
    return ops.operators().wsddn_two_stream(cls_logits, det_logits)
