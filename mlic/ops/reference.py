"""Pure-PyTorch reference implementations of the custom ops (test oracles).

Written from the project's specification of the Caffe layers (ROIPooling, Pooling, SPP,
and the WSDDN two-stream softmax head), for clarity rather than speed: Python loops over
RoIs and output cells; the geometry (output sizes, windows, SPP levels, RoI validation)
and ROIPooling's bins come from mlic.ops.geometry. They run only when called by name
(directly, or as the "reference" back end of mlic.ops): nothing falls back to them. Every
function is differentiable through autograd in the same way as Caffe's backward: max-type
ops gather the chosen input element (index computed without grad), so autograd
scatters the gradient to it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from mlic.ops import geometry

FLT_MAX = 3.4028234663852886e38  # C's FLT_MAX: Caffe starts every max from -FLT_MAX, for any Dtype

__all__ = [
    "roi_pool_ref",
    "roi_spp_ref",
    "caffe_pool2d_ref",
    "spp_ref",
    "wsddn_two_stream_ref",
]


def _coord_dtype(dtype: torch.dtype) -> torch.dtype:
    """The floating type in which Caffe would do the coordinate arithmetic (its Dtype).

    Half types have no Caffe counterpart; they use float32 as an opmath type would.
    """
    if dtype == torch.float64:
        return torch.float64
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float32
    raise TypeError(f"expected a floating-point tensor, got dtype {dtype}")


def _check_features(features: torch.Tensor, name: str = "features") -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(features).__name__}")
    if features.dim() != 4:
        raise ValueError(f"{name} must be 4-D [N, C, H, W], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {features.dtype}")


def _window_argmax(planes: torch.Tensor, hs: int, he: int, ws: int, we: int) -> torch.Tensor:
    """Caffe's max scan over planes[:, hs:he, ws:we]: start from -FLT_MAX with strict `>`
    in row-major order, so the first maximum wins and NaN or values <= -FLT_MAX never win.

    Returns [M] int64 flat indices h*W + w within the plane, -1 where nothing won.
    """
    m, _, width = planes.shape
    if he <= hs or we <= ws:
        return torch.full((m,), -1, dtype=torch.int64, device=planes.device)
    win = planes[:, hs:he, ws:we].reshape(m, -1)
    valid = win > -FLT_MAX
    vals = torch.where(valid, win, torch.full_like(win, -math.inf))
    best = vals.amax(dim=1, keepdim=True)
    hit = valid & (vals == best)
    count = win.shape[1]
    pos = torch.arange(count, device=planes.device).expand_as(win)
    first = torch.where(hit, pos, torch.full_like(pos, count)).amin(dim=1)
    ww = we - ws
    idx = (hs + first // ww) * width + (ws + first % ww)
    return torch.where(first < count, idx, torch.full_like(idx, -1))


def _gather_planes(planes: torch.Tensor, idx: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """planes [M, H, W], idx [M, P] (int64, -1 = none), fill [P] -> [M, P]; differentiable in planes."""
    flat = planes.reshape(planes.shape[0], -1)
    got = flat.gather(1, idx.clamp(min=0))
    return torch.where(idx >= 0, got, fill.to(got.dtype).expand_as(got))


# ----------------------------------------------------------------------------- RoI pooling


def _roi_batch_indices(rois: torch.Tensor, num_images: int, spatial_scale: float) -> list[int]:
    geometry.check_roi_values(rois, num_images, spatial_scale)
    return [int(v) for v in torch.trunc(rois[:, 0].detach().double().cpu()).tolist()]


def _check_rois(rois: torch.Tensor) -> None:
    if not isinstance(rois, torch.Tensor):
        raise TypeError(f"rois must be a tensor, got {type(rois).__name__}")
    geometry.check_rois_shape(rois.shape, "rois")
    if not rois.is_floating_point():
        raise TypeError(f"rois must be floating point, got dtype {rois.dtype}")


def roi_pool_ref(
    features: torch.Tensor,
    rois: torch.Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float = 1.0,
    score_scale: float = 1.0,
    score_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe ROIPooling with score scaling. Returns (out [K, C, ph, pw], argmax [K, C, ph, pw] int32).

    argmax is h*W + w within the image's plane, -1 for an empty bin. Gradient flows to
    features only.
    """
    _check_features(features)
    _check_rois(rois)
    pooled_h, pooled_w = int(pooled_h), int(pooled_w)
    if pooled_h <= 0 or pooled_w <= 0:
        raise ValueError(f"pooled_h and pooled_w must be positive, got pooled_h={pooled_h}, pooled_w={pooled_w}")
    n, c, height, width = features.shape
    k_rois = rois.shape[0]
    dev = features.device
    if k_rois == 0:
        return (
            features.reshape(-1)[:0].reshape(0, c, pooled_h, pooled_w),  # empty but still in the graph
            torch.zeros((0, c, pooled_h, pooled_w), dtype=torch.int32, device=dev),
        )
    batch = _roi_batch_indices(rois, n, spatial_scale)

    cdt = _coord_dtype(features.dtype)
    hstart, hend, wstart, wend = geometry.roi_bins(rois, pooled_h, pooled_w, spatial_scale, height, width, cdt)

    r = rois.detach().to(device="cpu", dtype=cdt)
    if rois.shape[1] == 6:
        score = r[:, 5]
    else:
        score = torch.ones(k_rois, dtype=cdt)
    factor = score * torch.tensor(score_scale, dtype=cdt) + torch.tensor(score_bias, dtype=cdt)

    outs, args = [], []
    for k in range(k_rois):
        planes = features[batch[k]]
        idx = torch.empty((c, pooled_h * pooled_w), dtype=torch.int64, device=dev)
        fill = torch.empty(pooled_h * pooled_w, dtype=cdt)
        with torch.no_grad():
            for i in range(pooled_h):
                for j in range(pooled_w):
                    hs, he = int(hstart[k, i]), int(hend[k, i])
                    ws, we = int(wstart[k, j]), int(wend[k, j])
                    idx[:, i * pooled_w + j] = _window_argmax(planes, hs, he, ws, we)
                    # empty bin -> 0; a bin where nothing beat -FLT_MAX keeps -FLT_MAX
                    fill[i * pooled_w + j] = 0.0 if (he <= hs or we <= ws) else -FLT_MAX
        val = _gather_planes(planes, idx, fill.to(dev))
        outs.append(val * factor[k].to(device=dev, dtype=features.dtype))
        args.append(idx)
    out = torch.stack(outs).reshape(k_rois, c, pooled_h, pooled_w)
    argmax = torch.stack(args).reshape(k_rois, c, pooled_h, pooled_w).to(torch.int32)
    return out, argmax


def roi_spp_ref(
    features: torch.Tensor,
    rois: torch.Tensor,
    levels: Sequence,
    spatial_scale: float = 1.0,
    score_scale: float = 1.0,
    score_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoI pooling at several grid sizes, concatenated per RoI.

    Returns (out [K, C*sum(h*w)], argmax [K, C*sum(h*w)] int32); each level's block is
    roi_pool's [C, h, w] output flattened channel-major.
    """
    if isinstance(levels, int):
        raise TypeError("levels must be a sequence of ints n (n x n grids) or (h, w) pairs")
    outs, args = [], []
    for h, w in zip(*geometry.roi_levels(levels)):
        o, a = roi_pool_ref(features, rois, h, w, spatial_scale, score_scale, score_bias)
        outs.append(o.flatten(1))
        args.append(a.flatten(1))
    return torch.cat(outs, 1), torch.cat(args, 1)


# ----------------------------------------------------------------------------- Caffe Pooling / SPP


def caffe_pool2d_ref(x: torch.Tensor, kernel_size, stride, pad, mode: str = "max") -> torch.Tensor:
    """Caffe Pooling (MAX or AVE) on x [N, C, H, W]."""
    _check_features(x, "x")
    mode = geometry.pool_mode(mode)
    n, c, height, width = x.shape
    lv = geometry.pool2d_level(height, width, kernel_size, stride, pad)
    oh, ow = lv.oh, lv.ow
    planes = x.reshape(n * c, height, width)
    rows = [geometry.pool_window(i, lv.kh, lv.sh, lv.pad_h, height) for i in range(oh)]
    cols = [geometry.pool_window(j, lv.kw, lv.sw, lv.pad_w, width) for j in range(ow)]

    if mode == "max":
        idx = torch.empty((n * c, oh * ow), dtype=torch.int64, device=x.device)
        with torch.no_grad():
            for i, (hs, he, _) in enumerate(rows):
                for j, (ws, we, _) in enumerate(cols):
                    idx[:, i * ow + j] = _window_argmax(planes, hs, he, ws, we)
        fill = torch.full((oh * ow,), -FLT_MAX, dtype=_coord_dtype(x.dtype), device=x.device)
        out = _gather_planes(planes, idx, fill)
        return out.reshape(n, c, oh, ow)

    cells = []
    for hs, he, pool_h in rows:
        for ws, we, pool_w in cols:
            s = planes[:, hs:he, ws:we].reshape(n * c, -1).sum(1)
            cells.append(s / (pool_h * pool_w))
    return torch.stack(cells, 1).reshape(n, c, oh, ow)


def spp_ref(x: torch.Tensor, pyramid_height: int, mode: str = "max") -> torch.Tensor:
    """Caffe SPP: levels l = 0..L-1 of Caffe pooling with 2^l bins, each flattened
    channel-major, concatenated -> [N, sum_l C*oh_l*ow_l]."""
    _check_features(x, "x")
    mode = geometry.pool_mode(mode)
    _, _, height, width = x.shape
    outs = [caffe_pool2d_ref(x, (lv.kh, lv.kw), (lv.sh, lv.sw), (lv.pad_h, lv.pad_w), mode).flatten(1)
            for lv in geometry.spp_levels(height, width, int(pyramid_height))]
    return torch.cat(outs, 1)


# ----------------------------------------------------------------------------- WSDDN head


def wsddn_two_stream_ref(cls_logits: torch.Tensor, det_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_scores [N, C], region_scores [N, R, C]): softmax over classes of cls_logits
    times softmax over regions of det_logits, summed over regions."""
    for name, t in (("cls_logits", cls_logits), ("det_logits", det_logits)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor [N, R, C], got {getattr(t, 'shape', type(t))}")
    if cls_logits.shape != det_logits.shape:
        raise ValueError(
            f"cls_logits and det_logits must have the same shape, got {tuple(cls_logits.shape)} "
            f"and {tuple(det_logits.shape)}"
        )
    if cls_logits.shape[1] == 0 or cls_logits.shape[2] == 0:
        raise ValueError(f"cls_logits and det_logits need at least one region and one class, got shape "
                         f"{tuple(cls_logits.shape)}")
    region = torch.softmax(cls_logits, dim=2) * torch.softmax(det_logits, dim=1)
    return region.sum(dim=1), region
