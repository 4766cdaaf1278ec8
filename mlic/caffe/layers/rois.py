"""The fork's region layers: WsdRoigen, WsdRoigenSingleScale (proposal rows from label_roi)
and ROIPooling (SPEC section 3)."""
from __future__ import annotations

from mlic import ops
from mlic.caffe.layers.base import count, Layer, register
from mlic.ops import geometry


@register
class WsdRoigenLayer(Layer):
    """N x 5B -> (N*B) x 6 rows (image index, x1, y1, x2, y2, score), image-major."""

    TYPE = "WsdRoigen"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        try:
            return [geometry.wsd_roigen_shape(bottom_shapes[0])]
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def forward(self, x):
        try:
            return [geometry.wsd_roigen(x)]
        except ValueError as exc:
            raise self.runtime_error(str(exc)) from None


@register
class WsdRoigenSingleScaleLayer(WsdRoigenLayer):
    """WsdRoigen with coordinates floor(single_scale * x / origin_scale) (float32)."""

    TYPE = "WsdRoigenSingleScale"

    def setup(self, bottom_shapes, ctx):
        rp = self.lp.roi_pooling_param
        if not (rp.HasField("single_scale") and rp.HasField("origin_scale")):
            raise self.error("roi_pooling_param.single_scale and origin_scale are required")
        try:
            geometry.check_origin_scale(rp.origin_scale)
        except ValueError as exc:
            raise self.error(f"roi_pooling_param.{exc}") from None
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
        self.ops_backend = ctx.ops_backend
        ops.assert_has_ops(self.ops_backend)  # a missing extension fails the build of the net, not its first forward
        self.spatial_scale, self.score_scale, self.score_bias = rp.spatial_scale, rp.score_scale, rp.score_bias
        f, r = bottom_shapes
        if len(f) != 4:
            raise self.error(f"bottom 0 must be N x C x H x W features, got {list(f)}")
        try:  # Caffe reads the rois as K rows of count / K values
            geometry.check_rois_shape((count(r[:1]), count(r, 1)), f"bottom 1 {list(r)} (rois)")
        except ValueError as exc:
            raise self.error(str(exc)) from None
        return [(r[0], f[1]) + self.pooled]

    def forward(self, feat, rois):
        rois = rois.detach()
        if rois.dim() != 2:
            rois = rois.reshape(rois.shape[0], -1)
        try:
            out = ops.roi_pool(feat, rois, self.pooled[0], self.pooled[1], self.spatial_scale, self.score_scale,
                               self.score_bias, backend=self.ops_backend)
        except ValueError as exc:
            raise self.runtime_error(str(exc)) from None
        return [out]
