"""Loss layers: the authors' CrossEntropyLoss, SigmoidCrossEntropyLoss, EuclideanLoss
(SPEC section 3; their top is the unweighted loss)."""
from __future__ import annotations

from mlic.caffe import proto
from mlic.caffe.layers.base import count, Layer, register
from mlic.ops import functional as CF


class LossLayer(Layer):
    MIN_BOTTOMS, MAX_BOTTOMS = 2, 2
    MIN_TOPS, MAX_TOPS = 1, 1
    IS_LOSS = True
    LABEL_BOTTOMS = (1,)

    def setup(self, bottom_shapes, ctx):
        a, b = bottom_shapes
        if count(a) != count(b):
            raise self.error(f"the bottoms must have the same count, got {list(a)} and {list(b)}")
        return [()]


@register
class CrossEntropyLossLayer(LossLayer):
    """The authors' clamped binary cross-entropy on probabilities (SPEC section 3)."""

    TYPE = "CrossEntropyLoss"

    def forward(self, p, t):
        return [CF.cross_entropy_loss(p, t)]


@register
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Normalised by num (the authors' Caffe) unless loss_param.normalization is given."""

    TYPE = "SigmoidCrossEntropyLoss"

    def setup(self, bottom_shapes, ctx):
        lp = self.lp.loss_param
        self.norm_mode = None
        if self.lp.HasField("loss_param") and lp.HasField("normalization"):
            self.norm_mode = proto.enum_name(lp, "normalization")
        elif self.lp.HasField("loss_param") and lp.HasField("normalize"):
            self.norm_mode = "VALID" if lp.normalize else "BATCH_SIZE"
        if self.lp.HasField("loss_param") and lp.HasField("ignore_label"):
            raise self.error("loss_param.ignore_label is not supported")
        return super().setup(bottom_shapes, ctx)

    def forward(self, x, t):
        if self.norm_mode in ("FULL", "VALID"):
            norm = max(x.numel(), 1)
        elif self.norm_mode == "NONE":
            norm = 1
        else:
            norm = x.shape[0] if x.dim() else 1
        return [CF.sigmoid_cross_entropy_loss(x, t, norm)]


@register
class EuclideanLossLayer(LossLayer):
    TYPE = "EuclideanLoss"
    LABEL_BOTTOMS = ()  # both bottoms may receive a gradient

    def forward(self, a, b):
        return [CF.euclidean_loss(a, b)]
