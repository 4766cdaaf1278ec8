"""mlic.ops.caffe_pool2d / spp (compiled kernels) against the pure-PyTorch reference."""
import math

import pytest
import torch

from mlic import ops as mops
from mlic.ops.reference import caffe_pool2d_ref, spp_ref
from tests.conftest import requires_cuda
from tests.ops.kernel_utils import (
    EMULATED_CUDA,
    FLOAT_DTYPES,
    HALF_DTYPES,
    KERNEL_DEVICES,
    assert_same,
    backend_of,
    device_or_skip,
    distinct_features,
    requires_ext,
)

pytestmark = requires_ext
ERRORS = (ValueError, RuntimeError, TypeError)
MODES = ["max", "ave"]


def _features(shape, g, dtype, mode, spacing=1.0):
    if mode == "max":
        return distinct_features(*shape, g, dtype, spacing=spacing)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _compare(fn, fn_ref, x, g, what, dtype=None):
    xk = x.clone().requires_grad_()
    out = fn(xk)
    xr = x.detach().cpu().to(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
    xr.requires_grad_()
    ref = fn_ref(xr)
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == x.dtype and out.device == x.device
    assert_same(out, ref, dtype=dtype, what=f"{what} forward")
    grad_out = torch.randn(ref.shape, generator=g, dtype=xr.dtype)
    out.backward(grad_out.to(out.device, out.dtype))
    ref.backward(grad_out)
    assert_same(xk.grad, xr.grad, dtype=dtype, what=f"{what} backward", grad=True)


# (H, W, kernel, stride, pad): Caffe's ceil rule, the pad correction (also along the dimension
# without pad), kernel < stride, rectangular parameters
POOL_CASES = [
    (13, 17, 3, 2, 1),
    (13, 17, 2, 2, 0),
    (5, 5, 2, 2, 1),
    (6, 6, 3, 3, 1),
    (7, 9, (3, 2), (2, 1), (1, 0)),
    (8, 11, (2, 4), (3, 2), (0, 1)),
    (5, 5, (1, 2), (3, 3), (0, 1)),
    (9, 7, 4, 3, 2),
    (1, 1, 1, 1, 0),
    (4, 6, 5, 1, 2),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[str(c) for c in POOL_CASES])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_caffe_pool2d(device, dtype, mode, case):
    dev, be = device_or_skip(device), backend_of(device)
    h, w, k, s, p = case
    g = torch.Generator().manual_seed(h * 31 + w)
    x = _features((2, 3, h, w), g, dtype, mode).to(dev)
    _compare(lambda t: mops.caffe_pool2d(t, k, s, p, mode, backend=be), lambda t: caffe_pool2d_ref(t, k, s, p, mode),
             x, g, f"pool {case} {mode}")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_pad_correction_applies_to_both_dims(device):
    # Caffe: `if (pad_h_ || pad_w_)` drops a last window starting in the padding along BOTH
    # dimensions; along h (k=1, s=3, no pad) 5 -> ceil(4/3)+1 = 3 windows, the last at row 6 -> 2
    dev, be = device_or_skip(device), backend_of(device)
    x = torch.randn(1, 1, 5, 5, device=dev)
    assert mops.caffe_pool2d(x, (1, 2), (3, 3), (0, 1), "max", backend=be).shape == (1, 1, 2, 2)
    assert mops.caffe_pool2d(x, (1, 2), (3, 3), (0, 0), "max", backend=be).shape == (1, 1, 3, 2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_caffe_pool2d_random(device, seed):
    dev, be = device_or_skip(device), backend_of(device)
    g = torch.Generator().manual_seed(seed)
    ri = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    k = (ri(1, 5), ri(1, 5))
    s = (ri(1, 4), ri(1, 4))
    p = (ri(0, k[0]), ri(0, k[1]))
    h, w = ri(max(1, k[0] - 2 * p[0]), 14), ri(max(1, k[1] - 2 * p[1]), 14)
    for mode in MODES:
        x = _features((1, 2, h, w), g, torch.float64, mode).to(dev)
        _compare(lambda t: mops.caffe_pool2d(t, k, s, p, mode, backend=be),
                 lambda t: caffe_pool2d_ref(t, k, s, p, mode), x, g, f"pool {(h, w, k, s, p)} {mode}")


# (H, W, pyramid_height): spp_only's shape (pad 3 with kernel 4), odd sizes, one level, 1x1 input
SPP_CASES = [(26, 30, 4), (13, 17, 3), (8, 19, 3), (7, 7, 1), (1, 1, 1), (16, 16, 5), (21, 9, 3), (42, 42, 3)]


@pytest.mark.parametrize("case", SPP_CASES, ids=[str(c) for c in SPP_CASES])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_spp(device, dtype, mode, case):
    dev, be = device_or_skip(device), backend_of(device)
    h, w, levels = case
    g = torch.Generator().manual_seed(h * 7 + w)
    x = _features((2, 3, h, w), g, dtype, mode).to(dev)
    _compare(lambda t: mops.spp(t, levels, mode, backend=be), lambda t: spp_ref(t, levels, mode), x, g,
             f"spp {case} {mode}")


@pytest.mark.parametrize("mode", MODES)
def test_spp_cpu_plane_groups_give_single_plane_bits(mode):
    """The CPU forward reduces several planes at once (interleaved); each plane must get
    exactly the bits it gets alone (one plane per call), and match the reference."""
    g = torch.Generator().manual_seed(21)
    x = _features((3, 7, 26, 30), g, torch.float32, mode)
    whole = mops.spp(x, 4, mode)
    torch.testing.assert_close(whole, spp_ref(x, 4, mode), rtol=1e-6, atol=1e-6)
    cells = [1, 4, 16, 64]  # 26x30 in 1, 2, 4, 8 bins a side
    n_planes, channels = 0, x.shape[1]
    for n in range(x.shape[0]):
        for c in range(channels):
            alone = mops.spp(x[n:n + 1, c:c + 1].contiguous(), 4, mode)[0]
            parts, start = [], 0
            for k in cells:
                parts.append(whole[n, channels * start + c * k: channels * start + (c + 1) * k])
                start += k
            assert torch.equal(torch.cat(parts), alone), f"plane ({n}, {c})"
            n_planes += 1
    assert n_planes == 21


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_noncontiguous(device, mode):
    dev, be = device_or_skip(device), backend_of(device)
    g = torch.Generator().manual_seed(1)
    x = _features((2, 4, 11, 9), g, torch.float32, mode).to(dev)
    for name, v in {
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "transposed": x.transpose(2, 3),
        "strided": torch.cat([x, x], 1)[:, ::2],
    }.items():
        assert not v.is_contiguous()
        _compare(lambda t: mops.spp(t, 3, mode, backend=be), lambda t: spp_ref(t, 3, mode), v, g, f"spp {name}")
        _compare(lambda t: mops.caffe_pool2d(t, 3, 2, 1, mode, backend=be),
                 lambda t: caffe_pool2d_ref(t, 3, 2, 1, mode), v, g, f"pool {name}")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=requires_cuda), EMULATED_CUDA])
def test_half_precision(device, mode, dtype):
    dev, be = device_or_skip(device), backend_of(device)
    g = torch.Generator().manual_seed(3)
    x = distinct_features(2, 3, 10, 12, g, torch.float32).round().to(dtype).to(dev)  # exact small integers
    _compare(lambda t: mops.spp(t, 3, mode, backend=be), lambda t: spp_ref(t, 3, mode), x, g, "spp", dtype=dtype)
    _compare(lambda t: mops.caffe_pool2d(t, 3, 2, 1, mode, backend=be), lambda t: caffe_pool2d_ref(t, 3, 2, 1, mode),
             x, g, "pool", dtype=dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_gradcheck(device, mode):
    dev, be = device_or_skip(device), backend_of(device)
    g = torch.Generator().manual_seed(5)
    x = _features((1, 2, 7, 9), g, torch.float64, mode, spacing=0.01).to(dev).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: mops.spp(t, 3, mode, backend=be), (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda t: mops.caffe_pool2d(t, 3, 2, 1, mode, backend=be), (x,), eps=1e-6,
                                    atol=1e-6)
    assert torch.autograd.gradcheck(lambda t: mops.caffe_pool2d(t, (2, 3), (1, 2), (0, 1), mode, backend=be),
                                    (x,), eps=1e-6, atol=1e-6)


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
def test_cpu_and_cuda_agree(mode):
    device_or_skip("cuda")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 16, 42, 42, generator=g)
    grad_spp = torch.randn(4, 16 * 21, generator=g)
    res = {}
    for dev in ("cpu", "cuda"):
        t = x.to(dev).requires_grad_()
        out = mops.spp(t, 3, mode)
        out.backward(grad_spp.to(dev))
        res[dev] = (out.cpu(), t.grad.cpu())
    assert_same(res["cuda"][0], res["cpu"][0], what="spp forward")
    assert_same(res["cuda"][1], res["cpu"][1], what="spp backward", grad=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_windows_where_nothing_beats_minus_flt_max(device, dtype):
    dev, be = device_or_skip(device), backend_of(device)
    x = torch.full((1, 1, 4, 4), -math.inf, dtype=dtype, device=dev)
    x[0, 0, 0, 0] = math.nan
    x[0, 0, 3, 0] = 1.0
    for out, ref in [(mops.caffe_pool2d(x, 2, 2, 0, "max", backend=be),
                      caffe_pool2d_ref(x.cpu(), 2, 2, 0, "max")),
                     (mops.spp(x, 2, "max", backend=be), spp_ref(x.cpu(), 2, "max"))]:
        assert_same(out, ref, what="max pooling over -inf and NaN")
        assert (out == -3.4028234663852886e38).sum() == (ref == -3.4028234663852886e38).sum() > 0


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_bad_inputs(device):
    dev, be = device_or_skip(device), backend_of(device)
    x = torch.randn(1, 2, 8, 19, device=dev)
    cases = [
        ("level 3", lambda: mops.spp(x, 4, backend=be)),  # W=19: kernel 3, pad 3 at level 3 (Caffe refuses)
        ("pyramid_height", lambda: mops.spp(x, 0, backend=be)),
        ("mode", lambda: mops.spp(x, 2, "min", backend=be)),
        ("x|input", lambda: mops.spp(x[0], 2, backend=be)),
        ("x|input", lambda: mops.spp(x.long(), 2, backend=be)),
        ("pad", lambda: mops.caffe_pool2d(x, 2, 1, 2, backend=be)),
        ("stride", lambda: mops.caffe_pool2d(x, 2, 0, 0, backend=be)),
        ("kernel", lambda: mops.caffe_pool2d(x, 0, 1, 0, backend=be)),
        ("mode", lambda: mops.caffe_pool2d(x, 2, 1, 0, "median", backend=be)),
        ("x|input", lambda: mops.caffe_pool2d(x[0, 0], 2, 1, 0, backend=be)),
    ]
    for arg, call in cases:
        with pytest.raises(ERRORS, match=arg):
            call()
