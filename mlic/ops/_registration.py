"""Python-side registrations for the ops defined by mlic._C (schemas live in C++):
fake kernels for torch.compile, autograd formulas, and - when the extension was built
without CUDA - the NVRTC runtime implementation for CUDA tensors."""
import torch

from mlic.ops import _shapes as S

lib = torch.library


def _i32(t, shape):
    return t.new_empty(shape, dtype=torch.int32)


# ---------------------------------------------------------------- fake kernels

@lib.register_fake("mlic::roi_spp")
def _roi_spp_fake(features, rois, levels_h, levels_w, spatial_scale=1.0, score_scale=1.0, score_bias=0.0,
                  deterministic=False):
    S.check_roi_inputs(features, rois, "mlic.roi_spp")
    hs, ws = S.roi_levels(list(zip(levels_h, levels_w)))
    shape = (rois.shape[0], features.shape[1] * sum(h * w for h, w in zip(hs, ws)))
    return features.new_empty(shape), _i32(features, shape)


@lib.register_fake("mlic::roi_pool")
def _roi_pool_fake(features, rois, pooled_h, pooled_w, spatial_scale=1.0, score_scale=1.0, score_bias=0.0,
                   deterministic=False):
    S.check_roi_inputs(features, rois, "mlic.roi_pool")
    if pooled_h <= 0 or pooled_w <= 0:
        raise ValueError(f"mlic.roi_pool: `pooled_h` and `pooled_w` must be positive, got {pooled_h}, {pooled_w}")
    shape = (rois.shape[0], features.shape[1], pooled_h, pooled_w)
    return features.new_empty(shape), _i32(features, shape)


@lib.register_fake("mlic::roi_spp_backward")
def _roi_spp_backward_fake(grad, rois, argmax, levels_h, levels_w, batch, channels, height, width, spatial_scale,
                           score_scale, score_bias, deterministic):
    return grad.new_empty((batch, channels, height, width))


def _pool_out(x, params, mode):
    n, c = x.shape[0], x.shape[1]
    cells = sum(p[6] * p[7] for p in params)
    am_shape = (n, c * cells) if S.pool_mode(mode) == 0 else (0, 0)
    return x.new_empty((n, c * cells)), _i32(x, am_shape)


@lib.register_fake("mlic::spp")
def _spp_fake(x, pyramid_height, mode="max"):
    S.check_x4(x, "mlic.spp")
    return _pool_out(x, S.spp_level_params(x.shape[2], x.shape[3], pyramid_height), mode)


@lib.register_fake("mlic::spp_backward")
def _spp_backward_fake(grad, argmax, pyramid_height, mode, batch, channels, height, width):
    return grad.new_empty((batch, channels, height, width))


@lib.register_fake("mlic::caffe_pool2d")
def _caffe_pool2d_fake(x, kernel_size, stride, padding, mode="max"):
    S.check_x4(x, "mlic.caffe_pool2d")
    (p,) = S.pool2d_level_params(x.shape[2], x.shape[3], kernel_size, stride, padding)
    shape = (x.shape[0], x.shape[1], p[6], p[7])
    am_shape = shape if S.pool_mode(mode) == 0 else (0, 0)
    return x.new_empty(shape), _i32(x, am_shape)


@lib.register_fake("mlic::caffe_pool2d_backward")
def _caffe_pool2d_backward_fake(grad, argmax, kernel_size, stride, padding, mode, batch, channels, height, width):
    return grad.new_empty((batch, channels, height, width))


@lib.register_fake("mlic::wsddn_two_stream")
def _two_stream_fake(cls_logits, det_logits):
    S.check_two_stream(cls_logits, det_logits, "mlic.wsddn_two_stream")
    n, _, c = cls_logits.shape
    return (cls_logits.new_empty((n, c)), torch.empty_like(cls_logits), torch.empty_like(cls_logits),
            torch.empty_like(cls_logits))


@lib.register_fake("mlic::wsddn_two_stream_backward")
def _two_stream_backward_fake(grad_image, grad_region, cls_prob, det_prob):
    return torch.empty_like(cls_prob), torch.empty_like(det_prob)


# ---------------------------------------------------------------- autograd

def _roi_setup(ctx, inputs, output):
    features, rois = inputs[0], inputs[1]
    ctx.save_for_backward(rois, output[1])
    ctx.in_shape = tuple(features.shape)
    ctx.args = inputs[2:]
    ctx.mark_non_differentiable(output[1])


def _roi_spp_backward(ctx, grad, _grad_argmax):
    rois, argmax = ctx.saved_tensors
    levels_h, levels_w, spatial_scale, score_scale, score_bias, deterministic = ctx.args
    g = torch.ops.mlic.roi_spp_backward(grad.contiguous(), rois, argmax, levels_h, levels_w, *ctx.in_shape,
                                        spatial_scale, score_scale, score_bias, deterministic)
    return (g,) + (None,) * 7


def _roi_pool_backward(ctx, grad, _grad_argmax):
    rois, argmax = ctx.saved_tensors
    pooled_h, pooled_w, spatial_scale, score_scale, score_bias, deterministic = ctx.args
    k, cells = rois.shape[0], ctx.in_shape[1] * pooled_h * pooled_w
    g = torch.ops.mlic.roi_spp_backward(grad.reshape(k, cells).contiguous(), rois, argmax.reshape(k, cells), [pooled_h],
                                        [pooled_w], *ctx.in_shape, spatial_scale, score_scale, score_bias,
                                        deterministic)
    return (g,) + (None,) * 7


lib.register_autograd("mlic::roi_spp", _roi_spp_backward, setup_context=_roi_setup)
lib.register_autograd("mlic::roi_pool", _roi_pool_backward, setup_context=_roi_setup)


def _pool_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.in_shape = tuple(inputs[0].shape)
    ctx.args = inputs[1:]
    ctx.mark_non_differentiable(output[1])


def _spp_backward(ctx, grad, _grad_argmax):
    (argmax,) = ctx.saved_tensors
    pyramid_height, mode = ctx.args
    return torch.ops.mlic.spp_backward(grad.contiguous(), argmax, pyramid_height, mode, *ctx.in_shape), None, None


def _caffe_pool2d_backward(ctx, grad, _grad_argmax):
    (argmax,) = ctx.saved_tensors
    kernel_size, stride, padding, mode = ctx.args
    g = torch.ops.mlic.caffe_pool2d_backward(grad.contiguous(), argmax, kernel_size, stride, padding, mode,
                                             *ctx.in_shape)
    return g, None, None, None, None


lib.register_autograd("mlic::spp", _spp_backward, setup_context=_pool_setup)
lib.register_autograd("mlic::caffe_pool2d", _caffe_pool2d_backward, setup_context=_pool_setup)

# wsddn_two_stream has its autograd kernel in C++ (csrc/mlic.cpp): its fixed cost matters.
