"""Python-side registrations for the ops whose schemas and kernels mlic._C defines: fake
kernels for torch.compile and the autograd formulas, for the production namespace
``mlic`` and the test namespaces ``mlic_emulated_cuda`` and ``mlic_nvrtc``.

Autograd is in Python for every op, one style: ``torch.library.register_autograd`` composes
with the fake kernels under torch.compile, and its fixed cost (tens of microseconds a call)
is small next to these ops at the released sizes. The backward ops it calls are internal.
"""
import torch

from mlic.ops import geometry as G

NAMESPACES = ("mlic", "mlic_emulated_cuda", "mlic_nvrtc")
lib = torch.library


# ---------------------------------------------------------------- checks of the fake kernels
# The same refusals as the C++ front end (csrc/ops/frontend.cpp), so that traced code fails as eager does.

def _check_float(t, op, name):
    if not t.is_floating_point():
        raise ValueError(f"{op}: `{name}` must be a floating-point tensor, got {t.dtype}")


def _check_same(a, b, op, na, nb):
    if a.device != b.device:
        raise ValueError(f"{op}: `{na}` and `{nb}` must be on the same device, got {a.device} and {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: `{na}` and `{nb}` must have the same dtype, got {a.dtype} and {b.dtype}")


def _check_roi_inputs(features, rois, op):
    if features.dim() != 4:
        raise ValueError(f"{op}: `features` must be 4-D [N, C, H, W], got shape {tuple(features.shape)}")
    G.check_rois_shape(rois.shape, f"{op}: `rois`")
    _check_float(features, op, "features")
    _check_same(features, rois, op, "features", "rois")
    if any(s == 0 for s in features.shape):
        raise ValueError(f"{op}: `features` has an empty dimension, shape {tuple(features.shape)}")


def _check_x4(x, op):
    if x.dim() != 4:
        raise ValueError(f"{op}: `x` must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    _check_float(x, op, "x")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{op}: `x` has an empty dimension, shape {tuple(x.shape)}")


def _check_two_stream(cls, det, op):
    if cls.dim() != 3:
        raise ValueError(f"{op}: `cls_logits` must be 3-D [N, R, C], got shape {tuple(cls.shape)}")
    if det.dim() != 3:
        raise ValueError(f"{op}: `det_logits` must be 3-D [N, R, C], got shape {tuple(det.shape)}")
    if cls.shape != det.shape:
        raise ValueError(f"{op}: `cls_logits` and `det_logits` must have the same shape, got "
                         f"{tuple(cls.shape)} and {tuple(det.shape)}")
    _check_float(cls, op, "cls_logits")
    _check_same(cls, det, op, "cls_logits", "det_logits")
    if cls.shape[1] == 0:
        raise ValueError(f"{op}: `cls_logits`/`det_logits` need at least one region (R, dim 1), "
                         f"got shape {tuple(cls.shape)}")
    if cls.shape[2] == 0:
        raise ValueError(f"{op}: `cls_logits`/`det_logits` need at least one class (C, dim 2), "
                         f"got shape {tuple(cls.shape)}")


def _i32(t, shape):
    return t.new_empty(shape, dtype=torch.int32)


def _pool_out(x, levels, mode):
    n, c = x.shape[0], x.shape[1]
    cells = sum(lv.oh * lv.ow for lv in levels)
    am_shape = (n, c * cells) if G.pool_mode(mode) == "max" else (0, 0)
    return x.new_empty((n, c * cells)), _i32(x, am_shape)


# ---------------------------------------------------------------- fake kernels

def _roi_spp_fake(features, rois, levels_h, levels_w, spatial_scale=1.0, score_scale=1.0, score_bias=0.0,
                  deterministic=False):
    _check_roi_inputs(features, rois, "mlic.roi_spp")
    hs, ws = G.roi_levels(list(zip(levels_h, levels_w)))
    shape = (rois.shape[0], features.shape[1] * sum(h * w for h, w in zip(hs, ws)))
    return features.new_empty(shape), _i32(features, shape)


def _roi_pool_fake(features, rois, pooled_h, pooled_w, spatial_scale=1.0, score_scale=1.0, score_bias=0.0,
                   deterministic=False):
    _check_roi_inputs(features, rois, "mlic.roi_pool")
    if pooled_h <= 0 or pooled_w <= 0:
        raise ValueError(f"mlic.roi_pool: `pooled_h` and `pooled_w` must be positive, got {pooled_h}, {pooled_w}")
    shape = (rois.shape[0], features.shape[1], pooled_h, pooled_w)
    return features.new_empty(shape), _i32(features, shape)


def _roi_spp_backward_fake(grad, rois, argmax, levels_h, levels_w, batch, channels, height, width, spatial_scale,
                           score_scale, score_bias, deterministic):
    return grad.new_empty((batch, channels, height, width))


def _spp_fake(x, pyramid_height, mode="max"):
    _check_x4(x, "mlic.spp")
    return _pool_out(x, G.spp_levels(x.shape[2], x.shape[3], pyramid_height), mode)


def _spp_backward_fake(grad, argmax, pyramid_height, mode, batch, channels, height, width):
    return grad.new_empty((batch, channels, height, width))


def _caffe_pool2d_fake(x, kernel_size, stride, padding, mode="max"):
    _check_x4(x, "mlic.caffe_pool2d")
    lv = G.pool2d_level(x.shape[2], x.shape[3], kernel_size, stride, padding)
    shape = (x.shape[0], x.shape[1], lv.oh, lv.ow)
    return x.new_empty(shape), _i32(x, shape if G.pool_mode(mode) == "max" else (0, 0))


def _caffe_pool2d_backward_fake(grad, argmax, kernel_size, stride, padding, mode, batch, channels, height, width):
    return grad.new_empty((batch, channels, height, width))


def _two_stream_fake(cls_logits, det_logits):
    _check_two_stream(cls_logits, det_logits, "mlic.wsddn_two_stream")
    n, _, c = cls_logits.shape
    return (cls_logits.new_empty((n, c)), torch.empty_like(cls_logits), torch.empty_like(cls_logits),
            torch.empty_like(cls_logits))


def _two_stream_backward_fake(grad_image, grad_region, cls_prob, det_prob):
    return torch.empty_like(cls_prob), torch.empty_like(det_prob)


FAKES = {
    "roi_spp": _roi_spp_fake, "roi_pool": _roi_pool_fake, "roi_spp_backward": _roi_spp_backward_fake,
    "spp": _spp_fake, "spp_backward": _spp_backward_fake, "caffe_pool2d": _caffe_pool2d_fake,
    "caffe_pool2d_backward": _caffe_pool2d_backward_fake, "wsddn_two_stream": _two_stream_fake,
    "wsddn_two_stream_backward": _two_stream_backward_fake,
}


# ---------------------------------------------------------------- autograd

def _autograd(ns):
    """The autograd formulas of namespace `ns`; each backward calls `ns`'s backward op."""
    ops = getattr(torch.ops, ns)

    def roi_setup(ctx, inputs, output):
        features, rois = inputs[0], inputs[1]
        ctx.save_for_backward(rois, output[1])
        ctx.in_shape = tuple(features.shape)
        ctx.args = inputs[2:]
        ctx.mark_non_differentiable(output[1])

    def roi_spp_backward(ctx, grad, _grad_argmax):
        rois, argmax = ctx.saved_tensors
        levels_h, levels_w, spatial_scale, score_scale, score_bias, deterministic = ctx.args
        g = ops.roi_spp_backward(grad.contiguous(), rois, argmax, levels_h, levels_w, *ctx.in_shape, spatial_scale,
                                 score_scale, score_bias, deterministic)
        return (g,) + (None,) * 7

    def roi_pool_backward(ctx, grad, _grad_argmax):
        rois, argmax = ctx.saved_tensors
        pooled_h, pooled_w, spatial_scale, score_scale, score_bias, deterministic = ctx.args
        k, cells = rois.shape[0], ctx.in_shape[1] * pooled_h * pooled_w
        g = ops.roi_spp_backward(grad.reshape(k, cells).contiguous(), rois, argmax.reshape(k, cells), [pooled_h],
                                 [pooled_w], *ctx.in_shape, spatial_scale, score_scale, score_bias, deterministic)
        return (g,) + (None,) * 7

    def pool_setup(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.in_shape = tuple(inputs[0].shape)
        ctx.args = inputs[1:]
        ctx.mark_non_differentiable(output[1])

    def spp_backward(ctx, grad, _grad_argmax):
        (argmax,) = ctx.saved_tensors
        pyramid_height, mode = ctx.args
        return ops.spp_backward(grad.contiguous(), argmax, pyramid_height, mode, *ctx.in_shape), None, None

    def caffe_pool2d_backward(ctx, grad, _grad_argmax):
        (argmax,) = ctx.saved_tensors
        kernel_size, stride, padding, mode = ctx.args
        g = ops.caffe_pool2d_backward(grad.contiguous(), argmax, kernel_size, stride, padding, mode, *ctx.in_shape)
        return g, None, None, None, None

    def two_stream_setup(ctx, inputs, output):
        ctx.save_for_backward(output[2], output[3])
        ctx.mark_non_differentiable(output[2], output[3])
        ctx.set_materialize_grads(False)  # an unused output costs no zero-filled gradient

    def two_stream_backward(ctx, grad_image, grad_region, _gpc, _gpd):
        if grad_image is None and grad_region is None:
            return None, None
        pc, pd = ctx.saved_tensors
        return tuple(ops.wsddn_two_stream_backward(grad_image, grad_region, pc, pd))

    return {
        "roi_spp": (roi_spp_backward, roi_setup), "roi_pool": (roi_pool_backward, roi_setup),
        "spp": (spp_backward, pool_setup), "caffe_pool2d": (caffe_pool2d_backward, pool_setup),
        "wsddn_two_stream": (two_stream_backward, two_stream_setup),
    }


def register(ns: str) -> None:
    for name, fake in FAKES.items():
        lib.register_fake(f"{ns}::{name}")(fake)
    for name, (backward, setup) in _autograd(ns).items():
        lib.register_autograd(f"{ns}::{name}", backward, setup_context=setup)


for _ns in NAMESPACES:
    register(_ns)
