"""Caffe-exact custom ops of the method, with C++ and CUDA kernels.

All ops are registered under ``torch.ops.mlic`` with a kernel per dispatch key (schemas
and kernels in C++; fake kernels and autograd in Python, mlic/ops/_registration.py):
CPU, CUDA (nvcc's compiled kernels, or the same device code compiled at run time by NVRTC
through CuPy when the extension was built without nvcc; :func:`backend_for` says which),
Autograd, and Autocast (the ops compute and return float32 under autocast). They work in
eager mode, under autograd and under torch.compile. Without the compiled extension every
op raises :class:`mlic._ext.ExtensionNotBuilt` saying how to build it; the pure-PyTorch
references (mlic.ops.reference) run only when called by name.

Tests select other back ends explicitly through mlic.ops.testing (the CUDA back end run on
the host; NVRTC beside the compiled CUDA kernels).
"""
from types import SimpleNamespace
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mlic import _ext
from mlic.ops import geometry

OP_NAMES = (
    "roi_pool", "roi_spp", "roi_spp_backward", "spp", "spp_backward", "caffe_pool2d", "caffe_pool2d_backward",
    "wsddn_two_stream", "wsddn_two_stream_backward",
)

if _ext.extension_available():
    from mlic.ops import _nvrtc, _registration  # noqa: F401

    _nvrtc.install_launcher()


def assert_has_ops() -> None:
    """Raises ExtensionNotBuilt, saying how to build it, when the compiled ops are missing."""
    _ext.require_extension("mlic.ops")


def backend_for(device: Union[str, torch.device]) -> str:
    """'cpu', 'cuda-extension', 'cuda-nvrtc', or 'unavailable: <reason>' for ops on `device`."""
    device = torch.device(device)
    if not _ext.extension_available():
        return f"unavailable: {_ext.extension_error()}"
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        if _ext.extension_has_cuda():
            return "cuda-extension"
        ok, why = _nvrtc.available()
        return "cuda-nvrtc" if ok else f"unavailable: {why}"
    return f"unavailable: no kernels for device type {device.type!r}"


def _deterministic(flag: Optional[bool]) -> bool:
    return torch.are_deterministic_algorithms_enabled() if flag is None else bool(flag)


def bind(namespace: str) -> SimpleNamespace:
    """The public op functions over the operators of `namespace` ('mlic' for the library;
    the test namespaces through mlic.ops.testing)."""

    def op(name):
        _ext.require_extension(f"mlic.ops.{name}")
        return getattr(getattr(torch.ops, namespace), name)

    def roi_pool(features: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float = 1.0,
                 score_scale: float = 1.0, score_bias: float = 0.0,
                 deterministic: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
        """Caffe ROIPooling of the authors' fork.

        features [N, C, H, W]; rois [K, 6] rows (batch, x1, y1, x2, y2, score) or [K, 5]
        (score 1). Returns (out [K, C, pooled_h, pooled_w], argmax int32, h*W+w or -1 for an
        empty bin). The output is scaled by score_scale*score + score_bias. The backward is
        deterministic when `deterministic` is true, or None and
        torch.use_deterministic_algorithms(True) is in force. RoI values are checked on the
        CPU; on CUDA they are not read on the host (see the README's ops section).
        """
        return op("roi_pool")(features, rois, int(pooled_h), int(pooled_w), float(spatial_scale),
                              float(score_scale), float(score_bias), _deterministic(deterministic))

    def roi_spp(features: Tensor, rois: Tensor, levels: Sequence[Union[int, Sequence[int]]] = (1, 2, 4),
                spatial_scale: float = 1.0, score_scale: float = 1.0, score_bias: float = 0.0,
                deterministic: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
        """Several RoI pooling grids in one kernel: for each RoI the [C, h, w] output of each
        level (n for n x n, or (h, w)) flattened and concatenated -> [K, C * sum(h*w)]."""
        hs, ws = geometry.roi_levels(levels)
        return op("roi_spp")(features, rois, hs, ws, float(spatial_scale), float(score_scale), float(score_bias),
                             _deterministic(deterministic))

    def spp(x: Tensor, pyramid_height: int, mode: str = "max") -> Tensor:
        """Caffe's SPP layer: [N, C, H, W] -> [N, sum over levels of C * oh * ow]."""
        return op("spp")(x, int(pyramid_height), mode)[0]

    def caffe_pool2d(x: Tensor, kernel_size, stride=1, pad=0, mode: str = "max") -> Tensor:
        """Caffe's Pooling layer (its output-size, padding and AVE divisor rules)."""
        return op("caffe_pool2d")(x, list(geometry.pair(kernel_size, "kernel_size")),
                                  list(geometry.pair(stride, "stride")), list(geometry.pair(pad, "pad")), mode)[0]

    def wsddn_two_stream(cls_logits: Tensor, det_logits: Tensor) -> Tuple[Tensor, Tensor]:
        """WSDDN head: softmax over classes x softmax over regions, summed over regions.
        [N, R, C] x 2 -> (image_scores [N, C], region_scores [N, R, C])."""
        image, region, _, _ = op("wsddn_two_stream")(cls_logits, det_logits)
        return image, region

    return SimpleNamespace(namespace=namespace, roi_pool=roi_pool, roi_spp=roi_spp, spp=spp,
                           caffe_pool2d=caffe_pool2d, wsddn_two_stream=wsddn_two_stream)


_ops = bind("mlic")
roi_pool = _ops.roi_pool
roi_spp = _ops.roi_spp
spp = _ops.spp
caffe_pool2d = _ops.caffe_pool2d
wsddn_two_stream = _ops.wsddn_two_stream


class RoIPool(nn.Module):
    def __init__(self, output_size, spatial_scale: float = 1.0, score_scale: float = 1.0, score_bias: float = 0.0):
        super().__init__()
        self.output_size = geometry.pair(output_size, "output_size")
        self.spatial_scale, self.score_scale, self.score_bias = spatial_scale, score_scale, score_bias

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_pool(features, rois, *self.output_size, self.spatial_scale, self.score_scale, self.score_bias)[0]

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"score_scale={self.score_scale}, score_bias={self.score_bias}")


class RoISPP(nn.Module):
    def __init__(self, levels=(1, 2, 4), spatial_scale: float = 1.0, score_scale: float = 1.0,
                 score_bias: float = 0.0):
        super().__init__()
        self.levels = tuple(levels)
        self.spatial_scale, self.score_scale, self.score_bias = spatial_scale, score_scale, score_bias

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_spp(features, rois, self.levels, self.spatial_scale, self.score_scale, self.score_bias)[0]


class SPP(nn.Module):
    def __init__(self, pyramid_height: int, mode: str = "max"):
        super().__init__()
        self.pyramid_height, self.mode = pyramid_height, mode

    def forward(self, x: Tensor) -> Tensor:
        return spp(x, self.pyramid_height, self.mode)


class CaffePool2d(nn.Module):
    def __init__(self, kernel_size, stride=1, pad=0, mode: str = "max"):
        super().__init__()
        self.kernel_size, self.stride, self.pad, self.mode = kernel_size, stride, pad, mode

    def forward(self, x: Tensor) -> Tensor:
        return caffe_pool2d(x, self.kernel_size, self.stride, self.pad, self.mode)


class WSDDNTwoStream(nn.Module):
    def forward(self, cls_logits: Tensor, det_logits: Tensor) -> Tuple[Tensor, Tensor]:
        return wsddn_two_stream(cls_logits, det_logits)


__all__ = [
    "roi_pool", "roi_spp", "spp", "caffe_pool2d", "wsddn_two_stream", "RoIPool", "RoISPP", "SPP", "CaffePool2d",
    "WSDDNTwoStream", "backend_for", "assert_has_ops", "bind", "geometry", "OP_NAMES",
]
