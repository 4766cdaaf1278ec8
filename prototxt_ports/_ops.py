"""The custom ops the ports use: the compiled mlic.ops kernels when the extension is
built, otherwise their pure-PyTorch references (same semantics, slower)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mlic import _ext
from mlic.caffe import functional as CF


def compiled() -> bool:
    return _ext.extension_available()


def roi_pool(features: Tensor, rois: Tensor, pooled: int, spatial_scale: float, score_scale: float,
             score_bias: float) -> Tensor:
    rois = rois.detach()
    if compiled():
        from mlic import ops

        return ops.roi_pool(features, rois, pooled, pooled, spatial_scale, score_scale, score_bias)[0]
    from mlic.ops.reference import roi_pool_ref

    return roi_pool_ref(features, rois, pooled, pooled, spatial_scale, score_scale, score_bias)[0]


def max_pool_2x2(x: Tensor) -> Tensor:
    """Caffe MAX pooling, kernel 2, stride 2, no pad. F.max_pool2d(ceil_mode=True) is
    the same computation whenever the input has at least 2 rows and columns: both give
    ceil((H-2)/2)+1 windows starting at 2i, clipped to the input (with k = s and no pad
    the last window always starts inside), and both keep the first maximum of a window
    in row-major order. A 1-pixel side is outside PyTorch's domain: mlic's Caffe pooling
    then (which refuses an input smaller than the kernel, with a clear error)."""
    if x.shape[-1] >= 2 and x.shape[-2] >= 2:
        return F.max_pool2d(x, 2, 2, 0, ceil_mode=True)
    if compiled():
        from mlic import ops

        return ops.caffe_pool2d(x, 2, 2, 0, "max")
    from mlic.ops.reference import caffe_pool2d_ref

    return caffe_pool2d_ref(x, 2, 2, 0, "max")


def two_stream(cls_logits: Tensor, det_logits: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """WSDDN head on [N, R, C]: (image [N, C], region [N, R, C], class softmax,
    region softmax); the two softmaxes are returned for inspection (no gradient)."""
    if compiled():
        import mlic.ops  # noqa: F401  (registers the op's autograd formula)

        image, region, pc, pd = torch.ops.mlic.wsddn_two_stream(cls_logits, det_logits)
        return image, region, pc, pd
    pc = CF.softmax(cls_logits, 2)
    pd = CF.softmax(det_logits, 1)
    region = pc * pd
    return region.sum(1), region, pc.detach(), pd.detach()
