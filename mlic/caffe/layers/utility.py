"""Layers that move blobs around: Split, Silence, Slice, Concat, Flatten, Reshape."""
from __future__ import annotations

import numpy as np
import torch

from mlic.caffe.layers.base import canonical_axis, count, Layer, register


@register
class SplitLayer(Layer):
    TYPE = "Split"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS = 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        return [bottom_shapes[0]] * len(self.top_names)

    def forward(self, x):
        # distinct autograd nodes, so each consumer's gradient is visible separately
        return [x.view_as(x) for _ in self.top_names]


@register
class SilenceLayer(Layer):
    TYPE = "Silence"
    MIN_BOTTOMS = 1
    MAX_TOPS = 0

    def setup(self, bottom_shapes, ctx):
        return []

    def forward(self, *bottoms):
        return []


@register
class SliceLayer(Layer):
    TYPE = "Slice"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS = 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        sp = self.lp.slice_param
        shape = bottom_shapes[0]
        try:
            if sp.HasField("slice_dim") and not sp.HasField("axis"):
                self.axis = int(sp.slice_dim)
                if self.axis >= len(shape):
                    raise ValueError(f"slice_dim {self.axis} is out of range for a {len(shape)}-axis blob")
            else:
                self.axis = canonical_axis(sp.axis, len(shape), "slice_param")
        except ValueError as exc:
            raise self.error(str(exc)) from None
        self.points = [int(p) for p in sp.slice_point]
        nt = len(self.top_names)
        self._check_points(shape[self.axis], nt)
        return [tuple(shape[: self.axis]) + (s,) + tuple(shape[self.axis + 1 :]) for s in self.sizes(shape[self.axis])]

    def _check_points(self, dim, nt):
        if self.points:
            if len(self.points) != nt - 1:
                raise self.error(f"{len(self.points)} slice_point(s) need {len(self.points) + 1} tops, got {nt}")
            prev = 0
            for p in self.points:
                if p <= prev or p >= dim:
                    raise self.error(
                        f"slice_point {self.points} must increase strictly within (0, {dim}) on axis {self.axis}"
                    )
                prev = p
        elif dim % nt:
            raise self.error(f"axis {self.axis} of size {dim} cannot be split evenly into {nt} tops")

    def sizes(self, dim):
        if self.points:
            edges = [0] + self.points + [dim]
            return [b - a for a, b in zip(edges[:-1], edges[1:])]
        nt = len(self.top_names)
        return [dim // nt] * nt

    def forward(self, x):
        if x.dim() <= self.axis:
            raise self.runtime_error(f"bottom has shape {tuple(x.shape)}, no axis {self.axis}")
        self._check_points(x.shape[self.axis], len(self.top_names))
        return list(torch.split(x, self.sizes(x.shape[self.axis]), dim=self.axis))


@register
class ConcatLayer(Layer):
    TYPE = "Concat"
    MIN_BOTTOMS = 1
    MIN_TOPS, MAX_TOPS = 1, 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        cp = self.lp.concat_param
        s0 = bottom_shapes[0]
        try:
            if cp.HasField("concat_dim") and not cp.HasField("axis"):
                self.axis = int(cp.concat_dim)
            else:
                self.axis = canonical_axis(cp.axis, len(s0), "concat_param")
        except ValueError as exc:
            raise self.error(str(exc)) from None
        total = 0
        for i, s in enumerate(bottom_shapes):
            if len(s) != len(s0) or any(a != b for j, (a, b) in enumerate(zip(s, s0)) if j != self.axis):
                raise self.error(f"bottom {i} shape {list(s)} does not match {list(s0)} outside axis {self.axis}")
            total += s[self.axis]
        return [tuple(s0[: self.axis]) + (total,) + tuple(s0[self.axis + 1 :])]

    def forward(self, *xs):
        return [torch.cat(xs, dim=self.axis)]


@register
class FlattenLayer(Layer):
    TYPE = "Flatten"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        fp = self.lp.flatten_param
        s = bottom_shapes[0]
        try:
            self.start = canonical_axis(fp.axis, len(s), "flatten_param.axis")
            self.end = canonical_axis(fp.end_axis, len(s), "flatten_param.end_axis")
        except ValueError as exc:
            raise self.error(str(exc)) from None
        return [self._shape(s)]

    def _shape(self, s):
        return tuple(s[: self.start]) + (count(s, self.start, self.end + 1),) + tuple(s[self.end + 1 :])

    def forward(self, x):
        return [x.reshape(self._shape(tuple(x.shape)))]


@register
class ReshapeLayer(Layer):
    TYPE = "Reshape"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        rp = self.lp.reshape_param
        self.dims = [int(d) for d in rp.shape.dim]
        if sum(1 for d in self.dims if d == -1) > 1:
            raise self.error("reshape_param: only one dimension can be inferred (-1)")
        if any(d < -1 for d in self.dims):
            raise self.error(f"reshape_param: invalid dimension in {self.dims}")
        self.axis, self.num_axes = rp.axis, rp.num_axes
        if self.num_axes < -1:
            raise self.error("reshape_param.num_axes must be >= -1")
        return [self.top_shape(bottom_shapes[0])]

    def top_shape(self, s):
        n = len(s)
        start = self.axis if self.axis >= 0 else n + self.axis + 1
        if not 0 <= start <= n:
            raise self.error(f"reshape_param.axis {self.axis} is out of range for bottom shape {list(s)}")
        end = n if self.num_axes == -1 else start + self.num_axes
        if end > n:
            raise self.error(f"reshape_param axis/num_axes go past the bottom's {n} axes")
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.error(f"reshape dim {i} is 0 (copy) but the bottom has no axis {start + i}")
                new[i] = s[start + i]
        top = list(s[:start]) + new + list(s[end:])
        total = count(s)
        if -1 in new:
            known = count(s[:start]) * count(s[end:]) * int(np.prod([d for d in new if d != -1], dtype=np.int64))
            if known == 0 or total % known:
                raise self.error(f"cannot reshape {list(s)} ({total} values) to {self.dims}: -1 cannot be inferred")
            top[start + new.index(-1)] = total // known
        if count(top) != total:
            raise self.error(f"cannot reshape {list(s)} ({total} values) to {top} ({count(top)} values)")
        return tuple(top)

    def forward(self, x):
        return [x.reshape(self.top_shape(tuple(x.shape)))]
