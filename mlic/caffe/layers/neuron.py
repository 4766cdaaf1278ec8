"""Neuron layers (elementwise, one bottom): ReLU, Sigmoid, Dropout."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mlic.caffe import proto
from mlic.caffe.layers.base import Layer, register


@register
class ReLULayer(Layer):
    TYPE = "ReLU"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        self.slope = float(self.lp.relu_param.negative_slope)
        return [bottom_shapes[0]]

    def forward(self, x):
        if self.slope == 0:
            return [F.relu(x)]
        return [F.leaky_relu(x, self.slope)]


@register
class SigmoidLayer(Layer):
    TYPE = "Sigmoid"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        return [bottom_shapes[0]]

    def forward(self, x):
        return [torch.sigmoid(x)]


@register
class DropoutLayer(Layer):
    """TRAIN: keep with probability 1-r, scale by 1/(1-r) (torch's RNG, not Caffe's);
    TEST, or a module in eval() mode: identity."""

    TYPE = "Dropout"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        self.ratio = float(self.lp.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        return [bottom_shapes[0]]

    def forward(self, x):
        if self.phase == proto.TRAIN and self.training and self.ratio > 0:
            return [F.dropout(x, self.ratio, training=True)]
        return [x]
