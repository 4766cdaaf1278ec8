"""The pure-PyTorch references against hand-computed values and independent implementations
(no shared data needed)."""
import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlic.ops.reference import (
    FLT_MAX,
    caffe_pool2d_ref,
    roi_pool_ref,
    roi_spp_ref,
    spp_ref,
    wsddn_two_stream_ref,
)
from mlic.ops.geometry import c_round, spp_level


def grid(h, w, n=1, c=1, dtype=torch.float32):
    """Features whose value at (h, w) is h*W + w (distinct, increasing in row-major order)."""
    return torch.arange(n * c * h * w, dtype=dtype).reshape(n, c, h, w) % (h * w)


# ----------------------------------------------------------------------------- C rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_round_half_away_from_zero(dtype):
    vals = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 2.4999998, 1e7 + 0.5, 3.0, -0.0, 0.0]
    x = torch.tensor(vals, dtype=dtype)
    got = c_round(x).tolist()
    # Decimal of the stored binary value, ROUND_HALF_UP = half away from zero
    want = [float(Decimal(v).quantize(Decimal(1), rounding=ROUND_HALF_UP)) for v in x.tolist()]
    assert got == want
    # the cases where torch.round (half to even) differs
    assert c_round(torch.tensor([2.5, -2.5, 0.5], dtype=dtype)).tolist() == [3.0, -3.0, 1.0]
    assert torch.round(torch.tensor([2.5, -2.5, 0.5], dtype=dtype)).tolist() == [2.0, -2.0, 0.0]


# ----------------------------------------------------------------------------- RoI pooling, by hand


def test_roi_pool_2x2_with_score_factor():
    f = grid(4, 4)
    rois = torch.tensor([[0, 0, 0, 3, 3, 0.5]])
    out, arg = roi_pool_ref(f, rois, 2, 2, score_scale=2.0, score_bias=1.0)  # factor 2*0.5+1 = 2
    assert out.tolist() == [[[[10.0, 14.0], [26.0, 30.0]]]]
    assert arg.dtype == torch.int32
    assert arg.tolist() == [[[[5, 7], [13, 15]]]]


def test_roi_pool_overlapping_bins_and_backward():
    # roi 4 wide pooled to 3: bin 4/3 -> [0,2), [1,3), [2,4): overlapping bins
    f = grid(4, 4).requires_grad_()
    out, arg = roi_pool_ref(f, torch.tensor([[0, 0, 0, 3, 3, 1.0]]), 3, 3, score_scale=3.0)
    assert out[0, 0].tolist() == [[15.0, 18.0, 21.0], [27.0, 30.0, 33.0], [39.0, 42.0, 45.0]]
    assert arg[0, 0].tolist() == [[5, 6, 7], [9, 10, 11], [13, 14, 15]]
    g = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) + 1
    (grad,) = torch.autograd.grad(out, f, g)
    want = torch.zeros(16)
    want[arg.flatten().long()] += 3.0 * g.flatten()
    assert torch.equal(grad.flatten(), want)


def test_roi_pool_tiny_box_cells_share_an_element_and_gradients_add():
    f = grid(4, 4).requires_grad_()
    # a 1x1 box pooled 2x2: every bin is [y, y+1) x [x, x+1)
    out, arg = roi_pool_ref(f, torch.tensor([[0, 2, 1, 2, 1, 1.0]]), 2, 2)
    assert arg.flatten().tolist() == [6, 6, 6, 6]
    out.sum().backward()
    assert f.grad.flatten()[6].item() == 4.0 and f.grad.sum().item() == 4.0


def test_roi_pool_inverted_box_is_one_pixel_wide():
    f = grid(4, 5)
    # x2 < x1 and y2 < y1: roi_w = roi_h = 1 at (x1, y1)
    out, arg = roi_pool_ref(f, torch.tensor([[0, 3, 2, 1, 0, 1.0]]), 1, 1)
    assert arg.item() == 2 * 5 + 3 and out.item() == 13.0


def test_roi_pool_box_outside_is_empty():
    f = grid(4, 4).requires_grad_()
    out, arg = roi_pool_ref(f, torch.tensor([[0, 10, 10, 20, 20, 1.0], [0, -9, -9, -5, -5, 1.0]]), 2, 2)
    assert torch.all(out == 0) and torch.all(arg == -1)
    out.sum().backward()
    assert torch.all(f.grad == 0)


def test_roi_pool_partly_outside_box_clips():
    f = grid(4, 4)
    # x in [-2, 5] pooled to 2: bins [-2,2) -> [0,2), [2,6) -> [2,4)
    out, arg = roi_pool_ref(f, torch.tensor([[0, -2, 0, 5, 3, 1.0]]), 1, 2)
    assert arg.flatten().tolist() == [13, 15]


def test_roi_pool_ties_first_maximum_wins():
    f = torch.full((1, 2, 5, 6), 7.0)
    out, arg = roi_pool_ref(f, torch.tensor([[0, 1, 1, 4, 3, 1.0]]), 2, 2)
    # roi x 1..4 (w 4, bins of 2), y 1..3 (h 3, bins 1.5: [0,2) and [1,3))
    assert arg[0, 0].tolist() == [[1 * 6 + 1, 1 * 6 + 3], [2 * 6 + 1, 2 * 6 + 3]]
    assert torch.equal(arg[0, 0], arg[0, 1]) and torch.all(out == 7.0)


def test_roi_pool_half_coordinates_round_away_from_zero():
    # value -w so a one-column difference is visible; features 1 x 1 x 2 x 8
    f = -torch.arange(8, dtype=torch.float32).repeat(2, 1)[None, None]
    # x = 0.5 * 16 at scale 1/16 -> 0.5 -> 1 (half-to-even would give 0); 2.5 -> 3 (not 2)
    rois = torch.tensor([[0, 8, 0, 8, 0, 1.0], [0, 40, 0, 40, 0, 1.0], [0, 24, 0, 24, 0, 1.0]])
    _, arg = roi_pool_ref(f, rois, 1, 1, spatial_scale=1 / 16)
    assert arg.flatten().tolist() == [1, 3, 2]
    # at scale 0.25: 2/4 = 0.5 -> 1, 10/4 = 2.5 -> 3
    _, arg = roi_pool_ref(f, torch.tensor([[0, 2, 0, 2, 0, 1.0], [0, 10, 0, 10, 0, 1.0]]), 1, 1, spatial_scale=0.25)
    assert arg.flatten().tolist() == [1, 3]


def test_roi_pool_coordinates_in_the_features_dtype():
    # 7.99999999 / 16 is 0.49999999... in float64 (rounds to 0) but the float32 value is 8.0 -> 0.5 -> 1
    x = 7.99999999
    f32 = -torch.arange(4, dtype=torch.float32)[None, None, None]
    rois = torch.tensor([[0, x, 0, x, 0, 1.0]], dtype=torch.float64)
    _, a32 = roi_pool_ref(f32, rois.float(), 1, 1, spatial_scale=1 / 16)
    _, a64 = roi_pool_ref(f32.double(), rois, 1, 1, spatial_scale=1 / 16)
    assert a32.item() == 1 and a64.item() == 0


def test_roi_pool_bins_below_minus_flt_max_and_nan():
    f = torch.tensor([[[[-math.inf, -math.inf, 1.0], [math.nan, 2.0, 0.5]]]])
    rois = torch.tensor([[0, 0, 0, 1, 0, 2.0], [0, 0, 1, 2, 1, 1.0]])
    out, arg = roi_pool_ref(f, rois, 1, 1)
    # nothing beats -FLT_MAX in the first bin: value stays -FLT_MAX (times the factor), argmax -1
    assert arg.flatten().tolist() == [-1, 4]
    assert out[0].item() == -math.inf or out[0].item() == pytest.approx(-2 * FLT_MAX, rel=1e-6)
    assert out[1].item() == 2.0  # NaN never wins


def test_roi_pool_five_columns_is_score_one():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 6, 7)
    r6 = torch.tensor([[1, 0, 1, 5, 4, 1.0], [0, 2, 2, 3, 5, 1.0]])
    o6, a6 = roi_pool_ref(f, r6, 2, 3, score_scale=1.0, score_bias=0.0)
    o5, a5 = roi_pool_ref(f, r6[:, :5], 2, 3)
    assert torch.equal(o5, o6) and torch.equal(a5, a6)
    # with a score scale and bias, 5 columns use score 1: factor = scale + bias
    o5s, _ = roi_pool_ref(f, r6[:, :5], 2, 3, score_scale=2.0, score_bias=0.5)
    assert torch.allclose(o5s, 2.5 * o6)


def test_roi_pool_batch_index_truncates_and_is_checked():
    f = torch.stack([torch.zeros(1, 3, 3), torch.ones(1, 3, 3)])
    out, _ = roi_pool_ref(f, torch.tensor([[-0.5, 0, 0, 2, 2, 1.0], [1.9, 0, 0, 2, 2, 1.0]]), 1, 1)
    assert out.flatten().tolist() == [0.0, 1.0]
    for bad in (-1.0, 2.0, math.nan, math.inf, 1e30):
        with pytest.raises(ValueError, match="rois"):
            roi_pool_ref(f, torch.tensor([[bad, 0, 0, 2, 2, 1.0]]), 1, 1)


def test_roi_pool_empty_and_bad_arguments():
    f = torch.randn(1, 3, 4, 4)
    out, arg = roi_pool_ref(f, torch.zeros(0, 6), 2, 5)
    assert out.shape == (0, 3, 2, 5) and arg.shape == (0, 3, 2, 5) and arg.dtype == torch.int32
    with pytest.raises(ValueError, match="pooled"):
        roi_pool_ref(f, torch.zeros(1, 6), 0, 2)
    with pytest.raises(ValueError, match="rois"):
        roi_pool_ref(f, torch.zeros(1, 4), 2, 2)
    with pytest.raises(ValueError, match="features"):
        roi_pool_ref(f[0], torch.zeros(1, 6), 2, 2)


def test_roi_pool_against_brute_force_numpy():
    """A second, independently written scalar loop (numpy, float32 arithmetic)."""
    rng = np.random.default_rng(3)
    f = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    k = 25
    xy = rng.uniform(-20, 200, size=(k, 4)).astype(np.float32)
    rois = np.concatenate([rng.integers(0, 2, (k, 1)).astype(np.float32), xy, rng.uniform(0, 1, (k, 1))], 1)
    rois = rois.astype(np.float32)
    ph, pw, scale, ss, sb = 3, 2, np.float32(1 / 16), np.float32(1.5), np.float32(0.25)

    def cround(v):
        return np.float32(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))

    want = np.zeros((k, 3, ph, pw), np.float32)
    want_arg = np.full((k, 3, ph, pw), -1)
    for i in range(k):
        b = int(rois[i, 0])
        x1, y1, x2, y2 = (int(cround(np.float32(rois[i, j]) * scale)) for j in (1, 2, 3, 4))
        bh = np.float32(max(y2 - y1 + 1, 1)) / np.float32(ph)
        bw = np.float32(max(x2 - x1 + 1, 1)) / np.float32(pw)
        fac = ss * rois[i, 5] + sb
        for c in range(3):
            for a in range(ph):
                hs = min(max(int(np.floor(np.float32(a) * bh)) + y1, 0), 9)
                he = min(max(int(np.ceil(np.float32(a + 1) * bh)) + y1, 0), 9)
                for bb in range(pw):
                    ws = min(max(int(np.floor(np.float32(bb) * bw)) + x1, 0), 11)
                    we = min(max(int(np.ceil(np.float32(bb + 1) * bw)) + x1, 0), 11)
                    if he <= hs or we <= ws:
                        continue
                    best, idx = -FLT_MAX, -1
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if f[b, c, h, w] > best:
                                best, idx = f[b, c, h, w], h * 11 + w
                    want[i, c, a, bb] = best * fac
                    want_arg[i, c, a, bb] = idx
    out, arg = roi_pool_ref(torch.from_numpy(f), torch.from_numpy(rois), ph, pw, float(scale), 1.5, 0.25)
    assert np.array_equal(arg.numpy(), want_arg)
    assert np.allclose(out.numpy(), want, rtol=1e-6, atol=1e-6)
    assert (want_arg == -1).any() and (want_arg >= 0).any()


def test_roi_spp_layout():
    torch.manual_seed(1)
    f = torch.randn(1, 2, 6, 6)
    rois = torch.tensor([[0, 0, 0, 5, 5, 1.0], [0, 1, 2, 4, 5, 0.5]])
    out, arg = roi_spp_ref(f, rois, [1, (2, 1)], score_scale=2.0)
    assert out.shape == (2, 2 * (1 + 2)) and arg.shape == out.shape and arg.dtype == torch.int32
    # roi 0 covers the image: level 1x1 is the per-channel max; level (2,1) the top/bottom halves
    top, bottom = f[0, :, :3].amax((1, 2)), f[0, :, 3:].amax((1, 2))
    want0 = torch.cat([f[0].amax((1, 2)), torch.stack([top, bottom], 1).flatten()]) * 2.0
    assert torch.equal(out[0], want0)
    o1, a1 = roi_pool_ref(f, rois, 1, 1, score_scale=2.0)
    o2, a2 = roi_pool_ref(f, rois, 2, 1, score_scale=2.0)
    assert torch.equal(out, torch.cat([o1.flatten(1), o2.flatten(1)], 1))
    assert torch.equal(arg, torch.cat([a1.flatten(1), a2.flatten(1)], 1))


# ----------------------------------------------------------------------------- Caffe Pooling


def test_caffe_pool_ave_divides_by_padded_window():
    x = torch.ones(1, 1, 3, 3)
    out = caffe_pool2d_ref(x, 3, 2, 1, "ave")
    # every window is 3x3 inside [-1, 4) but covers 2x2 real pixels
    assert out.shape == (1, 1, 2, 2) and torch.allclose(out, torch.full_like(out, 4 / 9))
    assert torch.equal(caffe_pool2d_ref(x, 3, 2, 1, "max"), torch.ones(1, 1, 2, 2))


def test_caffe_pool_max_first_maximum_and_gradient():
    x = torch.tensor([[[[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]]]], requires_grad=True)
    out = caffe_pool2d_ref(x, 2, 1, 0, "max")
    assert out.tolist() == [[[[3.0, 3.0]]]]
    out.sum().backward()
    # both windows pick the first 3 in row-major order of their own window: (0,1) for both
    assert x.grad.tolist() == [[[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]]


def _caffe_pool_cases():
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(20):
        k = int(rng.integers(1, 5))
        s = int(rng.integers(1, k + 1))  # k >= s: torch's ceil_mode rule agrees with Caffe's
        p = int(rng.integers(0, k // 2 + 1))
        h, w = int(rng.integers(k, 12)), int(rng.integers(k, 12))
        cases.append((h, w, k, s, p))
    return cases


@pytest.mark.parametrize("h,w,k,s,p", _caffe_pool_cases())
def test_caffe_pool_against_torch_ceil_mode(h, w, k, s, p):
    torch.manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    ours = caffe_pool2d_ref(x, k, s, p, "max")
    theirs = F.max_pool2d(x, k, s, p, ceil_mode=True)
    assert torch.equal(ours, theirs)
    g = torch.randn_like(ours)
    assert torch.allclose(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(theirs, x, g)[0])
    ours = caffe_pool2d_ref(x, k, s, p, "ave")
    theirs = F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs)
    assert torch.allclose(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(theirs, x, g)[0])


def test_caffe_pool_rectangular_params_and_errors():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    ours = caffe_pool2d_ref(x, (3, 2), (2, 1), (1, 0), "max")
    assert torch.equal(ours, F.max_pool2d(x, (3, 2), (2, 1), (1, 0), ceil_mode=True))
    with pytest.raises(ValueError, match="pad"):
        caffe_pool2d_ref(x, 2, 1, 2)
    with pytest.raises(ValueError, match="stride"):
        caffe_pool2d_ref(x, 2, 0, 0)
    with pytest.raises(ValueError, match="mode"):
        caffe_pool2d_ref(x, 2, 1, 0, "min")


def test_caffe_pool_correction_applies_to_both_dims_when_any_pad():
    # k=1 < s=3: without any pad no correction (last window past the input: -FLT_MAX);
    # with pad only along w, Caffe also corrects h
    x = torch.randn(1, 1, 5, 5)
    out = caffe_pool2d_ref(x, (1, 2), (3, 3), (0, 0), "max")
    assert out.shape == (1, 1, 3, 2)
    assert torch.all(out[0, 0, 2] == -FLT_MAX)
    out = caffe_pool2d_ref(x, (1, 2), (3, 3), (0, 1), "max")
    assert out.shape == (1, 1, 2, 2)


# ----------------------------------------------------------------------------- SPP


def test_spp_against_torch_pooling():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    for mode in ("max", "ave"):
        parts = []
        for level in range(3):
            kh, ph = spp_level(16, level)
            kw, pw = spp_level(12, level)
            if mode == "max":
                parts.append(F.max_pool2d(x, (kh, kw), (kh, kw), (ph, pw), ceil_mode=True).flatten(1))
            else:
                parts.append(F.avg_pool2d(x, (kh, kw), (kh, kw), (ph, pw), ceil_mode=True).flatten(1))
        want = torch.cat(parts, 1)
        assert want.shape == (2, 3 * 21)
        assert torch.allclose(spp_ref(x, 3, mode), want)


def test_spp_errors():
    x = torch.randn(1, 1, 8, 19)
    with pytest.raises(ValueError, match="level 3"):
        spp_ref(x, 4)
    assert spp_ref(x, 3).shape == (1, 21)
    with pytest.raises(ValueError, match="pyramid_height"):
        spp_ref(x, 0)


# ----------------------------------------------------------------------------- two-stream head


def test_two_stream_against_numpy():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 4, 3)) * 3, rng.standard_normal((2, 4, 3)) * 3
    cls = np.exp(a) / np.exp(a).sum(2, keepdims=True)
    det = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    image, region = wsddn_two_stream_ref(torch.from_numpy(a), torch.from_numpy(b))
    assert np.allclose(region.numpy(), cls * det, rtol=1e-12)
    assert np.allclose(image.numpy(), (cls * det).sum(1), rtol=1e-12)
    with pytest.raises(ValueError, match="det_logits"):
        wsddn_two_stream_ref(torch.zeros(2, 4, 3), torch.zeros(2, 4, 2))
