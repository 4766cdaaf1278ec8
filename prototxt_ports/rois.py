"""The released nets' input plumbing: Slice of label_roi, WsdRoigen and
WsdRoigenSingleScale (SPEC section 3)."""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from mlic.ops import geometry


def split_label_roi(label_roi: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Slice at axis 1, slice_point C: label_roi [N, C + 5B] -> (labels [N, C], list_roi [N, 5B])."""
    if label_roi.dim() < 2:
        raise ValueError(f"label_roi must be [N, C + 5B], got shape {tuple(label_roi.shape)}")
    flat = label_roi.reshape(label_roi.shape[0], -1)
    if flat.shape[1] <= num_classes or (flat.shape[1] - num_classes) % 5:
        raise ValueError(f"label_roi has {flat.shape[1]} values per image; expected {num_classes} labels followed "
                         f"by 5 values (x1 y1 x2 y2 s) per box")
    return flat[:, :num_classes], flat[:, num_classes:]


# WsdRoigen (list_roi [N, 5B] -> rois [N*B, 6]) and WsdRoigenSingleScale's coordinates.
wsd_roigen = geometry.wsd_roigen
single_scale_rois = geometry.single_scale_rois


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
