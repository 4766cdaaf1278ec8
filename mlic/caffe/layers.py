"""Caffe layers as PyTorch modules (SPEC section 3).

Each layer is built from its LayerParameter and the shapes of its bottoms (Caffe's
SetUp: the parameter blobs are created and filled here), and runs
``forward(*bottoms) -> list of tops``. The net (mlic.caffe.net) handles wiring, phases,
propagate_down, loss weights and in-place blobs.

The Pooling, SPP and ROIPooling kernels are looked up at call time in ``mlic.ops`` (the
compiled extension; without it they raise an error that says how to build it).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlic.caffe import functional as CF
from mlic.caffe import proto
from mlic.caffe.errors import NetBuildError
from mlic.ops import geometry

Shape = Tuple[int, ...]

# ----------------------------------------------------------------------------- op lookup


# "auto": the compiled ops (mlic.ops; a missing extension is an error that says how to
# build it); "reference": mlic.ops.reference, by name only (for checking one against the other).
OPS_BACKEND = "auto"


def get_op(name: str):
    """mlic.ops.<name>, or mlic.ops.reference.<name>_ref when OPS_BACKEND is "reference"."""
    if OPS_BACKEND == "reference":
        from mlic.ops import reference

        return getattr(reference, f"{name}_ref")
    import mlic.ops as ops

    ops.assert_has_ops()
    return getattr(ops, name)


# ----------------------------------------------------------------------------- fillers

SUPPORTED_FILLERS = ("constant", "gaussian", "uniform", "xavier", "msra", "positive_unitball")


def fill_(t: torch.Tensor, filler, where: str) -> torch.Tensor:
    """Fill `t` in place as Caffe's filler `filler` would (drawing from torch's RNG)."""
    kind = filler.type
    shape = tuple(t.shape)
    with torch.no_grad():
        if kind == "constant":
            t.fill_(filler.value)
        elif kind == "uniform":
            t.uniform_(filler.min, filler.max)
        elif kind == "gaussian":
            t.normal_(filler.mean, filler.std)
            if filler.sparse >= 0:
                if len(shape) < 1 or shape[0] < 1:
                    raise NetBuildError(f"{where}: sparse gaussian filler needs a blob with a first axis")
                p = filler.sparse / shape[0]
                t.mul_(torch.bernoulli(torch.full_like(t, min(max(p, 0.0), 1.0))))
        elif kind == "xavier":
            geometry.xavier_(t, proto.enum_name(filler, "variance_norm"))
        elif kind == "msra":
            geometry.msra_(t, proto.enum_name(filler, "variance_norm"))
        elif kind == "positive_unitball":
            t.uniform_(0, 1)
            if len(shape) >= 1 and shape[0]:
                flat = t.view(shape[0], -1)
                flat.div_(flat.sum(1, keepdim=True))
        else:
            raise NetBuildError(f"{where}: unknown filler type {kind!r}; supported: {', '.join(SUPPORTED_FILLERS)}")
    return t


def _constant_filler(value: float):
    f = proto.FillerParameter()
    f.type = "constant"
    f.value = value
    return f


# ----------------------------------------------------------------------------- helpers


def canonical_axis(axis: int, num_axes: int, what: str) -> int:
    if not -num_axes <= axis < max(num_axes, 1) or (num_axes == 0 and axis not in (0, -1)):
        raise ValueError(f"{what}: axis {axis} is out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: Optional[int] = None) -> int:
    end = len(shape) if end is None else end
    return int(np.prod(shape[start:end], dtype=np.int64)) if end > start else 1


# ----------------------------------------------------------------------------- base class


class Layer(nn.Module):
    """One Caffe layer. Subclasses set TYPE, the bottom/top count rules, and implement
    setup() (shapes and parameter blobs) and forward()."""

    TYPE = ""
    MIN_BOTTOMS, MAX_BOTTOMS = 0, None
    MIN_TOPS, MAX_TOPS = 0, None
    IS_LOSS = False
    # bottoms that never receive a gradient (Caffe's LossLayer refuses to backpropagate to
    # its label input; AllowForceBackward is false for them)
    LABEL_BOTTOMS: Tuple[int, ...] = ()
    # forward result is exact / within 1e-5 of Caffe given the same inputs (compare tool)
    EXACT = False
    TIGHT = True

    def __init__(self, lp, bottom_shapes: List[Shape], ctx):
        super().__init__()
        self.lp = lp
        self.layer_name = lp.name
        self.bottom_names = list(lp.bottom)
        self.top_names = list(lp.top)
        self.phase = ctx.phase
        self._where = ctx.where
        self._check_counts()
        self.top_shapes: List[Shape] = list(self.setup([tuple(s) for s in bottom_shapes], ctx))
        if len(self.top_shapes) != len(self.top_names):
            raise AssertionError(f"{self.TYPE}.setup returned {len(self.top_shapes)} shapes")

    # -- errors
    def error(self, msg: str) -> NetBuildError:
        return NetBuildError(f"{self._where}: layer '{self.layer_name}' (type {self.TYPE}): {msg}")

    def runtime_error(self, msg: str) -> ValueError:
        return ValueError(f"{self._where}: layer '{self.layer_name}' (type {self.TYPE}): {msg}")

    def _check_counts(self):
        nb, nt = len(self.bottom_names), len(self.top_names)
        if nb < self.MIN_BOTTOMS or (self.MAX_BOTTOMS is not None and nb > self.MAX_BOTTOMS):
            raise self.error(f"takes {self._range(self.MIN_BOTTOMS, self.MAX_BOTTOMS)} bottom(s), got {nb}")
        if nt < self.MIN_TOPS or (self.MAX_TOPS is not None and nt > self.MAX_TOPS):
            raise self.error(f"takes {self._range(self.MIN_TOPS, self.MAX_TOPS)} top(s), got {nt}")

    @staticmethod
    def _range(lo, hi):
        if hi is None:
            return f"at least {lo}"
        return str(lo) if lo == hi else f"{lo} to {hi}"

    # -- parameters
    def caffe_blobs(self) -> List[nn.Parameter]:
        """The learnable blobs in Caffe order."""
        return [p for p in (getattr(self, "weight", None), getattr(self, "bias", None)) if p is not None]

    def blob_keys(self) -> List[str]:
        """Names of caffe_blobs() as module attributes ('weight', 'bias')."""
        return [k for k in ("weight", "bias") if getattr(self, k, None) is not None]

    def _new_param(self, shape: Shape, filler, what: str) -> nn.Parameter:
        t = torch.empty(shape, dtype=torch.float32)
        fill_(t, filler, f"{self._where}: layer '{self.layer_name}' {what}")
        return nn.Parameter(t)

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom not in self.LABEL_BOTTOMS

    def setup(self, bottom_shapes: List[Shape], ctx) -> List[Shape]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.layer_name!r}, bottoms={self.bottom_names}, tops={self.top_names}"


LAYERS: Dict[str, Type[Layer]] = {}


def register(cls: Type[Layer]) -> Type[Layer]:
    LAYERS[cls.TYPE] = cls
    return cls


def supported_layer_types() -> List[str]:
    return sorted(LAYERS)


# ----------------------------------------------------------------------------- data and plumbing


@register
class InputLayer(Layer):
    """Tops are fed by the caller (net.forward(**blobs)); shapes from input_param."""

    TYPE = "Input"
    MAX_BOTTOMS = 0
    MIN_TOPS = 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        shapes = [tuple(int(d) for d in s.dim) for s in self.lp.input_param.shape]
        nt = len(self.top_names)
        if len(shapes) == 1:
            shapes = shapes * nt
        if len(shapes) != nt:
            raise self.error(
                f"input_param must give one shape, or one per top ({nt}); got {len(self.lp.input_param.shape)}"
            )
        for s in shapes:
            if any(d < 0 for d in s):
                raise self.error(f"negative dimension in input shape {list(s)}")
        return shapes

    def forward(self):
        raise AssertionError("Input tops are fed by the net")


@register
class HumanAttDataLayer(Layer):
    """The authors' data layer. Its tops (data, label_roi) can always be fed directly;
    otherwise batches come from mlic.data (a loader built from this layer's params)."""

    TYPE = "HumanAttData"
    MAX_BOTTOMS = 0
    MIN_TOPS, MAX_TOPS = 1, 2
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        hp = self.lp.human_att_data_param
        if not self.lp.HasField("human_att_data_param"):
            raise self.error("human_att_data_param is required")
        if hp.batch_size < 1:
            raise self.error("human_att_data_param.batch_size must be >= 1")
        if hp.new_height < 1 or hp.new_width < 1:
            raise self.error("human_att_data_param.new_height and new_width must be set (blob shapes are fixed "
                             "when the net is built)")
        self.data_dir = ctx.data_dir
        self.data_seed = ctx.data_seed
        self._stream = None
        n = hp.batch_size
        shapes = [(n, 3 if hp.is_color else 1, hp.new_height, hp.new_width)]
        if len(self.top_names) > 1:
            shapes.append((n, hp.att_num + 5 * hp.bbox_num))
        return shapes

    def next_batch(self, device=None):
        if self._stream is None:
            try:
                from mlic.data import build_loader_from_layer
            except ImportError as exc:
                raise self.runtime_error(
                    f"no blobs were fed for its tops {self.top_names} and the data pipeline "
                    f"mlic.data cannot be imported ({exc})"
                ) from None
            try:
                loader = build_loader_from_layer(self.lp, base_dir=self.data_dir, seed=self.data_seed)
            except (ValueError, OSError) as exc:
                raise self.runtime_error(f"cannot build its data loader: {exc}") from None
            self._stream = iter(loader.iter_steps(0))
        batch = next(self._stream)
        tops = [batch.data, batch.label_roi][: len(self.top_names)]
        return [t.to(device) if device is not None else t for t in tops]

    def reset_data(self):
        self._stream = None

    def forward(self):
        raise AssertionError("data tops are produced by the net")


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


# ----------------------------------------------------------------------------- RoI generation


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


# ----------------------------------------------------------------------------- vision layers


def _conv_pair(layer, rep, h_name, w_name, default, what):
    cp = layer.lp.convolution_param
    has_hw = cp.HasField(h_name) or cp.HasField(w_name)
    if has_hw:
        if len(rep):
            raise layer.error(f"give either {what} or {h_name}/{w_name}, not both")
        if not (cp.HasField(h_name) and cp.HasField(w_name)) and what == "kernel_size":
            raise layer.error(f"{h_name} and {w_name} must be given together")
        return int(getattr(cp, h_name)), int(getattr(cp, w_name))
    vals = [int(v) for v in rep]
    if len(vals) == 0:
        if default is None:
            raise layer.error(f"convolution_param.{what} is required")
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise layer.error(f"convolution_param.{what} has {len(vals)} values; 2-D convolution takes 1 or 2")


@register
class ConvolutionLayer(Layer):
    TYPE = "Convolution"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1  # one bottom/top pair (the released nets' use)
    MIN_TOPS, MAX_TOPS = 1, 1
    TIGHT = False

    def setup(self, bottom_shapes, ctx):
        cp = self.lp.convolution_param
        s = bottom_shapes[0]
        if cp.axis not in (1, -3) or len(s) != 4:
            raise self.error(
                f"only 2-D convolution over axis 1 of an N x C x H x W bottom is supported (bottom {list(s)}, "
                f"axis {cp.axis})"
            )
        if not cp.HasField("num_output") or cp.num_output < 1:
            raise self.error("convolution_param.num_output must be >= 1")
        self.kernel = _conv_pair(self, cp.kernel_size, "kernel_h", "kernel_w", None, "kernel_size")
        self.pad = _conv_pair(self, cp.pad, "pad_h", "pad_w", 0, "pad")
        self.stride = _conv_pair(self, cp.stride, "stride_h", "stride_w", 1, "stride")
        dil = [int(v) for v in cp.dilation]
        if len(dil) > 2:
            raise self.error("convolution_param.dilation takes 1 or 2 values")
        self.dilation = (1, 1) if not dil else ((dil[0], dil[0]) if len(dil) == 1 else (dil[0], dil[1]))
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise self.error(f"kernel {self.kernel}, stride {self.stride}, dilation {self.dilation} must be positive")
        self.group = int(cp.group)
        c = s[1]
        if self.group < 1 or c % self.group or cp.num_output % self.group:
            raise self.error(f"group {self.group} must divide the input channels ({c}) and num_output ({cp.num_output})")
        self.num_output = int(cp.num_output)
        wshape = (self.num_output, c // self.group) + tuple(self.kernel)
        self.weight = self._new_param(wshape, cp.weight_filler, "weight")
        self.bias = self._new_param((self.num_output,), cp.bias_filler, "bias") if cp.bias_term else None
        return [self.out_shape(s)]

    def out_shape(self, s):
        out = []
        for i in range(2):
            ext = self.dilation[i] * (self.kernel[i] - 1) + 1
            o = (s[2 + i] + 2 * self.pad[i] - ext) // self.stride[i] + 1
            if o < 1:
                raise self.error(f"kernel {self.kernel} does not fit the padded input {list(s)}")
            out.append(o)
        return (s[0], self.num_output, out[0], out[1])

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.weight.shape[1] * self.group:
            raise self.runtime_error(
                f"bottom shape {tuple(x.shape)} does not match the weights {tuple(self.weight.shape)} "
                f"(group {self.group})"
            )
        return [F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group)]


def _torch_pool_out(size: int, k: int, s: int, p: int) -> int:
    # PyTorch's ceil_mode rule: always drops a last window starting in the right padding
    out = -((-(size + 2 * p - k)) // s) + 1
    if (out - 1) * s >= size + p:
        out -= 1
    return out


def torch_pool_matches_caffe(h, w, kernel, stride, pad) -> bool:
    """True when F.max_pool2d / F.avg_pool2d(ceil_mode=True, count_include_pad=True) give
    Caffe's result: same output size (PyTorch's ceil rule drops a window starting in the
    padding also when pad == 0, Caffe's does not), pad <= kernel/2 (PyTorch's limit), and
    the kernel fits the padded input. The window bounds, the clipping, the AVE divisor
    (window clipped to [-p, size+p)) and the MAX tie rule (first maximum) are the same."""
    any_pad = pad[0] > 0 or pad[1] > 0
    for size, k, s, p in ((h, kernel[0], stride[0], pad[0]), (w, kernel[1], stride[1], pad[1])):
        if size + 2 * p < k or p > k // 2:
            return False
        if geometry.pool_output_size(size, k, s, p, any_pad) != _torch_pool_out(size, k, s, p):
            return False
    return True


@register
class PoolingLayer(Layer):
    TYPE = "Pooling"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        pp = self.lp.pooling_param
        s = bottom_shapes[0]
        if len(s) != 4:
            raise self.error(f"expects an N x C x H x W bottom, got {list(s)}")
        self.mode = {"MAX": "max", "AVE": "ave"}.get(proto.enum_name(pp, "pool"))
        if self.mode is None:
            raise self.error(f"pool method {proto.enum_name(pp, 'pool')} is not supported (MAX, AVE)")
        if proto.enum_name(pp, "round_mode") != "CEIL":
            raise self.error("round_mode FLOOR is not supported (Caffe's default CEIL is)")
        self.global_pooling = pp.global_pooling
        if pp.global_pooling:
            if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                raise self.error("with global_pooling, kernel size cannot be specified")
            self.kernel = None
        elif pp.HasField("kernel_size"):
            if pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                raise self.error("give either kernel_size or kernel_h/kernel_w, not both")
            self.kernel = (pp.kernel_size, pp.kernel_size)
        elif pp.HasField("kernel_h") and pp.HasField("kernel_w"):
            self.kernel = (pp.kernel_h, pp.kernel_w)
        else:
            raise self.error("pooling_param needs kernel_size or kernel_h and kernel_w")
        if pp.HasField("pad_h") or pp.HasField("pad_w"):
            self.pad = (pp.pad_h, pp.pad_w)
        else:
            self.pad = (pp.pad, pp.pad)
        if pp.HasField("stride_h") or pp.HasField("stride_w"):
            self.stride = (pp.stride_h, pp.stride_w)
        else:
            self.stride = (pp.stride, pp.stride)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("with global_pooling, pad must be 0 and stride 1")
        if min(self.stride) < 1:
            raise self.error(f"stride {self.stride} must be positive")
        if self.kernel is not None:
            if min(self.kernel) < 1:
                raise self.error(f"kernel {self.kernel} must be positive")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel} (Caffe requires it)")
        self.backend = ctx.pool_backend
        return [self.out_shape(s)]

    def geometry(self, h, w):
        kernel = (h, w) if self.global_pooling else self.kernel
        return kernel, self.stride, self.pad

    def out_shape(self, s):
        kernel, stride, pad = self.geometry(s[2], s[3])
        any_pad = pad[0] > 0 or pad[1] > 0
        oh = geometry.pool_output_size(s[2], kernel[0], stride[0], pad[0], any_pad)
        ow = geometry.pool_output_size(s[3], kernel[1], stride[1], pad[1], any_pad)
        if oh < 1 or ow < 1:
            raise self.error(f"kernel {kernel} does not fit the input {list(s)}")
        return (s[0], s[1], oh, ow)

    def forward(self, x):
        if x.dim() != 4:
            raise self.runtime_error(f"expects an N x C x H x W bottom, got {tuple(x.shape)}")
        kernel, stride, pad = self.geometry(x.shape[2], x.shape[3])
        if self.backend == "auto" and torch_pool_matches_caffe(x.shape[2], x.shape[3], kernel, stride, pad):
            if self.mode == "max":
                return [F.max_pool2d(x, kernel, stride, pad, ceil_mode=True)]
            return [F.avg_pool2d(x, kernel, stride, pad, ceil_mode=True, count_include_pad=True)]
        try:
            return [get_op("caffe_pool2d")(x, kernel, stride, pad, self.mode)]
        except ValueError as exc:
            raise self.runtime_error(str(exc)) from None


@register
class SPPLayer(Layer):
    TYPE = "SPP"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        sp = self.lp.spp_param
        s = bottom_shapes[0]
        if len(s) != 4:
            raise self.error(f"expects an N x C x H x W bottom, got {list(s)}")
        if not sp.HasField("pyramid_height") or sp.pyramid_height < 1:
            raise self.error("spp_param.pyramid_height must be >= 1")
        self.levels = int(sp.pyramid_height)
        self.mode = {"MAX": "max", "AVE": "ave"}.get(proto.enum_name(sp, "pool"))
        if self.mode is None:
            raise self.error(f"pool method {proto.enum_name(sp, 'pool')} is not supported (MAX, AVE)")
        self.check_levels(s[2], s[3], self.error)
        get_op("spp")  # a missing extension fails the build of the net, not its first forward
        total = sum(4**l for l in range(self.levels))
        return [(s[0], s[1] * total)]

    def check_levels(self, h, w, err):
        try:
            geometry.spp_levels(h, w, self.levels)
        except ValueError as exc:
            raise err(str(exc)) from None

    def forward(self, x):
        if x.dim() != 4:
            raise self.runtime_error(f"expects an N x C x H x W bottom, got {tuple(x.shape)}")
        self.check_levels(x.shape[2], x.shape[3], self.runtime_error)
        return [get_op("spp")(x, self.levels, self.mode)]


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


@register
class InterpLayer(Layer):
    TYPE = "Interp"
    MIN_BOTTOMS, MAX_BOTTOMS = 1, 1
    MIN_TOPS, MAX_TOPS = 1, 1

    def setup(self, bottom_shapes, ctx):
        ip = self.lp.interp_param
        if ip.pad_beg > 0 or ip.pad_end > 0:
            raise self.error("interp_param pad_beg/pad_end must be <= 0 (only cropping is supported, as in Caffe)")
        self.kw = dict(
            height=ip.height if ip.HasField("height") else None,
            width=ip.width if ip.HasField("width") else None,
            zoom_factor=ip.zoom_factor if ip.HasField("zoom_factor") else None,
            shrink_factor=ip.shrink_factor if ip.HasField("shrink_factor") else None,
            pad_beg=ip.pad_beg,
            pad_end=ip.pad_end,
        )
        s = bottom_shapes[0]
        if len(s) != 4:
            raise self.error(f"expects an N x C x H x W bottom, got {list(s)}")
        _, _, oh, ow = self.sizes(s[2], s[3], self.error)
        return [(s[0], s[1], oh, ow)]

    def sizes(self, h, w, err):
        try:
            he, we, oh, ow = CF.interp_output_size(h, w, **self.kw)
        except ValueError as exc:
            raise err(str(exc)) from None
        if he < 1 or we < 1 or oh < 1 or ow < 1:
            raise err(f"input {h}x{w} (effective {he}x{we}) gives output {oh}x{ow}")
        return he, we, oh, ow

    def forward(self, x):
        if x.dim() != 4:
            raise self.runtime_error(f"expects an N x C x H x W bottom, got {tuple(x.shape)}")
        he, we, oh, ow = self.sizes(x.shape[2], x.shape[3], self.runtime_error)
        off = -self.kw["pad_beg"]
        crop = None if (he, we) == tuple(x.shape[2:]) else (off, off, he, we)
        return [CF.caffe_interp(x, oh, ow, crop)]


# ----------------------------------------------------------------------------- common layers


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
        if tuple(s[self.axis : self.axis + len(self.param_shape)]) != self.param_shape:
            raise self.error(
                f"scale shape {list(self.param_shape)} does not match bottom {list(s)} from axis {self.axis}"
            )
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


# ----------------------------------------------------------------------------- losses


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


# ----------------------------------------------------------------------------- build context


class BuildContext:
    def __init__(self, phase: int, where: str = "<net>", pool_backend: str = "auto", data_dir=None, data_seed=0):
        self.phase = phase
        self.where = where
        self.pool_backend = pool_backend
        self.data_dir = data_dir
        self.data_seed = data_seed
