"""Argument normalisation and output shapes shared by the eager wrappers, the fake
(meta) kernels used by torch.compile, and the NVRTC runtime path."""
from typing import List

import torch

from mlic.ops import geometry as G

pair = G.pair
roi_levels = G.roi_levels


def spp_level_params(H: int, W: int, pyramid_height: int) -> List[G.PoolLevel]:
    return G.spp_levels(H, W, pyramid_height)


def pool2d_level_params(H, W, kernel_size, stride, padding) -> List[G.PoolLevel]:
    return [G.pool2d_level(H, W, kernel_size, stride, padding)]


def pool_mode(mode: str) -> int:
    return 0 if G.pool_mode(mode) == "max" else 1


def _check_float(t: torch.Tensor, op: str, name: str):
    if not t.is_floating_point():
        raise ValueError(f"{op}: `{name}` must be a floating-point tensor, got {t.dtype}")


def _check_same(a, b, op, na, nb):
    if a.device != b.device:
        raise ValueError(f"{op}: `{na}` and `{nb}` must be on the same device, got {a.device} and {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: `{na}` and `{nb}` must have the same dtype, got {a.dtype} and {b.dtype}")


def check_roi_inputs(features: torch.Tensor, rois: torch.Tensor, op: str):
    if features.dim() != 4:
        raise ValueError(f"{op}: `features` must be 4-D [N, C, H, W], got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] not in (5, 6):
        raise ValueError(
            f"{op}: `rois` must be 2-D [K, 6] (batch, x1, y1, x2, y2, score) or [K, 5], got shape {tuple(rois.shape)}"
        )
    _check_float(features, op, "features")
    _check_same(features, rois, op, "features", "rois")
    if any(s == 0 for s in features.shape):
        raise ValueError(f"{op}: `features` has an empty dimension, shape {tuple(features.shape)}")


def check_roi_values(rois: torch.Tensor, n: int, spatial_scale: float, op: str):
    G.check_roi_values(rois, n, spatial_scale, f"{op}: `rois`")


def check_x4(x: torch.Tensor, op: str):
    if x.dim() != 4:
        raise ValueError(f"{op}: `x` must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    _check_float(x, op, "x")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{op}: `x` has an empty dimension, shape {tuple(x.shape)}")


def check_two_stream(cls: torch.Tensor, det: torch.Tensor, op: str):
    if cls.dim() != 3:
        raise ValueError(f"{op}: `cls_logits` must be 3-D [N, R, C], got shape {tuple(cls.shape)}")
    if det.dim() != 3:
        raise ValueError(f"{op}: `det_logits` must be 3-D [N, R, C], got shape {tuple(det.shape)}")
    if cls.shape != det.shape:
        raise ValueError(
            f"{op}: `cls_logits` and `det_logits` must have the same shape, got {tuple(cls.shape)} and "
            f"{tuple(det.shape)}"
        )
    _check_float(cls, op, "cls_logits")
    _check_same(cls, det, op, "cls_logits", "det_logits")
    if cls.shape[1] == 0:
        raise ValueError(f"{op}: `cls_logits`/`det_logits` need at least one region (R, dim 1), got shape {tuple(cls.shape)}")
    if cls.shape[2] == 0:
        raise ValueError(f"{op}: `cls_logits`/`det_logits` need at least one class (C, dim 2), got shape {tuple(cls.shape)}")
