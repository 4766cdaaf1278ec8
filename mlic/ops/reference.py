"""Pure-PyTorch reference implementations of the custom ops (test oracles).

Written from the project's specification of the Caffe layers (ROIPooling, WsdRoigen,
WsdRoigenSingleScale, Pooling, SPP, and the WSDDN two-stream softmax head), for
clarity rather than speed: Python loops over RoIs and output cells. Every function
is differentiable through autograd in the same way as Caffe's backward: max-type
ops gather the chosen input element (index computed without grad), so autograd
scatters the gradient to it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

FLT_MAX = 3.4028234663852886e38  # C's FLT_MAX: Caffe starts every max from -FLT_MAX, for any Dtype

__all__ = [
    "c_round",
    "roi_pool_ref",
    "roi_spp_ref",
    "caffe_pool2d_ref",
    "caffe_pool_output_size",
    "spp_level_params",
    "spp_ref",
    "wsddn_two_stream_ref",
    "wsd_roigen_ref",
    "wsd_roigen_single_scale_ref",
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


def c_round(x: torch.Tensor) -> torch.Tensor:
    """C's round(): half away from zero, exact (no x + 0.5 rounding error)."""
    t = torch.trunc(x)
    frac = x - t  # exact in binary floating point
    return t + torch.where(frac.abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def _check_features(features: torch.Tensor, name: str = "features") -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(features).__name__}")
    if features.dim() != 4:
        raise ValueError(f"{name} must be 4-D [N, C, H, W], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {features.dtype}")


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


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


def _roi_batch_indices(rois: torch.Tensor, num_images: int) -> list[int]:
    col = rois[:, 0].detach().double().cpu()
    if not torch.isfinite(col).all():
        k = int((~torch.isfinite(col)).nonzero()[0])
        raise ValueError(f"rois[{k}, 0] (batch index) is not finite: {float(col[k])}")
    bad = (col <= -1) | (col >= num_images)  # int() truncates toward zero: (-1, N) -> [0, N-1]
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(
            f"rois[{k}, 0] (batch index) = {float(col[k])} is out of range for features with N={num_images}"
        )
    return [int(v) for v in torch.trunc(col).tolist()]


def _check_rois(rois: torch.Tensor) -> None:
    if not isinstance(rois, torch.Tensor):
        raise TypeError(f"rois must be a tensor, got {type(rois).__name__}")
    if rois.dim() != 2 or rois.shape[1] not in (5, 6):
        raise ValueError(
            f"rois must be 2-D [K, 6] (batch, x1, y1, x2, y2, score) or [K, 5], got shape {tuple(rois.shape)}"
        )
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
    batch = _roi_batch_indices(rois, n)

    cdt = _coord_dtype(features.dtype)
    r = rois.detach().to(device="cpu", dtype=cdt)
    scale = torch.tensor(spatial_scale, dtype=cdt)
    corners = c_round(r[:, 1:5] * scale).to(torch.int64)  # x1, y1, x2, y2
    x1, y1, x2, y2 = corners.unbind(1)
    roi_w = torch.clamp(x2 - x1 + 1, min=1)
    roi_h = torch.clamp(y2 - y1 + 1, min=1)
    bin_w = roi_w.to(cdt) / torch.tensor(float(pooled_w), dtype=cdt)
    bin_h = roi_h.to(cdt) / torch.tensor(float(pooled_h), dtype=cdt)
    ph = torch.arange(pooled_h, dtype=cdt)
    pw = torch.arange(pooled_w, dtype=cdt)
    hstart = torch.floor(ph[None] * bin_h[:, None]).long() + y1[:, None]
    hend = torch.ceil((ph[None] + 1) * bin_h[:, None]).long() + y1[:, None]
    wstart = torch.floor(pw[None] * bin_w[:, None]).long() + x1[:, None]
    wend = torch.ceil((pw[None] + 1) * bin_w[:, None]).long() + x1[:, None]
    hstart, hend = hstart.clamp(0, height), hend.clamp(0, height)
    wstart, wend = wstart.clamp(0, width), wend.clamp(0, width)

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


def _spp_levels(levels) -> list[tuple[int, int]]:
    if isinstance(levels, int):
        raise TypeError("levels must be a sequence of ints n (n x n grids) or (h, w) pairs")
    out = []
    for lv in levels:
        h, w = _pair(lv, "levels")
        if h <= 0 or w <= 0:
            raise ValueError(f"levels must be positive grid sizes, got {lv!r}")
        out.append((h, w))
    if not out:
        raise ValueError("levels must not be empty")
    return out


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
    grid = _spp_levels(levels)
    outs, args = [], []
    for h, w in grid:
        o, a = roi_pool_ref(features, rois, h, w, spatial_scale, score_scale, score_bias)
        outs.append(o.flatten(1))
        args.append(a.flatten(1))
    return torch.cat(outs, 1), torch.cat(args, 1)


# ----------------------------------------------------------------------------- Caffe Pooling / SPP


def caffe_pool_output_size(size: int, kernel: int, stride: int, pad: int, any_pad: bool) -> int:
    """Caffe's pooled size: ceil((size + 2p - k) / s) + 1, then, when the layer has any
    padding, drop a last window that would start in the padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_pool2d_ref(x: torch.Tensor, kernel_size, stride, pad, mode: str = "max") -> torch.Tensor:
    """Caffe Pooling (MAX or AVE) on x [N, C, H, W]."""
    _check_features(x, "x")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    padh, padw = _pair(pad, "pad")
    if mode not in ("max", "ave"):
        raise ValueError(f"mode must be 'max' or 'ave', got {mode!r}")
    if kh <= 0 or kw <= 0:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    if sh <= 0 or sw <= 0:
        raise ValueError(f"stride must be positive, got {stride!r}")
    if padh < 0 or padw < 0:
        raise ValueError(f"pad must be non-negative, got {pad!r}")
    if padh >= kh or padw >= kw:
        raise ValueError(f"pad must be smaller than kernel_size (Caffe requires it), got pad={pad!r}, "
                         f"kernel_size={kernel_size!r}")
    n, c, height, width = x.shape
    any_pad = padh > 0 or padw > 0  # Caffe: `if (pad_h_ || pad_w_)` corrects both dimensions
    oh = caffe_pool_output_size(height, kh, sh, padh, any_pad)
    ow = caffe_pool_output_size(width, kw, sw, padw, any_pad)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"kernel_size {kernel_size!r} is larger than the padded input {height}x{width}")
    planes = x.reshape(n * c, height, width)

    if mode == "max":
        idx = torch.empty((n * c, oh * ow), dtype=torch.int64, device=x.device)
        with torch.no_grad():
            for i in range(oh):
                hs = i * sh - padh
                he, hs = min(hs + kh, height), max(hs, 0)
                for j in range(ow):
                    ws = j * sw - padw
                    we, ws = min(ws + kw, width), max(ws, 0)
                    idx[:, i * ow + j] = _window_argmax(planes, hs, he, ws, we)
        fill = torch.full((oh * ow,), -FLT_MAX, dtype=_coord_dtype(x.dtype), device=x.device)
        out = _gather_planes(planes, idx, fill)
        return out.reshape(n, c, oh, ow)

    cells = []
    for i in range(oh):
        hs = i * sh - padh
        he = min(hs + kh, height + padh)
        pool_h = he - hs
        hs, he = max(hs, 0), min(he, height)
        for j in range(ow):
            ws = j * sw - padw
            we = min(ws + kw, width + padw)
            pool_size = pool_h * (we - ws)
            ws, we = max(ws, 0), min(we, width)
            s = planes[:, hs:he, ws:we].reshape(n * c, -1).sum(1)
            cells.append(s / pool_size)
    return torch.stack(cells, 1).reshape(n, c, oh, ow)


def spp_level_params(size: int, level: int) -> tuple[int, int]:
    """(kernel, pad) of Caffe SPP's pooling at pyramid level `level` for one dimension."""
    bins = 2**level
    kernel = -(-size // bins)  # ceil
    pad = (kernel * bins - size + 1) // 2
    return kernel, pad


def spp_ref(x: torch.Tensor, pyramid_height: int, mode: str = "max") -> torch.Tensor:
    """Caffe SPP: levels l = 0..L-1 of Caffe pooling with 2^l bins, each flattened
    channel-major, concatenated -> [N, sum_l C*oh_l*ow_l]."""
    _check_features(x, "x")
    pyramid_height = int(pyramid_height)
    if pyramid_height < 1:
        raise ValueError(f"pyramid_height must be >= 1, got {pyramid_height}")
    if mode not in ("max", "ave"):
        raise ValueError(f"mode must be 'max' or 'ave', got {mode!r}")
    _, _, height, width = x.shape
    outs = []
    for level in range(pyramid_height):
        kh, ph = spp_level_params(height, level)
        kw, pw = spp_level_params(width, level)
        if ph >= kh or pw >= kw:
            raise ValueError(
                f"SPP level {level} of pyramid_height={pyramid_height} needs pad ({ph}, {pw}) >= kernel "
                f"({kh}, {kw}) for input {height}x{width}; Caffe refuses this input"
            )
        outs.append(caffe_pool2d_ref(x, (kh, kw), (kh, kw), (ph, pw), mode).flatten(1))
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


# ----------------------------------------------------------------------------- RoI generation


def _check_list_roi(list_roi: torch.Tensor) -> int:
    if list_roi.dim() != 2:
        raise ValueError(f"list_roi must be 2-D [N, 5B], got shape {tuple(list_roi.shape)}")
    if list_roi.shape[1] % 5 != 0:
        raise ValueError(f"list_roi must have 5B columns (x1 y1 x2 y2 s per box), got {list_roi.shape[1]}")
    return list_roi.shape[1] // 5


def wsd_roigen_ref(list_roi: torch.Tensor) -> torch.Tensor:
    """WsdRoigen: [N, 5B] -> [N*B, 6] rows (image index, x1, y1, x2, y2, score), image-major."""
    b = _check_list_roi(list_roi)
    n = list_roi.shape[0]
    boxes = list_roi.reshape(n, b, 5)
    img = torch.arange(n, dtype=list_roi.dtype, device=list_roi.device)[:, None, None].expand(n, b, 1)
    return torch.cat([img, boxes], 2).reshape(n * b, 6)


def wsd_roigen_single_scale_ref(list_roi: torch.Tensor, single_scale: float, origin_scale: float) -> torch.Tensor:
    """WsdRoigenSingleScale: like WsdRoigen with coordinates floor(single_scale * x / origin_scale)."""
    rois = wsd_roigen_ref(list_roi).clone()
    dt = rois.dtype
    s = torch.tensor(single_scale, dtype=dt, device=rois.device)
    o = torch.tensor(origin_scale, dtype=dt, device=rois.device)
    rois[:, 1:5] = torch.floor(s * rois[:, 1:5] / o)
    return rois
