"""The fork's region layers: WsdRoigen, WsdRoigenSingleScale (proposal rows from label_roi)
and ROIPooling (SPEC section 3)."""
from __future__ import annotations

import torch

from mlic.caffe.layers.base import count, get_op, Layer, register
from mlic.ops import geometry


def _list_roi(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0] if x.dim() else 1
    per = x.numel() // max(n, 1)
    if per % 5:
        raise layer.runtime_error(f"bottom has {per} values per image, not a multiple of 5 (x1 y1 x2 y2 s per box)")
    return x.detach().reshape(n, per // 5, 5)


@register
class WsdRoigenLayer(Layer):
    """N x 5B -> (N*B) x 6 rows (image index, x1, y1, x2, y2, score), image-major."""

    TYPE = "WsdRoigen"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        s = bottom_shapes[0]
        n = s[0] if s else 1
        per = count(s, 1)
        if per % 5:
            raise self.error(f"bottom shape {list(s)} has {per} values per image, not a multiple of 5")
        return [(n * (per // 5), 6)]

    def boxes(self, x):
        return _list_roi(self, x)

    def forward(self, x):
        return [geometry.wsd_roigen(self.boxes(x))]


@register
class WsdRoigenSingleScaleLayer(WsdRoigenLayer):
    """WsdRoigen with coordinates floor(single_scale * x / origin_scale) (float32)."""

    TYPE = "WsdRoigenSingleScale"

    def setup(self, bottom_shapes, ctx):
        rp = self.lp.roi_pooling_param
        if not (rp.HasField("single_scale") and rp.HasField("origin_scale")):
            raise self.error("roi_pooling_param.single_scale and origin_scale are required")
        if rp.origin_scale == 0:
            raise self.error("roi_pooling_param.origin_scale must not be 0")
        self.single_scale, self.origin_scale = rp.single_scale, rp.origin_scale
        return super().setup(bottom_shapes, ctx)

    def forward(self, x):
        rois = super().forward(x)[0]
        return [geometry.single_scale_rois(rois, self.single_scale, self.origin_scale)]


@register
class ROIPoolingLayer(Layer):
    TYPE = "ROIPooling"
    MIN_BOTTOMS, MAX_BOTTOMS = 2, 2
    MIN_TOPS, MAX_TOPS = 1, 1
    LABEL_BOTTOMS = (1,)  # no gradient to the rois

    def setup(self, bottom_shapes, ctx):
        rp = self.lp.roi_pooling_param
        if rp.pooled_h < 1 or rp.pooled_w < 1:
            raise self.error("roi_pooling_param.pooled_h and pooled_w must be >= 1")
        self.pooled = (int(rp.pooled_h), int(rp.pooled_w))
        get_op("roi_pool")  # a missing extension fails the build of the net, not its first forward
        self.spatial_scale, self.score_scale, self.score_bias = rp.spatial_scale, rp.score_scale, rp.score_bias
        f, r = bottom_shapes
        if len(f) != 4:
            raise self.error(f"bottom 0 must be N x C x H x W features, got {list(f)}")
        if count(r, 1) not in (5, 6):
            raise self.error(f"bottom 1 must be K x 6 rois (i, x1, y1, x2, y2, score), got {list(r)}")
        return [(r[0], f[1]) + self.pooled]

    def forward(self, feat, rois):
        rois = rois.detach()
        if rois.dim() != 2:
            rois = rois.reshape(rois.shape[0], -1)
        try:
            out, _ = get_op("roi_pool")(
                feat, rois, self.pooled[0], self.pooled[1], self.spatial_scale, self.score_scale, self.score_bias
            )
        except ValueError as exc:
            raise self.runtime_error(str(exc)) from None
        return [out]
