"""The ops on channels_last inputs (what the ports' conv bodies produce), on every back end:
the same values, argmax and gradients as on N x C x H x W inputs, bit for bit, and Caffe's
rule that a window's first maximum in row-major order wins, also among ties."""
import pytest
import torch

from mlic.ops.reference import caffe_pool2d_ref, roi_pool_ref, roi_spp_ref, spp_ref
from tests.ops.kernel_utils import (
    KERNEL_DEVICES, assert_equal_int, device_or_skip, operators, random_rois, requires_ext,
)

pytestmark = requires_ext


def tied_features(n, c, h, w, gen, dtype=torch.float32):
    """Few distinct values: most windows hold several equal maxima."""
    return torch.randint(0, 3, (n, c, h, w), generator=gen).to(dtype)


def _both_layouts(fn, x, grad_seed=5):
    """fn's outputs and the input gradient for x as N x C x H x W and as channels_last."""
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        xi = x.detach().clone().contiguous(memory_format=layout).requires_grad_()
        assert xi.is_contiguous(memory_format=layout)
        out = fn(xi)
        outs = out if isinstance(out, tuple) else (out,)
        g = torch.Generator().manual_seed(grad_seed)
        grad = torch.randn(outs[0].shape, generator=g, dtype=torch.float64).to(outs[0].dtype).to(outs[0].device)
        outs[0].backward(grad)
        results.append(([o.detach().cpu() for o in outs], xi.grad.detach().cpu().contiguous()))
    return results


def _assert_identical(results, what):
    (outs_a, grad_a), (outs_b, grad_b) = results
    for i, (a, b) in enumerate(zip(outs_a, outs_b)):
        assert torch.equal(a, b), f"{what}: output {i} differs between layouts"
    assert torch.equal(grad_a, grad_b), f"{what}: the input gradient differs between layouts"


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_pool_channels_last(device, ties):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(3)
    n, c, h, w = 2, 5, 9, 11
    x = tied_features(n, c, h, w, g) if ties else torch.randn(n, c, h, w, generator=g)
    rois = random_rois(12, n, h, w, 0.5, g, cols=6, device=dev)
    res = _both_layouts(lambda f: operators(device).roi_pool(f, rois, 3, 2, spatial_scale=0.5, score_scale=2.0,
                                                             score_bias=0.5), x.to(dev))
    _assert_identical(res, "roi_pool")
    ref_out, ref_arg = roi_pool_ref(x, rois.cpu(), 3, 2, 0.5, 2.0, 0.5)
    assert torch.equal(res[1][0][0], ref_out.to(res[1][0][0].dtype))
    assert_equal_int(res[1][0][1], ref_arg, "roi_pool argmax on channels_last")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_pool_channels_last_wide(device, dtype):
    """Enough channels for the CPU's blocks of 16 side by side and a remainder (37), with
    ties, NaN (never a maximum) and -FLT_MAX (never above the start value: argmax -1)."""
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(11)
    n, c, h, w = 2, 37, 7, 9
    x = tied_features(n, c, h, w, g) - 1.0
    x[:, 3] = float("nan")
    x[1, 20, 2:5, 1:4] = float("nan")
    x[:, 21] = -3.402823466e38
    x[0, 35, :, 4] = 7.0
    rois = random_rois(40, n, h, w, 0.5, g, cols=6, device=dev)
    res = _both_layouts(lambda f: operators(device).roi_pool(f, rois.to(dtype), 2, 3, spatial_scale=0.5,
                                                             score_scale=1.5, score_bias=0.25),
                        x.to(dtype).to(dev))
    _assert_identical(res, f"roi_pool {dtype}")
    finite = torch.nan_to_num(x, nan=-2.0)
    ref_out, ref_arg = roi_pool_ref(finite, rois.cpu(), 2, 3, 0.5, 1.5, 0.25)
    keep = torch.ones(c, dtype=torch.bool)
    keep[[3, 20]] = False  # the NaN planes: compared between the layouts above
    out, arg = res[1][0]
    if dtype == torch.float32:
        assert torch.equal(out[:, keep], ref_out[:, keep])
        assert_equal_int(arg[:, keep], ref_arg[:, keep], "roi_pool argmax on channels_last, 37 channels")
    assert (arg[:, 21] == -1).all(), "-FLT_MAX is never above the start value"
    assert (arg[:, 3] == -1).all(), "NaN is never a maximum"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_spp_channels_last(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(4)
    x = tied_features(2, 4, 10, 8, g)
    rois = random_rois(7, 2, 10, 8, 1.0, g, cols=6, device=dev)
    res = _both_layouts(lambda f: operators(device).roi_spp(f, rois, [1, 2, 3], [1, 2, 3]), x.to(dev))
    _assert_identical(res, "roi_spp")
    assert torch.equal(res[1][0][0], roi_spp_ref(x, rois.cpu(), (1, 2, 3))[0])


@pytest.mark.parametrize("mode", ["max", "ave"])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_spp_and_caffe_pool2d_channels_last(device, mode):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(6)
    x = tied_features(2, 3, 13, 17, g)
    res = _both_layouts(lambda f: operators(device).spp(f, 3, mode), x.to(dev))
    _assert_identical(res, f"spp {mode}")
    torch.testing.assert_close(res[1][0][0], spp_ref(x, 3, mode), rtol=0, atol=1e-6)
    res = _both_layouts(lambda f: operators(device).caffe_pool2d(f, [3, 3], [2, 2], [1, 1], mode), x.to(dev))
    _assert_identical(res, f"caffe_pool2d {mode}")
    torch.testing.assert_close(res[1][0][0], caffe_pool2d_ref(x, 3, 2, 1, mode), rtol=0, atol=1e-6)


def test_ports_max_pool_keeps_the_first_maximum_in_channels_last():
    """The ports' 2x2 max pool (PyTorch's where it equals Caffe's rule) on a channels_last
    input with ties routes each window's gradient to its first maximum in row-major order,
    as Caffe's pooling (the reference) does."""
    from prototxt_ports import _ops as port_ops

    g = torch.Generator().manual_seed(8)
    x = tied_features(3, 6, 9, 8, g)
    for layout in (torch.contiguous_format, torch.channels_last):
        xi = x.clone().contiguous(memory_format=layout).requires_grad_()
        xr = x.clone().requires_grad_()
        out, ref = port_ops.max_pool_2x2(xi), caffe_pool2d_ref(xr, 2, 2, 0, "max")
        assert torch.equal(out, ref)
        grad = torch.randn(ref.shape, generator=g)
        out.backward(grad)
        ref.backward(grad)
        assert torch.equal(xi.grad, xr.grad), f"gradient routing differs from Caffe's in {layout}"
