"""Common layers: InnerProduct, Softmax, Eltwise, Scale."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mlic.caffe import proto
from mlic.caffe.layers.base import _constant_filler, canonical_axis, count, Layer, register
from mlic.ops import functional as CF, geometry


@register
class InnerProductLayer(Layer):
    TYPE = "InnerProduct"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1
    TIGHT = False

    def setup(self, bottom_shapes, ctx):
        p = self.lp.inner_product_param
        s = bottom_shapes[0]
        if not p.HasField("num_output") or p.num_output < 1:
            raise self.error("inner_product_param.num_output must be >= 1")
        try:
            self.axis = canonical_axis(p.axis, len(s), "inner_product_param")
        except ValueError as exc:
            raise self.error(str(exc)) from None
        self.num_output = int(p.num_output)
        self.k = count(s, self.axis)
        self.transpose = p.transpose
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.weight = self._new_param(wshape, p.weight_filler, "weight")
        self.bias = self._new_param((self.num_output,), p.bias_filler, "bias") if p.bias_term else None
        return [tuple(s[: self.axis]) + (self.num_output,)]

    def forward(self, x):
        k = count(tuple(x.shape), self.axis)
        if k != self.k:
            raise self.runtime_error(
                f"bottom shape {tuple(x.shape)} gives {k} inputs per row from axis {self.axis}, "
                f"the weights expect {self.k}"
            )
        lead = tuple(x.shape[: self.axis])
        flat = x.reshape(count(lead), self.k)
        w = self.weight.t() if self.transpose else self.weight
        return [F.linear(flat, w, self.bias).reshape(lead + (self.num_output,))]


@register
class SoftmaxLayer(Layer):
    TYPE = "Softmax"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        try:
            self.axis = canonical_axis(self.lp.softmax_param.axis, len(bottom_shapes[0]), "softmax_param")
        except ValueError as exc:
            raise self.error(str(exc)) from None
        return [bottom_shapes[0]]

    def forward(self, x):
        return [CF.softmax(x, self.axis)]


@register
class EltwiseLayer(Layer):
    TYPE = "Eltwise"
    MIN_BOTTOMS = 2
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        ep = self.lp.eltwise_param
        self.op = proto.enum_name(ep, "operation")
        self.coeffs = [float(c) for c in ep.coeff]
        if self.coeffs and (self.op != "SUM" or len(self.coeffs) != len(self.bottom_names)):
            raise self.error("eltwise_param.coeff is for SUM only, one coefficient per bottom")
        s0 = bottom_shapes[0]
        for i, s in enumerate(bottom_shapes[1:], 1):
            if tuple(s) != tuple(s0):
                raise self.error(f"bottom {i} shape {list(s)} differs from bottom 0 shape {list(s0)}")
        return [s0]

    def forward(self, *xs):
        for i, x in enumerate(xs[1:], 1):
            if x.shape != xs[0].shape:
                raise self.runtime_error(f"bottom {i} shape {tuple(x.shape)} differs from {tuple(xs[0].shape)}")
        if self.op == "PROD":
            out = xs[0] * xs[1]
            for x in xs[2:]:
                out = out * x
            return [out]
        if self.op == "SUM":
            coeffs = self.coeffs or [1.0] * len(xs)
            out = xs[0] * coeffs[0] if coeffs[0] != 1 else xs[0]
            for c, x in zip(coeffs[1:], xs[1:]):
                out = out + (x * c if c != 1 else x)
            return [out]
        # MAX: Caffe takes bottom 1 on a tie with bottom 0, then only strictly larger ones
        with torch.no_grad():
            idx = (xs[0] <= xs[1]).long()
            best = torch.where(idx.bool(), xs[1], xs[0])
            for k, x in enumerate(xs[2:], 2):
                upd = x > best
                idx = torch.where(upd, torch.full_like(idx, k), idx)
                best = torch.where(upd, x, best)
        stacked = torch.stack(xs, 0)
        return [torch.gather(stacked, 0, idx.unsqueeze(0)).squeeze(0)]


@register
class ScaleLayer(Layer):
    """top = bottom * scale (+ bias), scale broadcast along axes [axis, axis+num_axes);
    the scale is a learnable blob (one bottom) or the second bottom."""

    TYPE = "Scale"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 2
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        sp = self.lp.scale_param
        s = bottom_shapes[0]
        if len(bottom_shapes) == 1:
            if sp.num_axes < -1:
                raise self.error("scale_param.num_axes must be >= -1")
            try:
                self.axis = canonical_axis(sp.axis, len(s), "scale_param") if len(s) else 0
            except ValueError as exc:
                raise self.error(str(exc)) from None
            end = len(s) if sp.num_axes == -1 else self.axis + sp.num_axes
            if end > len(s):
                raise self.error(f"scale_param axis {sp.axis} + num_axes {sp.num_axes} exceed the bottom's {len(s)} axes")
            pshape = tuple(s[self.axis : end])
            filler = sp.filler if sp.HasField("filler") else _constant_filler(1.0)
            self.weight = self._new_param(pshape, filler, "scale")
            self.param_shape = pshape
        else:
            ss = bottom_shapes[1]
            try:
                self.axis = 0 if len(ss) == 0 else canonical_axis(sp.axis, len(s), "scale_param")
            except ValueError as exc:
                raise self.error(str(exc)) from None
            self.weight = None
            self.param_shape = tuple(ss)
        try:
            geometry.scale_view_shape(s, self.axis, self.param_shape)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        if sp.bias_term:
            bf = sp.bias_filler if sp.HasField("bias_filler") else _constant_filler(0.0)
            self.bias = self._new_param(self.param_shape, bf, "bias")
        else:
            self.bias = None
        return [s]

    def forward(self, x, scale=None):
        scale = self.weight if scale is None else scale
        try:
            view = geometry.scale_view_shape(x.shape, self.axis, scale.shape)
        except ValueError as exc:
            raise self.runtime_error(str(exc)) from None
        out = x * scale.reshape(view)
        if self.bias is not None:
            out = out + self.bias.reshape(view)
        return [out]
