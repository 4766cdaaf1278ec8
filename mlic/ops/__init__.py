"""Caffe-exact custom ops of the method, with C++ and CUDA kernels.

All ops are registered under ``torch.ops.mlic`` (schemas in C++), differentiable, and
traceable by torch.compile. On CUDA tensors they run the compiled CUDA kernels, or the
same device code compiled at run time through CuPy/NVRTC when the extension was built
without CUDA; :func:`backend_for` says which. Inside :func:`emulated_cuda`, CPU tensors
go through the CUDA back end run on the host (to check the CUDA code without a GPU).
"""
import contextlib
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mlic import _ext
from mlic.ops import _shapes

OP_NAMES = (
    "roi_pool", "roi_spp", "roi_spp_backward", "spp", "spp_backward", "caffe_pool2d", "caffe_pool2d_backward",
    "wsddn_two_stream", "wsddn_two_stream_backward",
)

if _ext.extension_available():
    from mlic.ops import _registration  # noqa: F401
    if not _ext.extension_has_cuda():
        from mlic.ops import _nvrtc

        _nvrtc.register_cuda_impls()


def backend_for(device: Union[str, torch.device]) -> str:
    """'cpu', 'emulated-cuda' (CPU inside :func:`emulated_cuda`), 'cuda-extension',
    'cuda-nvrtc', or 'unavailable: <reason>' for ops on `device`."""
    device = torch.device(device)
    if not _ext.extension_available():
        return f"unavailable: {_ext.extension_error()}"
    if device.type == "cpu":
        from mlic import _C

        return "emulated-cuda" if _C.cuda_emulation() else "cpu"
    if device.type == "cuda":
        if _ext.extension_has_cuda():
            return "cuda-extension"
        from mlic.ops import _nvrtc

        ok, why = _nvrtc.available()
        return "cuda-nvrtc" if ok else f"unavailable: {why}"
    return f"unavailable: no kernels for device type {device.type!r}"


def assert_has_ops() -> None:
    """Raises ExtensionNotBuilt, saying how to build it, when the compiled ops are missing."""
    _ext.require_extension("mlic.ops")


def _op(name: str):
    _ext.require_extension(f"mlic.ops.{name}")
    return getattr(torch.ops.mlic, name)


def _deterministic(flag: Optional[bool]) -> bool:
    return torch.are_deterministic_algorithms_enabled() if flag is None else bool(flag)


def roi_pool(features: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float = 1.0,
             score_scale: float = 1.0, score_bias: float = 0.0,
             deterministic: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
    """Caffe ROIPooling of the authors' fork.

    features [N, C, H, W]; rois [K, 6] rows (batch, x1, y1, x2, y2, score) or [K, 5]
    (score 1). Returns (out [K, C, pooled_h, pooled_w], argmax int32, h*W+w or -1 for an
    empty bin). The output is scaled by score_scale*score + score_bias. The backward is
    deterministic when `deterministic` is true, or None and
    torch.use_deterministic_algorithms(True) is in force.
    """
    return _op("roi_pool")(features, rois, int(pooled_h), int(pooled_w), float(spatial_scale), float(score_scale),
                           float(score_bias), _deterministic(deterministic))


def roi_spp(features: Tensor, rois: Tensor, levels: Sequence[Union[int, Sequence[int]]] = (1, 2, 4),
            spatial_scale: float = 1.0, score_scale: float = 1.0, score_bias: float = 0.0,
            deterministic: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
    """Several RoI pooling grids in one kernel: for each RoI the [C, h, w] output of each
    level (n for n x n, or (h, w)) flattened and concatenated -> [K, C * sum(h*w)]."""
    hs, ws = _shapes.roi_levels(levels)
    return _op("roi_spp")(features, rois, hs, ws, float(spatial_scale), float(score_scale), float(score_bias),
                          _deterministic(deterministic))


def spp(x: Tensor, pyramid_height: int, mode: str = "max") -> Tensor:
    """Caffe's SPP layer: [N, C, H, W] -> [N, sum over levels of C * oh * ow]."""
    return _op("spp")(x, int(pyramid_height), mode)[0]


def caffe_pool2d(x: Tensor, kernel_size, stride=1, pad=0, mode: str = "max") -> Tensor:
    """Caffe's Pooling layer (its output-size, padding and AVE divisor rules)."""
    return _op("caffe_pool2d")(x, _shapes.pair(kernel_size, "kernel_size"), _shapes.pair(stride, "stride"),
                               _shapes.pair(pad, "pad"), mode)[0]


def wsddn_two_stream(cls_logits: Tensor, det_logits: Tensor) -> Tuple[Tensor, Tensor]:
    """WSDDN head: softmax over classes x softmax over regions, summed over regions.
    [N, R, C] x 2 -> (image_scores [N, C], region_scores [N, R, C])."""
    image, region, _, _ = _op("wsddn_two_stream")(cls_logits, det_logits)
    return image, region


class RoIPool(nn.Module):
    def __init__(self, output_size, spatial_scale: float = 1.0, score_scale: float = 1.0, score_bias: float = 0.0):
        super().__init__()
        self.output_size = tuple(_shapes.pair(output_size, "output_size"))
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


@contextlib.contextmanager
def emulated_cuda() -> Iterator[None]:
    """Within the block, ops on CPU tensors run the CUDA back end's host code and kernels
    on the host (blocks and threads emulated; slow). For checking the CUDA code on a
    machine without a GPU; results should match the CPU kernels within float tolerance."""
    _ext.require_extension("mlic.ops.emulated_cuda")
    from mlic import _C

    previous = _C.set_cuda_emulation(True)
    try:
        yield
    finally:
        _C.set_cuda_emulation(previous)


class WSDDNTwoStream(nn.Module):
    def forward(self, cls_logits: Tensor, det_logits: Tensor) -> Tuple[Tensor, Tensor]:
        return wsddn_two_stream(cls_logits, det_logits)


__all__ = [
    "roi_pool", "roi_spp", "spp", "caffe_pool2d", "wsddn_two_stream", "RoIPool", "RoISPP", "SPP", "CaffePool2d",
    "WSDDNTwoStream", "backend_for", "emulated_cuda", "OP_NAMES", "assert_has_ops",
]
