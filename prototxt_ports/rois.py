"""The released nets' input plumbing: Slice of label_roi, WsdRoigen and
WsdRoigenSingleScale (SPEC section 3)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def split_label_roi(label_roi: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Slice at axis 1, slice_point C: label_roi [N, C + 5B] -> (labels [N, C], list_roi [N, 5B])."""
    if label_roi.dim() < 2:
        raise ValueError(f"label_roi must be [N, C + 5B], got shape {tuple(label_roi.shape)}")
    flat = label_roi.reshape(label_roi.shape[0], -1)
    if flat.shape[1] <= num_classes or (flat.shape[1] - num_classes) % 5:
        raise ValueError(f"label_roi has {flat.shape[1]} values per image; expected {num_classes} labels followed "
                         f"by 5 values (x1 y1 x2 y2 s) per box")
    return flat[:, :num_classes], flat[:, num_classes:]


def wsd_roigen(list_roi: Tensor) -> Tensor:
    """WsdRoigen: list_roi [N, 5B] (or N x 5B x 1 x 1) -> rois [N*B, 6] rows
    (image index, x1, y1, x2, y2, score), image-major."""
    flat = list_roi.detach().reshape(list_roi.shape[0], -1)
    if flat.shape[1] % 5:
        raise ValueError(f"list_roi has {flat.shape[1]} values per image, not a multiple of 5 (x1 y1 x2 y2 s per box)")
    n, b = flat.shape[0], flat.shape[1] // 5
    boxes = flat.reshape(n, b, 5)
    img = torch.arange(n, dtype=flat.dtype, device=flat.device).view(n, 1, 1).expand(n, b, 1)
    return torch.cat([img, boxes], 2).reshape(n * b, 6)


def single_scale_rois(rois: Tensor, single_scale: float, origin_scale: float) -> Tensor:
    """WsdRoigenSingleScale on generated rois: coordinates floor(single * x / origin),
    computed in float32 (float64 for float64 rois); image index and score unchanged."""
    if origin_scale == 0:
        raise ValueError("origin_scale must not be 0")
    cdt = torch.float64 if rois.dtype == torch.float64 else torch.float32
    s = torch.tensor(single_scale, dtype=cdt, device=rois.device)
    o = torch.tensor(origin_scale, dtype=cdt, device=rois.device)
    c = torch.floor(s * rois[:, 1:5].detach().to(cdt) / o).to(rois.dtype)
    return torch.cat([rois[:, :1].detach(), c, rois[:, 5:].detach()], 1)


def as_rois(rois: Optional[Tensor], list_roi: Optional[Tensor], num_images: int, num_rois: int) -> Tensor:
    """rois [N*B, 6] from either generated rois or list_roi [N, 5B]; checks B."""
    if (rois is None) == (list_roi is None):
        raise ValueError("give exactly one of rois ([N*B, 6]) and list_roi ([N, 5B])")
    if list_roi is not None:
        if list_roi.shape[0] != num_images:
            raise ValueError(f"list_roi has {list_roi.shape[0]} rows for {num_images} image(s)")
        rois = wsd_roigen(list_roi)
    if rois.dim() != 2 or rois.shape[1] != 6:
        raise ValueError(f"rois must be [N*B, 6] rows (image, x1, y1, x2, y2, score), got shape {tuple(rois.shape)}")
    if rois.shape[0] != num_images * num_rois:
        raise ValueError(f"got {rois.shape[0]} rois for {num_images} image(s); the net takes exactly "
                         f"num_rois = {num_rois} per image ({num_images * num_rois})")
    return rois.detach()


def split_inputs(data: Tensor, num_classes: int, label_roi: Optional[Tensor], labels: Optional[Tensor],
                 list_roi: Optional[Tensor], rois: Optional[Tensor]):
    """(labels or None, list_roi or None, rois or None) from either label_roi or the parts."""
    if label_roi is not None:
        if labels is not None or list_roi is not None or rois is not None:
            raise ValueError("give label_roi, or labels with list_roi/rois, not both")
        if label_roi.shape[0] != data.shape[0]:
            raise ValueError(f"label_roi has {label_roi.shape[0]} rows for {data.shape[0]} image(s)")
        labels, list_roi = split_label_roi(label_roi, num_classes)
    return labels, list_roi, rois
