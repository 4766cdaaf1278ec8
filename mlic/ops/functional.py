"""Tensor functions with Caffe's exact semantics (SPEC section 3) that the Caffe layers
(mlic.caffe) and the ports (prototxt_ports) both run: the losses, Interp and Softmax in
plain PyTorch, and Caffe's Pooling (PyTorch's pooling where it gives Caffe's result, the
compiled caffe_pool2d otherwise).

The loss functions are autograd Functions because Caffe's gradients are not always the
derivative of the value it reports (CrossEntropyLoss keeps its gradient where the value
is clamped). ``grad_output`` of a loss is Caffe's top diff, i.e. the loss weight.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mlic.ops import caffe_pool2d, geometry

CE_EPS = 1e-4  # the authors' CrossEntropyLoss clamp


def _num(x: torch.Tensor) -> int:
    return x.shape[0] if x.dim() > 0 else 1


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.numel() != b.numel():
        raise ValueError(
            f"{what}: the two inputs must have the same count, got {tuple(a.shape)} ({a.numel()}) "
            f"and {tuple(b.shape)} ({b.numel()})"
        )


class _CrossEntropyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, t):
        num = _num(p)
        pf, tf = p.reshape(-1), t.reshape(-1).to(p.dtype)
        eps = torch.tensor(CE_EPS, dtype=p.dtype, device=p.device)
        term = torch.where(tf == 1, torch.log(torch.maximum(pf, eps)), torch.log(torch.maximum(1 - pf, eps)))
        ctx.save_for_backward(p, t)
        return -term.sum() / num

    @staticmethod
    def backward(ctx, g):
        p, t = ctx.saved_tensors
        num = _num(p)
        tf = t.to(p.dtype).reshape(p.shape)
        eps = torch.tensor(CE_EPS, dtype=p.dtype, device=p.device)
        # dp = -(1/num) (t / max(p, eps) + (1 - t) / min(p - 1, -eps)), times the top diff
        d = tf / torch.maximum(p, eps) + (1 - tf) / torch.minimum(p - 1, -eps)
        return d * (-g / num), None


def cross_entropy_loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The authors' CrossEntropyLoss on probabilities p and targets t (scalar, / num)."""
    _check_pair(p, t, "CrossEntropyLoss")
    return _CrossEntropyLoss.apply(p, t.detach())


class _SigmoidCrossEntropyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, norm):
        tf = t.to(x.dtype).reshape(x.shape)
        pos = (x >= 0).to(x.dtype)
        term = x * (tf - pos) - torch.log(1 + torch.exp(x - 2 * x * pos))
        ctx.save_for_backward(x, t)
        ctx.norm = norm
        return -term.sum() / norm

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        return (torch.sigmoid(x) - t.to(x.dtype).reshape(x.shape)) * (g / ctx.norm), None, None


def sigmoid_cross_entropy_loss(x: torch.Tensor, t: torch.Tensor, norm=None) -> torch.Tensor:
    """Caffe's SigmoidCrossEntropyLoss (soft targets allowed), divided by `norm`
    (default: num, the first dimension, as in the authors' Caffe)."""
    _check_pair(x, t, "SigmoidCrossEntropyLoss")
    if norm is None:
        norm = _num(x)
    return _SigmoidCrossEntropyLoss.apply(x, t.detach(), float(norm))


class _EuclideanLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        d = a - b.reshape(a.shape)
        ctx.save_for_backward(d)
        ctx.b_shape = b.shape
        return (d * d).sum() / _num(a) / 2

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        ga = d * (g / _num(d))
        return ga, (-ga).reshape(ctx.b_shape)


def euclidean_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum((a - b)^2) / (2 num); gradients (a - b)/num and -(a - b)/num."""
    _check_pair(a, b, "EuclideanLoss")
    return _EuclideanLoss.apply(a, b)


# ----------------------------------------------------------------------------- Interp


def _interp_weights(size_in: int, size_out: int):
    """Per output index: (i0, i1, lambda0, lambda1) as Caffe's caffe_cpu_interp2 computes
    them, in float32."""
    if size_out > 1:
        r = np.float32(size_in - 1) / np.float32(size_out - 1)
    else:
        r = np.float32(0.0)
    src = (r * np.arange(size_out, dtype=np.float32)).astype(np.float32)  # float * int in float32
    i0 = src.astype(np.int64)  # truncation; src >= 0
    step = (i0 < size_in - 1).astype(np.int64)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    l0 = (np.float32(1.0) - l1).astype(np.float32)
    return i0, i0 + step, l0, l1


def caffe_interp(x: torch.Tensor, out_h: int, out_w: int, crop=None) -> torch.Tensor:
    """Bilinear resize with aligned corners (src = dst * (in-1)/(out-1), 0 when out == 1),
    weights in float32 like Caffe's Interp layer. `crop` = (y0, x0, h, w) selects the
    effective input (negative pad_beg/pad_end). Differentiable (autograd adjoint)."""
    if x.dim() != 4:
        raise ValueError(f"Interp expects a 4-D N x C x H x W input, got shape {tuple(x.shape)}")
    if crop is not None:
        y0, x0, h, w = crop
        x = x[:, :, y0 : y0 + h, x0 : x0 + w]
    h_in, w_in = x.shape[2], x.shape[3]
    if out_h < 1 or out_w < 1 or h_in < 1 or w_in < 1:
        raise ValueError(f"Interp: sizes must be positive, input {h_in}x{w_in} -> output {out_h}x{out_w}")
    if (h_in, w_in) == (out_h, out_w):
        return x.clone() if crop is None else x.contiguous()
    dev = x.device
    h0, h1, hl0, hl1 = _interp_weights(h_in, out_h)
    w0, w1, wl0, wl1 = _interp_weights(w_in, out_w)
    cd = x.dtype if x.dtype == torch.float64 else torch.float32

    def t(a, dtype):
        return torch.from_numpy(a).to(device=dev, dtype=dtype)

    # each corner gathered in one pass over the flattened planes (row, then column
    # selects copied whole rows first)
    n, ch = x.shape[0], x.shape[1]
    planes = x.reshape(n * ch, h_in * w_in)
    r0, r1 = t(h0 * w_in, torch.long).view(-1, 1), t(h1 * w_in, torch.long).view(-1, 1)
    c0, c1 = t(w0, torch.long).view(1, -1), t(w1, torch.long).view(1, -1)

    def corner(r, c):
        return planes.index_select(1, (r + c).reshape(-1)).view(n, ch, out_h, out_w)

    a, b, c, d = corner(r0, c0), corner(r0, c1), corner(r1, c0), corner(r1, c1)
    lw0 = t(wl0, cd).to(x.dtype).view(1, 1, 1, -1)
    lw1 = t(wl1, cd).to(x.dtype).view(1, 1, 1, -1)
    lh0 = t(hl0, cd).to(x.dtype).view(1, 1, -1, 1)
    lh1 = t(hl1, cd).to(x.dtype).view(1, 1, -1, 1)
    # h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d), the order of Caffe's expression
    return lh0 * (lw0 * a + lw1 * b) + lh1 * (lw0 * c + lw1 * d)


def interp_output_size(h_in: int, w_in: int, *, height=None, width=None, zoom_factor=None,
                       shrink_factor=None, pad_beg: int = 0, pad_end: int = 0):
    """Caffe Interp's output size rule; returns (h_eff, w_eff, out_h, out_w)."""
    h_eff = h_in + pad_beg + pad_end
    w_eff = w_in + pad_beg + pad_end
    if shrink_factor is not None and zoom_factor is None:
        if shrink_factor < 1:
            raise ValueError("shrink_factor must be >= 1")
        return h_eff, w_eff, (h_eff - 1) // shrink_factor + 1, (w_eff - 1) // shrink_factor + 1
    if zoom_factor is not None and shrink_factor is None:
        if zoom_factor < 1:
            raise ValueError("zoom_factor must be >= 1")
        return h_eff, w_eff, h_eff + (h_eff - 1) * (zoom_factor - 1), w_eff + (w_eff - 1) * (zoom_factor - 1)
    if height is not None and width is not None:
        return h_eff, w_eff, height, width
    if shrink_factor is not None and zoom_factor is not None:
        if shrink_factor < 1 or zoom_factor < 1:
            raise ValueError("shrink_factor and zoom_factor must be >= 1")
        oh = (h_eff - 1) // shrink_factor + 1
        ow = (w_eff - 1) // shrink_factor + 1
        return h_eff, w_eff, oh + (oh - 1) * (zoom_factor - 1), ow + (ow - 1) * (zoom_factor - 1)
    raise ValueError("Interp needs height and width, zoom_factor, or shrink_factor")


# ----------------------------------------------------------------------------- Softmax


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        # Caffe: subtract the max, exp, sum, divide. exp and the sum in double, rounded
        # once, track libm's expf and a double-accumulating BLAS more closely than the
        # vectorised float kernels
        z = x - x.amax(dim=dim, keepdim=True)
        if x.dtype == torch.float32:
            e = torch.exp(z.double()).float()
            y = e / e.double().sum(dim=dim, keepdim=True).float()
        else:
            e = torch.exp(z)
            y = e / e.sum(dim=dim, keepdim=True)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        # Caffe: (top_diff - dot(top_diff, top_data)) * top_data; subtracting before the
        # product keeps the cancellation exact where top_diff is large and nearly uniform
        s = (g.double() * y.double()).sum(dim=ctx.dim, keepdim=True).to(g.dtype)
        return (g - s) * y, None


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max-subtracted softmax along `dim` with Caffe's backward formula."""
    return _Softmax.apply(x, dim)


def relu_max_pool(x: torch.Tensor, max_pool) -> torch.Tensor:
    """ReLU then `max_pool`, computed as the pool then ReLU in place: a quarter of the
    elements for a 2x2 pool, and the same bits. Max pooling and ReLU commute, values and
    gradients alike: a window's first maximum is the same element where it is positive,
    and where it is not, ReLU passes no gradient either way."""
    return F.relu_(max_pool(x))


def caffe_pooling(x: torch.Tensor, kernel_size, stride, pad, mode: str = "max", *,
                  backend: str = "auto") -> torch.Tensor:
    """Caffe's Pooling layer on x [N, C, H, W]: F.max_pool2d / F.avg_pool2d where they give
    Caffe's result (geometry.torch_pool_matches_caffe), mlic.ops.caffe_pool2d on `backend`
    otherwise."""
    kernel_size, stride, pad = (geometry.pair(kernel_size, "kernel_size"), geometry.pair(stride, "stride"),
                                geometry.pair(pad, "pad"))
    mode = geometry.pool_mode(mode)
    if x.dim() == 4 and geometry.torch_pool_matches_caffe(x.shape[2], x.shape[3], kernel_size, stride, pad):
        if mode == "max":
            return F.max_pool2d(x, kernel_size, stride, pad, ceil_mode=True)
        return F.avg_pool2d(x, kernel_size, stride, pad, ceil_mode=True, count_include_pad=True)
    return caffe_pool2d(x, kernel_size, stride, pad, mode, backend=backend)
