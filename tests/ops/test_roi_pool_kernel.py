"""mlic.ops.roi_pool / roi_spp (compiled kernels) against the pure-PyTorch reference; the
argmax through the registered operators, which return it."""
import math
import os

import pytest
import torch

from mlic import ops as mops
from mlic.ops.reference import roi_pool_ref, roi_spp_ref
from tests.conftest import requires_cuda
from tests.ops.kernel_utils import (
    EMULATED_CUDA,
    FLOAT_DTYPES,
    HALF_DTYPES,
    KERNEL_DEVICES,
    assert_equal_int,
    assert_same,
    backend_of,
    device_or_skip,
    distinct_features,
    operators,
    random_rois,
    requires_ext,
)

pytestmark = requires_ext
ERRORS = (ValueError, RuntimeError, TypeError)
SCALES = [1.0, 0.5, 0.25, 1 / 16, 0.3]


def check(device, features, rois, ph, pw, scale=1.0, ss=1.0, sb=0.0, what=""):
    """The operator's output and argmax against the reference's; the public op returns that output."""
    out, arg = operators(device).roi_pool(features, rois, ph, pw, scale, ss, sb)
    ref_out, ref_arg = roi_pool_ref(features.detach().cpu(), rois.cpu(), ph, pw, scale, ss, sb)
    public = mops.roi_pool(features, rois, ph, pw, scale, ss, sb, backend=backend_of(device))
    assert torch.equal(public, out), what
    k, c = rois.shape[0], features.shape[1]
    assert out.shape == (k, c, ph, pw) and arg.shape == (k, c, ph, pw), what
    assert out.dtype == features.dtype and out.device == features.device, what
    assert arg.device == features.device, what
    assert_equal_int(arg, ref_arg, f"{what} argmax")
    assert_same(out, ref_out, what=f"{what} out")
    return out, arg


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_forward_random(device, dtype, seed):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(seed)
    n, c = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
    h, w = int(torch.randint(2, 13, (1,), generator=g)), int(torch.randint(2, 13, (1,), generator=g))
    ph, pw = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
    k = int(torch.randint(1, 12, (1,), generator=g))
    scale = SCALES[seed % len(SCALES)]
    f = distinct_features(n, c, h, w, g, dtype).to(dev)
    if seed % 2:
        f = torch.randn(n, c, h, w, generator=g, dtype=dtype).to(dev)  # real-valued, ties improbable
    rois = random_rois(k, n, h, w, scale, g, cols=6 if seed % 3 else 5, dtype=dtype, device=dev)
    ss, sb = float(torch.rand(1, generator=g)) * 3, float(torch.randn(1, generator=g))
    check(device, f, rois, ph, pw, scale, ss, sb, what=f"seed {seed}")


def _edge_cases():
    """(name, features, rois, ph, pw, spatial_scale, score_scale, score_bias) on CPU float64;
    every case is converted to the test's dtype/device."""
    g = torch.Generator().manual_seed(11)
    f = distinct_features(2, 3, 7, 9, g, torch.float64)
    cases = []
    # ".5" products at several scales: x * scale = m + 0.5, positive and negative
    for scale in (1.0, 0.5, 0.25, 1 / 16, 1 / 8):
        xs = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, 6.5]) / scale
        rois = torch.stack(
            [torch.zeros(7), xs, xs.roll(1), xs.roll(2) + 2 / scale, xs.roll(3) + 1 / scale, torch.full((7,), 0.7)], 1
        )
        cases.append((f"half-coordinates scale={scale}", f, rois, 2, 2, scale, 1.0, 0.0))
    # 0.49999997 is below one half in float32 (C round -> 0; floor(x + 0.5f) -> 1)
    cases.append(("just below one half", f, torch.tensor([[0, 0.49999997, 0.49999997, 2.4999998, 2.4999998, 1.0]]),
                  1, 1, 1.0, 1.0, 0.0))
    cases.append(("inverted boxes", f, torch.tensor([[0, 5, 4, 1, 1, 1.0], [1, 8, 6, 0, 6, 0.5], [1, 3, 6, 3, 0, 1.0]]),
                  2, 3, 1.0, 1.0, 0.0))
    cases.append(("outside boxes", f, torch.tensor([[0, 20, 20, 30, 30, 1.0], [1, -30, -30, -10, -10, 1.0],
                                                     [0, -5, 2, 3, 40, 1.0], [1, 8, 6, 100, 100, 2.0]]),
                  3, 3, 1.0, 1.0, 0.0))
    cases.append(("tiny boxes", f, torch.tensor([[0, 2, 2, 2, 2, 1.0], [1, 4, 1, 5, 1, 1.0], [0, 8, 6, 8, 6, 1.0]]),
                  3, 4, 1.0, 1.0, 0.0))
    cases.append(("more bins than pixels", f, torch.tensor([[0, 0, 0, 8, 6, 1.0], [1, 1, 1, 3, 2, 1.0]]),
                  7, 7, 1.0, 1.0, 0.0))
    tie = torch.full((2, 3, 7, 9), 0.25, dtype=torch.float64)
    tie[1, :, 3:, 4:] = 1.0  # a constant plateau
    cases.append(("ties (first maximum wins)", tie, torch.tensor([[0, 0, 0, 8, 6, 1.0], [1, 2, 1, 8, 6, 1.0],
                                                                   [1, 0, 0, 3, 3, 1.0]]),
                  3, 2, 1.0, 1.0, 0.0))
    cases.append(("empty bins from clipping", f, torch.tensor([[0, 6, 4, 14, 12, 1.0], [1, -7, -5, 1, 1, 1.0]]),
                  4, 4, 1.0, 1.0, 0.0))
    cases.append(("five columns", f, torch.tensor([[0, 1, 1, 6, 5], [1, 0, 2, 8, 6.0]]), 2, 2, 1.0, 2.0, 0.5))
    cases.append(("score scale and bias", f, torch.tensor([[0, 1, 1, 6, 5, 0.3], [1, 0, 2, 8, 6, -1.5]]),
                  2, 2, 1.0, 2.0, 0.5))
    cases.append(("fractional batch index truncates", f, torch.tensor([[-0.5, 1, 1, 6, 5, 1.0], [1.99, 0, 2, 8, 6, 1.0],
                                                                        [0.7, 0, 0, 8, 6, 1.0]]),
                  2, 2, 1.0, 1.0, 0.0))
    cases.append(("scale 1/16 like VGG", f, torch.tensor([[0, 0, 0, 143, 111, 0.9], [1, 17, 33, 96, 100, 0.2],
                                                          [1, 8, 8, 24, 24, 1.0]]),
                  7, 7, 1 / 16, 1.0, 0.0))
    return cases


EDGE = _edge_cases()


@pytest.mark.parametrize("case", EDGE, ids=[c[0] for c in EDGE])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_forward_edge_cases(device, dtype, case):
    dev = device_or_skip(device)
    name, f, rois, ph, pw, scale, ss, sb = case
    check(device, f.to(dev, dtype), rois.to(dev, dtype), ph, pw, scale, ss, sb, what=name)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_coordinates_use_the_features_precision(device):
    # 7.99999999 / 16 is just below 0.5 in float64 but exactly 0.5 in float32
    dev = device_or_skip(device)
    f = -torch.arange(4.0)[None, None, None]
    rois = torch.tensor([[0, 7.99999999, 0, 7.99999999, 0, 1.0]], dtype=torch.float64)
    _, a32 = operators(device).roi_pool(f.float().to(dev), rois.float().to(dev), 1, 1, spatial_scale=1 / 16)
    _, a64 = operators(device).roi_pool(f.double().to(dev), rois.to(dev), 1, 1, spatial_scale=1 / 16)
    assert a32.item() == 1 and a64.item() == 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_bins_where_nothing_beats_minus_flt_max_and_nan(device, dtype):
    # Caffe starts from -FLT_MAX (the float constant, also for double): such a bin keeps it, argmax -1
    dev = device_or_skip(device)
    f = torch.tensor([[[[-math.inf, -math.inf, 1.0], [math.nan, 2.0, 0.5]]]], device=dev, dtype=dtype)
    rois = torch.tensor([[0, 0, 0, 1, 0, 0.5], [0, 0, 1, 2, 1, 1.0]], device=dev, dtype=dtype)
    out, _ = check(device, f, rois, 1, 1, what="-inf and NaN")
    assert out[0].item() == -3.4028234663852886e38 * 0.5


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=requires_cuda), EMULATED_CUDA])
def test_forward_half_precision(device, dtype):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(5)
    # integers below 256 are exact in bfloat16 and float16: distinct values, exact argmax
    f = distinct_features(2, 4, 8, 10, g, torch.float32).round()
    rois = torch.tensor([[0, 0, 0, 159, 127, 0.5], [1, 16, 8, 80, 120, 1.0], [1, 40, 40, 40, 40, 0.25],
                         [0, -16, 24, 200, 56, 0.75]])
    out, arg = operators(device).roi_pool(f.to(dev, dtype), rois.to(dev, dtype), 3, 3, spatial_scale=1 / 16,
                                          score_scale=2.0)
    ref_out, ref_arg = roi_pool_ref(f.to(dtype).float(), rois.to(dtype).float(), 3, 3, 1 / 16, 2.0, 0.0)
    assert out.dtype == dtype
    assert_equal_int(arg, ref_arg, "argmax")
    assert_same(out, ref_out, dtype=dtype, what="out")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_noncontiguous_inputs(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(3)
    base = distinct_features(2, 5, 9, 8, g).to(dev)
    variants = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "permuted": base.permute(0, 1, 3, 2),  # a transposed plane
        "strided channels": torch.cat([base, base], 1)[:, ::2],
        "expanded batch": base[:1].expand(3, -1, -1, -1),
    }
    rois = random_rois(6, 2, 8, 8, 0.5, g).to(dev)
    rois_t = rois.t().contiguous().t()  # column-major
    wide = torch.zeros(rois.shape[0], 12, device=dev)
    wide[:, ::2] = rois
    rois_strided = wide[:, ::2]
    assert not rois_t.is_contiguous() and not rois_strided.is_contiguous()
    for name, f in variants.items():
        assert not f.is_contiguous()
        check(device, f, rois, 2, 3, 0.5, what=name)
    check(device, base, rois_t, 2, 3, 0.5, what="column-major rois")
    check(device, base, rois_strided, 2, 3, 0.5, what="strided rois")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_empty_rois(device, dtype):
    dev = device_or_skip(device)
    f = torch.randn(2, 3, 5, 5, dtype=dtype, device=dev, requires_grad=True)
    out, arg = operators(device).roi_pool(f, torch.zeros(0, 6, dtype=dtype, device=dev), 2, 4)
    assert out.shape == (0, 3, 2, 4) and arg.shape == (0, 3, 2, 4) and arg.dtype == torch.int32
    out.sum().backward()
    assert f.grad is not None and torch.all(f.grad == 0)
    out = mops.roi_spp(f, torch.zeros(0, 5, dtype=dtype, device=dev), [1, 2], backend=backend_of(device))
    assert out.shape == (0, 3 * 5)


# ----------------------------------------------------------------------------- backward


BACKWARDS = ["default", "deterministic", "atomic", "global-deterministic"]


def _grad_with(device, mode, f, rois, grad_out, *args, **kw):
    """The gradient of roi_pool with the backward `mode`: the default, deterministic=True or
    False, or the default under torch.use_deterministic_algorithms(True)."""
    f = f.detach().requires_grad_()
    flag = {"deterministic": {"deterministic": True}, "atomic": {"deterministic": False}}.get(mode, {})
    was = torch.are_deterministic_algorithms_enabled()
    if mode == "global-deterministic":
        torch.use_deterministic_algorithms(True)
    try:
        out = mops.roi_pool(f, rois, *args, **flag, **kw, backend=backend_of(device))
        (g,) = torch.autograd.grad(out, f, grad_out)
    finally:
        torch.use_deterministic_algorithms(was)
    return g


def _collision_rois(n, h, w, k, g, device, dtype):
    """Many overlapping RoIs (some identical, some with one-pixel boxes) so that many output
    cells send their gradient to the same input elements."""
    r = random_rois(k, n, h, w, 1.0, g, dtype=dtype)
    r[: k // 3, 1:5] = torch.tensor([0.0, 0.0, w - 1, h - 1], dtype=dtype)
    r[k // 3 : k // 2, 1:5] = torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=dtype)
    return r.to(device)


@pytest.mark.parametrize("mode", BACKWARDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_backward_matches_reference(device, dtype, mode):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(21)
    f = distinct_features(2, 3, 8, 9, g, dtype).to(dev)
    rois = _collision_rois(2, 8, 9, 18, g, dev, dtype)
    grad_out = torch.randn(18, 3, 3, 2, generator=g, dtype=dtype).to(dev)
    ours = _grad_with(device, mode, f, rois, grad_out, 3, 2, spatial_scale=1.0, score_scale=1.5, score_bias=0.25)
    fr = f.detach().cpu().requires_grad_()
    out, _ = roi_pool_ref(fr, rois.cpu(), 3, 2, 1.0, 1.5, 0.25)
    (want,) = torch.autograd.grad(out, fr, grad_out.cpu())
    assert ours.dtype == dtype and ours.device == f.device
    assert_same(ours, want, what=f"{mode} backward", grad=True)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_deterministic_backward_is_bitwise_reproducible(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(8)
    f = torch.randn(2, 16, 20, 20, generator=g).to(dev)
    rois = _collision_rois(2, 20, 20, 300, g, dev, torch.float32)
    grad_out = torch.randn(300, 16, 4, 4, generator=g).to(dev)
    for mode in ("deterministic", "global-deterministic"):
        a = _grad_with(device, mode, f, rois, grad_out, 4, 4)
        b = _grad_with(device, mode, f, rois, grad_out, 4, 4)
        assert torch.equal(a, b), f"{mode} backward differs between two runs"
    det = _grad_with(device, "deterministic", f, rois, grad_out, 4, 4)
    atomic = _grad_with(device, "atomic", f, rois, grad_out, 4, 4)
    assert_same(atomic, det, what="atomic vs deterministic", grad=True)


@pytest.mark.parametrize("device", [d for d in KERNEL_DEVICES if d != "cpu"])
def test_use_deterministic_algorithms_wins_over_deterministic_false(device):
    """One rule picks the backward of the CUDA back end: the deterministic gather when the
    call passes deterministic=True or torch.use_deterministic_algorithms(True) is in force as
    the backward runs; deterministic=False does not override the global mode. Seen through
    the gather's grid limit (at most 65,535 images), which the atomic backward has not."""
    dev = device_or_skip(device)
    f = torch.randn(65536, 1, 1, 1, device=dev, requires_grad=True)
    rois = torch.tensor([[3, 0, 0, 0, 0, 1.0]], device=dev)

    def grad(deterministic, global_mode):
        out = mops.roi_pool(f, rois, 1, 1, deterministic=deterministic, backend=backend_of(device))
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(global_mode)
        try:
            return torch.autograd.grad(out.sum(), f)[0]
        finally:
            torch.use_deterministic_algorithms(was)

    g = grad(False, False)  # the atomic backward
    assert g[3].item() == 1.0 and g.sum().item() == 1.0
    for deterministic, global_mode in ((True, False), (False, True), (True, True)):
        with pytest.raises(ValueError, match="the deterministic backward handles at most 65535 images"):
            grad(deterministic, global_mode)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_pool_gradcheck(device, deterministic):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(4)
    f = distinct_features(2, 2, 6, 7, g, torch.float64, spacing=0.01).to(dev).requires_grad_()
    rois = _collision_rois(2, 6, 7, 6, g, dev, torch.float64)
    rois[:, 5] = torch.rand(6, generator=g, dtype=torch.float64).to(dev)
    fn = lambda x: mops.roi_pool(x, rois, 2, 3, spatial_scale=1.0, score_scale=1.5, score_bias=0.5,  # noqa: E731
                                 deterministic=deterministic, backend=backend_of(device))
    assert torch.autograd.gradcheck(fn, (f,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_no_gradient_to_rois(device):
    dev = device_or_skip(device)
    f = torch.randn(1, 2, 5, 5, device=dev, requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 4, 4, 0.5]], device=dev, requires_grad=True)
    out = mops.roi_pool(f, rois, 2, 2, backend=backend_of(device))
    out.sum().backward()
    assert rois.grad is None or torch.all(rois.grad == 0)
    assert f.grad is not None and f.grad.abs().sum() > 0


@requires_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cpu_and_cuda_agree(dtype):
    device_or_skip("cuda")
    g = torch.Generator().manual_seed(13)
    f = torch.randn(3, 8, 15, 17, generator=g, dtype=dtype)
    rois = random_rois(40, 3, 15, 17, 1 / 16, g, dtype=dtype)
    grad_out = torch.randn(40, 8, 7, 7, generator=g, dtype=dtype)
    res = {}
    for dev in ("cpu", "cuda"):
        x = f.to(dev).requires_grad_()
        out, arg = mops.operators().roi_pool(x, rois.to(dev), 7, 7, spatial_scale=1 / 16, score_scale=2.0,
                                             score_bias=0.1)
        out.backward(grad_out.to(dev))
        res[dev] = (out.cpu(), arg.cpu(), x.grad.cpu())
    assert_equal_int(res["cuda"][1], res["cpu"][1], "argmax")
    assert_same(res["cuda"][0], res["cpu"][0], what="out")
    assert_same(res["cuda"][2], res["cpu"][2], what="grad", grad=True)


# ----------------------------------------------------------------------------- roi_spp


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_spp_forward_backward(device, dtype, seed):
    _roi_spp_case(device, dtype, seed, None)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_spp_backward_modes(device, deterministic):
    _roi_spp_case(device, torch.float32, 0, deterministic)


def _roi_spp_case(device, dtype, seed, deterministic):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(100 + seed)
    levels = [[1, 2, 3], [(2, 1), 1, (1, 3)], [4]][seed]
    f = distinct_features(2, 3, 9, 10, g, dtype).to(dev)
    rois = random_rois(7, 2, 9, 10, 0.5, g, cols=5 + (seed != 1), dtype=dtype, device=dev)
    fk = f.clone().requires_grad_()
    kw = {} if deterministic is None else {"deterministic": deterministic}
    hs, ws = mops.geometry.roi_levels(levels)
    out, arg = operators(device).roi_spp(fk, rois, hs, ws, spatial_scale=0.5, score_scale=1.5, score_bias=0.2, **kw)
    public = mops.roi_spp(f, rois, levels, 0.5, 1.5, 0.2, backend=backend_of(device))
    assert torch.equal(public, out.detach())
    fr = f.detach().cpu().requires_grad_()
    ref_out, ref_arg = roi_spp_ref(fr, rois.cpu(), levels, 0.5, 1.5, 0.2)
    assert_equal_int(arg, ref_arg, "argmax")
    assert_same(out, ref_out, what="out")
    grad_out = torch.randn(ref_out.shape, generator=g, dtype=dtype)
    out.backward(grad_out.to(dev))
    ref_out.backward(grad_out)
    assert_same(fk.grad, fr.grad, what="grad", grad=True)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_spp_gradcheck(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(9)
    f = distinct_features(1, 2, 6, 6, g, torch.float64, spacing=0.01).to(dev).requires_grad_()
    rois = torch.tensor([[0, 0, 0, 5, 5, 0.5], [0, 1, 2, 4, 3, 1.0]], dtype=torch.float64, device=dev)
    fn = lambda x: mops.roi_spp(x, rois, [1, 2, (3, 2)], score_scale=2.0, backend=backend_of(device))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_bad_inputs(device):
    dev = device_or_skip(device)
    f = torch.randn(2, 3, 6, 6, device=dev)
    good = torch.tensor([[1, 0, 0, 5, 5, 1.0]], device=dev)
    def rp(*args):
        return mops.roi_pool(*args, backend=backend_of(device))

    def spp(*args):
        return mops.roi_spp(*args, backend=backend_of(device))

    cases = [
        ("features", lambda: rp(f[0], good, 2, 2)),
        ("features", lambda: rp(f[None], good, 2, 2)),
        ("features", lambda: rp(f.long(), good, 2, 2)),
        ("rois", lambda: rp(f, good[0], 2, 2)),
        ("rois", lambda: rp(f, good[:, :4], 2, 2)),
        ("rois", lambda: rp(f, torch.cat([good, good[:, :1]], 1), 2, 2)),
        ("pooled_h", lambda: rp(f, good, 0, 2)),
        ("pooled_w", lambda: rp(f, good, 2, -1)),
    ]
    cases.append(("levels", lambda: spp(f, good, [])))
    cases.append(("levels", lambda: spp(f, good, [0])))
    for arg, call in cases:
        with pytest.raises(ERRORS, match=arg):
            call()


BAD_ROI_VALUES = [(0, -1.0), (0, 2.0), (0, 7.0), (0, -1e30), (0, 1e30), (0, math.nan), (0, math.inf), (1, math.nan),
                  (3, -math.inf), (2, 1e12), (5, math.nan)]


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_bad_roi_values(device):
    """The CPU back end checks RoI values (it reads them on the host anyway). The CUDA back
    ends never copy them to the host: a RoI of another image or with non-finite or huge
    coordinates pools an empty or clipped region (no out-of-bounds access). The switch that
    makes them check too: tests/robustness/test_ops.py."""
    if os.environ.get("MLIC_CHECK_ROI_VALUES", "0") not in ("", "0"):
        pytest.skip("MLIC_CHECK_ROI_VALUES is set for this process: the CUDA back ends check RoI values")
    dev = device_or_skip(device)
    f = torch.randn(2, 3, 6, 6, device=dev)
    good = torch.tensor([[1, 0, 0, 5, 5, 1.0]], device=dev)
    op = operators(device)
    for col, v in BAD_ROI_VALUES:
        bad = good.clone()
        bad[0, col] = v
        calls = [lambda: op.roi_pool(f, bad, 2, 2), lambda: op.roi_spp(f, bad, [1, 2], [1, 2])]
        for call in calls:
            if dev.type == "cpu" and device != EMULATED_CUDA:
                with pytest.raises(ValueError, match="`rois` row 0"):
                    call()
                continue
            out, arg = call()
            if col == 0:  # not an image of the batch: nothing pooled
                assert torch.all(out == 0) and torch.all(arg == -1), (col, v)
            else:
                assert torch.all((arg >= -1) & (arg < 36)), (col, v)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_rois_of_another_dtype(device):
    """float64 rois with float32 features: either refused naming rois, or used as float32 values."""
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(2)
    f = distinct_features(1, 2, 6, 6, g).to(dev)
    rois = torch.tensor([[0, 0.5, 1.5, 4.5, 5.5, 0.5]], dtype=torch.float64, device=dev)
    try:
        out, arg = operators(device).roi_pool(f, rois, 2, 2)
    except ERRORS as e:
        assert "rois" in str(e)
        return
    ref_out, ref_arg = roi_pool_ref(f.cpu(), rois.float().cpu(), 2, 2)
    assert_equal_int(arg, ref_arg, "argmax")
    assert_same(out, ref_out, what="out")


@requires_cuda
def test_device_mismatch():
    device_or_skip("cuda")
    f = torch.randn(1, 2, 5, 5, device="cuda")
    rois = torch.tensor([[0, 0, 0, 4, 4, 1.0]])
    with pytest.raises(ERRORS, match="rois|device"):
        mops.roi_pool(f, rois, 2, 2)
