"""Caffe-exact custom ops of the method, with C++ and CUDA kernels.

All ops are registered under ``torch.ops.mlic`` with a kernel per dispatch key (schemas
and kernels in C++; fake kernels and autograd in Python, mlic/ops/_registration.py):
CPU, CUDA (nvcc's compiled kernels, or the same device code compiled at run time by NVRTC
through CuPy when the extension was built without nvcc; :func:`backend_for` says which),
Autograd, and Autocast (the ops compute and return float32 under autocast). They work in
eager mode, under autograd and under torch.compile. Without the compiled extension every
op raises :class:`mlic._ext.ExtensionNotBuilt` saying how to build it.

Return convention: every op returns what its Caffe layer outputs, a tensor (the two-stream
head: its two score tensors). The argmax that a max-type backward needs stays inside the
operators: ``torch.ops.mlic.*`` (:func:`operators`) return it after the output.

Back ends: every op takes ``backend``, one of :data:`BACKENDS`. "auto" (the default) is the
library's dispatch above. The others are chosen by name only, for checking one against
another: "emulated-cuda" runs the CUDA back end's host side and kernels on the host for
CPU tensors (slow; operators ``torch.ops.mlic_emulated_cuda``), "nvrtc" runs CUDA tensors
through NVRTC beside nvcc's kernels (``torch.ops.mlic_nvrtc``), and "reference" runs the
pure-PyTorch oracles of mlic.ops.reference.
"""
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mlic import _ext
from mlic.ops import geometry, reference

OP_NAMES = (
    "roi_pool", "roi_spp", "roi_spp_backward", "spp", "spp_backward", "caffe_pool2d", "caffe_pool2d_backward",
    "wsddn_two_stream", "wsddn_two_stream_backward",
)
# back end -> operator namespace of mlic._C ("reference" has none: it is plain PyTorch)
_NAMESPACES = {"auto": "mlic", "emulated-cuda": "mlic_emulated_cuda", "nvrtc": "mlic_nvrtc"}
BACKENDS = tuple(_NAMESPACES) + ("reference",)

if _ext.extension_available():
    from mlic.ops import _nvrtc, _registration  # noqa: F401

    _nvrtc.install_launcher()


def check_backend(backend: str) -> str:
    """`backend` if it is one of :data:`BACKENDS`; ValueError otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ops back end {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


def assert_has_ops(backend: str = "auto") -> None:
    """Raises ExtensionNotBuilt, saying how to build it, when `backend` needs the compiled
    ops and they are missing (ValueError for an unknown back end)."""
    if check_backend(backend) != "reference":
        _ext.require_extension("mlic.ops")


def operators(backend: str = "auto"):
    """The ``torch.ops`` namespace of a compiled back end: the registered operators, whose
    max-type ops return (output, argmax int32)."""
    if check_backend(backend) == "reference":
        raise ValueError("the \"reference\" back end is plain PyTorch (mlic.ops.reference): it has no operators")
    _ext.require_extension("mlic.ops")
    return getattr(torch.ops, _NAMESPACES[backend])


def backend_for(device: Union[str, torch.device]) -> str:
    """'cpu', 'cuda-extension', 'cuda-nvrtc', or 'unavailable: <reason>': the kernels the
    "auto" back end runs for tensors on `device`."""
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


def roi_pool(features: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float = 1.0,
             score_scale: float = 1.0, score_bias: float = 0.0, deterministic: bool = False, *,
             backend: str = "auto") -> Tensor:
    """Caffe ROIPooling of the authors' fork: features [N, C, H, W], rois [K, 6] rows
    (batch, x1, y1, x2, y2, score) or [K, 5] (score 1) -> [K, C, pooled_h, pooled_w], each
    RoI's output scaled by score_scale * score + score_bias.

    The backward is deterministic (each input element sums its terms in a fixed order) when
    `deterministic` is True or torch.use_deterministic_algorithms(True) is in force as it
    runs; otherwise the CUDA kernels accumulate with atomics, whose order of additions
    varies. The CPU backward is always deterministic. RoI values are checked on the CPU;
    on CUDA they are not read on the host (see docs/ops.md).
    """
    args = (features, rois, int(pooled_h), int(pooled_w), float(spatial_scale), float(score_scale),
            float(score_bias))
    if check_backend(backend) == "reference":
        return reference.roi_pool_ref(*args)[0]
    return operators(backend).roi_pool(*args, bool(deterministic))[0]


def roi_spp(features: Tensor, rois: Tensor, levels: Sequence[Union[int, Sequence[int]]] = (1, 2, 4),
            spatial_scale: float = 1.0, score_scale: float = 1.0, score_bias: float = 0.0,
            deterministic: bool = False, *, backend: str = "auto") -> Tensor:
    """Several RoI pooling grids in one kernel: for each RoI the [C, h, w] output of each
    level (n for n x n, or (h, w)) flattened and concatenated -> [K, C * sum(h*w)].
    Arguments and the backward as :func:`roi_pool`."""
    hs, ws = geometry.roi_levels(levels)
    if check_backend(backend) == "reference":
        return reference.roi_spp_ref(features, rois, list(zip(hs, ws)), float(spatial_scale), float(score_scale),
                                     float(score_bias))[0]
    return operators(backend).roi_spp(features, rois, hs, ws, float(spatial_scale), float(score_scale),
                                      float(score_bias), bool(deterministic))[0]


def spp(x: Tensor, pyramid_height: int, mode: str = "max", *, backend: str = "auto") -> Tensor:
    """Caffe's SPP layer: [N, C, H, W] -> [N, sum over levels of C * oh * ow]; level l pools
    with 2^l bins per side, MAX or AVE (`mode` "max" or "ave")."""
    if check_backend(backend) == "reference":
        return reference.spp_ref(x, int(pyramid_height), mode)
    return operators(backend).spp(x, int(pyramid_height), mode)[0]


def caffe_pool2d(x: Tensor, kernel_size, stride=1, pad=0, mode: str = "max", *, backend: str = "auto") -> Tensor:
    """Caffe's Pooling layer (its output-size, padding and AVE divisor rules): [N, C, H, W]
    -> [N, C, oh, ow]; kernel_size, stride and pad are ints or (h, w) pairs."""
    kernel_size, stride, pad = (geometry.pair(kernel_size, "kernel_size"), geometry.pair(stride, "stride"),
                                geometry.pair(pad, "pad"))
    if check_backend(backend) == "reference":
        return reference.caffe_pool2d_ref(x, kernel_size, stride, pad, mode)
    return operators(backend).caffe_pool2d(x, list(kernel_size), list(stride), list(pad), mode)[0]


def wsddn_two_stream(cls_logits: Tensor, det_logits: Tensor, *, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """WSDDN head: softmax over classes x softmax over regions, summed over regions.
    [N, R, C] x 2 -> (image_scores [N, C], region_scores [N, R, C])."""
    if check_backend(backend) == "reference":
        return reference.wsddn_two_stream_ref(cls_logits, det_logits)
    image, region, _, _ = operators(backend).wsddn_two_stream(cls_logits, det_logits)
    return image, region


class RoIPool(nn.Module):
    def __init__(self, output_size, spatial_scale: float = 1.0, score_scale: float = 1.0, score_bias: float = 0.0):
        super().__init__()
        self.output_size = geometry.pair(output_size, "output_size")
        self.spatial_scale, self.score_scale, self.score_bias = spatial_scale, score_scale, score_bias

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_pool(features, rois, *self.output_size, self.spatial_scale, self.score_scale, self.score_bias)

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
        return roi_spp(features, rois, self.levels, self.spatial_scale, self.score_scale, self.score_bias)


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
    "WSDDNTwoStream", "backend_for", "assert_has_ops", "check_backend", "operators", "geometry", "BACKENDS",
    "OP_NAMES",
]
