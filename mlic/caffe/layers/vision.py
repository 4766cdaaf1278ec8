"""Vision layers: Convolution, Pooling, SPP, Interp."""
from __future__ import annotations

import torch.nn.functional as F

from mlic import ops
from mlic.caffe import proto
from mlic.caffe.layers.base import Layer, register
from mlic.ops import functional as CF, geometry


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


def _pool_method(layer, param):
    try:
        return geometry.pool_mode(proto.enum_name(param, "pool"))
    except ValueError as exc:
        raise layer.error(f"pool method {proto.enum_name(param, 'pool')}: {exc}") from None


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
        self.mode = _pool_method(self, pp)
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
        self.ops_backend = ctx.ops_backend
        lv = self.level(s[2], s[3], self.error)
        return [(s[0], s[1], lv.oh, lv.ow)]

    def level(self, h, w, err):
        """Caffe's geometry for an h x w bottom (its refusals raised through `err`)."""
        kernel = (h, w) if self.global_pooling else self.kernel
        try:
            return geometry.pool2d_level(h, w, kernel, self.stride, self.pad)
        except ValueError as exc:
            raise err(str(exc)) from None

    def forward(self, x):
        if x.dim() != 4:
            raise self.runtime_error(f"expects an N x C x H x W bottom, got {tuple(x.shape)}")
        lv = self.level(x.shape[2], x.shape[3], self.runtime_error)
        kernel, stride, pad = (lv.kh, lv.kw), (lv.sh, lv.sw), (lv.pad_h, lv.pad_w)
        try:
            return [CF.caffe_pooling(x, kernel, stride, pad, self.mode, backend=self.ops_backend)]
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
        if not sp.HasField("pyramid_height"):
            raise self.error("spp_param.pyramid_height is required")
        self.levels = int(sp.pyramid_height)
        self.mode = _pool_method(self, sp)
        self.ops_backend = ctx.ops_backend
        ops.assert_has_ops(self.ops_backend)  # a missing extension fails the build of the net, not its first forward
        cells = sum(lv.oh * lv.ow for lv in self.pyramid(s[2], s[3], self.error))
        return [(s[0], s[1] * cells)]

    def pyramid(self, h, w, err):
        try:
            return geometry.spp_levels(h, w, self.levels)
        except ValueError as exc:
            raise err(str(exc)) from None

    def forward(self, x):
        if x.dim() != 4:
            raise self.runtime_error(f"expects an N x C x H x W bottom, got {tuple(x.shape)}")
        self.pyramid(x.shape[2], x.shape[3], self.runtime_error)
        return [ops.spp(x, self.levels, self.mode, backend=self.ops_backend)]


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
