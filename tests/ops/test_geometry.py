"""mlic.ops.geometry: Caffe's geometry rules against hand-computed values, PyTorch's own
pooling where the rules agree, and Caffe's formulas written out independently."""
import math

import pytest
import torch
import torch.nn.functional as F

from mlic.ops import geometry as G


@pytest.mark.parametrize(
    "size,k,s,p,want",
    [(13, 3, 2, 1, 7), (17, 3, 2, 1, 9), (13, 2, 2, 0, 7), (5, 2, 2, 1, 3), (6, 3, 3, 1, 3), (7, 3, 2, 0, 3),
     (4, 3, 3, 1, 2), (1, 2, 2, 0, 1)],
)
def test_pool_output_size(size, k, s, p, want):
    assert G.pool_output_size(size, k, s, p, p > 0) == want


def test_pool_output_size_is_caffes_float_formula():
    # Caffe: static_cast<int>(ceil(static_cast<float>(size + 2p - k) / s)) + 1, then the
    # correction when the layer has any padding
    for size in range(1, 40):
        for k in range(1, 6):
            for s in range(1, 5):
                for p in range(0, k):
                    for any_pad in (p > 0, True):
                        want = int(math.ceil((size + 2 * p - k) / s)) + 1
                        if any_pad and (want - 1) * s >= size + p:
                            want -= 1
                        assert G.pool_output_size(size, k, s, p, any_pad) == want


def test_pool_output_size_matches_torch_ceil_mode_when_padded():
    # with padding, Caffe's correction is PyTorch's ceil_mode rule
    for size in range(3, 20):
        for k, s, p in ((3, 2, 1), (2, 2, 1), (3, 3, 1), (5, 2, 2)):
            x = torch.zeros(1, 1, size, size)
            assert F.max_pool2d(x, k, s, p, ceil_mode=True).shape[-1] == G.pool_output_size(size, k, s, p, True)


def test_pool_window_and_divisor():
    # kernel 3, stride 2, pad 1 over 5: windows [-1,2), [1,4), [3,6) clipped to [0,5) for the
    # values and to [-1, 6) for the AVE divisor
    assert [G.pool_window(o, 3, 2, 1, 5) for o in range(3)] == [(0, 2, 3), (1, 4, 3), (3, 5, 3)]
    # kernel 3, stride 3, pad 1 over 4: the last window [2,5) is clipped to size + pad = 5
    assert G.pool_window(1, 3, 3, 1, 4) == (2, 4, 3)
    assert G.pool_window(0, 4, 4, 0, 2) == (0, 2, 2)


def test_pool2d_level_and_errors():
    lv = G.pool2d_level(7, 9, (3, 2), (2, 1), (1, 0))
    assert lv == G.PoolLevel(3, 2, 2, 1, 1, 0, 4, 8)
    assert (lv.oh, lv.ow) == F.max_pool2d(torch.zeros(1, 1, 7, 9), (3, 2), (2, 1), (1, 0), ceil_mode=True).shape[-2:]
    for args, frag in [((2, 1, 2), "pad"), ((2, 0, 0), "stride"), ((0, 1, 0), "kernel_size"),
                       (((2, 3, 4), 1, 0), "kernel_size")]:
        with pytest.raises(ValueError, match=frag):
            G.pool2d_level(5, 5, *args)
    with pytest.raises(ValueError, match="mode"):
        G.pool_mode("min")


def test_torch_pool_matches_caffe_where_it_says_so():
    # wherever the rule says yes, PyTorch's pooling gives the output of Caffe's formula written
    # out here (windows clipped to [-pad, size + pad) for the divisor, to the input for values)
    x = torch.randn(1, 1, 9, 9, dtype=torch.float64)
    said_no = 0
    for size in (1, 2, 3, 5, 8, 9):
        for k in range(1, 5):
            for st in range(1, 4):
                for p in range(0, k):
                    xs = x[..., :size, :size]
                    if not G.torch_pool_matches_caffe(size, size, k, st, p):
                        said_no += 1
                        continue
                    oh = G.pool_output_size(size, k, st, p, p > 0)
                    mx = torch.empty(oh, oh, dtype=torch.float64)
                    av = torch.empty(oh, oh, dtype=torch.float64)
                    for i in range(oh):
                        for j in range(oh):
                            h0, h1 = i * st - p, min(i * st - p + k, size + p)
                            w0, w1 = j * st - p, min(j * st - p + k, size + p)
                            win = xs[0, 0, max(h0, 0):min(h1, size), max(w0, 0):min(w1, size)]
                            mx[i, j], av[i, j] = win.max(), win.sum() / ((h1 - h0) * (w1 - w0))
                    assert torch.equal(F.max_pool2d(xs, k, st, p, ceil_mode=True)[0, 0], mx), (size, k, st, p)
                    got = F.avg_pool2d(xs, k, st, p, ceil_mode=True, count_include_pad=True)[0, 0]
                    torch.testing.assert_close(got, av, rtol=1e-12, atol=1e-12)
    assert said_no > 0
    # Caffe keeps a last window that starts past the input without padding; PyTorch drops it
    assert not G.torch_pool_matches_caffe(4, 6, 1, 2, 0)
    assert not G.torch_pool_matches_caffe(5, 5, 4, 1, 3)  # pad > kernel / 2: outside PyTorch's domain
    assert not G.torch_pool_matches_caffe(1, 5, 2, 2, 0)  # the kernel does not fit
    assert G.torch_pool_matches_caffe(13, 17, 3, 2, 1)


def test_roi_bins_by_hand():
    # scale 1/2: (3, 1, 13.5, 9) -> round -> x 2..7 (C rounds 6.75 to 7), y 1..5 (0.5 -> 1, 4.5 -> 5)
    rois = torch.tensor([[0, 3.0, 1.0, 13.5, 9.0, 1.0], [0, 4, 4, 2, 2, 1.0]])
    hs, he, ws, we = G.roi_bins(rois, 2, 4, 0.5, 4, 10, torch.float32)
    # height 5 in 2 bins of 2.5: [0, 3), [2, 5) from y 1, clipped to 4; width 6 in 4 bins of 1.5
    assert hs[0].tolist() == [1, 3] and he[0].tolist() == [4, 4]
    assert ws[0].tolist() == [2, 3, 5, 6] and we[0].tolist() == [4, 5, 7, 8]
    # an inverted box has extent 1: every bin is its one pixel
    assert hs[1].tolist() == [2, 2] and he[1].tolist() == [3, 3]
    assert ws[1].tolist() == [2, 2, 2, 2] and we[1].tolist() == [3, 3, 3, 3]
    assert G.c_round(torch.tensor([0.5, -0.5, 2.5, 0.49999997])).tolist() == [1.0, -1.0, 3.0, 0.0]


def test_rois_shape():
    G.check_rois_shape((3, 6))
    G.check_rois_shape((0, 5))
    for shape in ((6,), (3, 4), (3, 7), (1, 6, 1)):
        with pytest.raises(ValueError, match=r"must be 2-D \[K, 6\]"):
            G.check_rois_shape(shape)
    assert G.wsd_roigen_shape((2, 15)) == (6, 6) and G.wsd_roigen_shape((2, 10, 1, 1)) == (4, 6)
    with pytest.raises(ValueError, match="multiple of 5"):
        G.wsd_roigen_shape((2, 7))


def test_spp_levels():
    # the spp_only shape: 26 x 30, level 3 has pad 3 with kernel 4 (more than half)
    assert G.spp_level(26, 3) == (4, 3)
    assert G.spp_level(30, 3) == (4, 1)
    assert G.spp_level(13, 0) == (13, 0)
    assert G.spp_level(19, 3) == (3, 3)
    levels = G.spp_levels(26, 30, 4)
    assert [(lv.oh, lv.ow) for lv in levels] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert levels[3] == G.PoolLevel(4, 4, 4, 4, 3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"level 3 of the pyramid \(8x8 bins\)"):
        G.spp_levels(8, 19, 4)
    with pytest.raises(ValueError, match="pyramid_height"):
        G.spp_levels(8, 8, 0)


def test_roi_levels():
    assert G.roi_levels([1, (2, 3)]) == ([1, 2], [1, 3])
    assert G.roi_levels(4) == ([4], [4])
    for bad, frag in [([], "empty"), ([0], "positive"), ([(1, 2, 3)], "pair")]:
        with pytest.raises(ValueError, match=frag):
            G.roi_levels(bad)


def test_check_roi_values():
    good = torch.tensor([[0, 0, 0, 4, 4, 1.0], [1.9, -3, 2, 7, 7, 0.5], [-0.5, 0, 0, 1, 1, 1]])
    G.check_roi_values(good, 2)
    G.check_roi_values(torch.zeros(0, 6), 1)
    cases = [((2, 0), 2.0, "row 2 has batch index"), ((0, 0), -1.0, "row 0 has batch index"),
             ((1, 3), math.nan, "row 1 contains NaN"), ((0, 5), math.inf, "row 0 contains NaN or infinite"),
             ((1, 1), 1e12, "row 1 has coordinates")]
    for (r, c), v, frag in cases:
        bad = good.clone()
        bad[r, c] = v
        with pytest.raises(ValueError, match=frag):
            G.check_roi_values(bad, 2)
    # the limit applies to the coordinates in the feature frame
    G.check_roi_values(torch.tensor([[0, 0, 0, 2.0**29, 1, 1]]), 1, spatial_scale=1 / 16)
    with pytest.raises(ValueError, match="spatial_scale"):
        G.check_roi_values(torch.tensor([[0, 0, 0, 2.0**29, 1, 1]]), 1)


def test_wsd_roigen_by_hand():
    lr = torch.tensor([[1, 2, 3, 4, 0.5, 5, 6, 7, 8, 0.25], [-3, 0, 2, 672, 0.75, 9, 10, 11, 12, 1]])
    rois = G.wsd_roigen(lr)
    assert rois.tolist() == [
        [0, 1, 2, 3, 4, 0.5], [0, 5, 6, 7, 8, 0.25], [1, -3, 0, 2, 672, 0.75], [1, 9, 10, 11, 12, 1],
    ]
    assert torch.equal(G.wsd_roigen(lr.reshape(2, 10, 1, 1)), rois)
    small = G.single_scale_rois(rois, 224, 672)
    # floor(x / 3), score untouched, floor toward -inf
    assert small[:, 1:5].tolist() == [[0, 0, 1, 1], [1, 2, 2, 2], [-1, 0, 0, 224], [3, 3, 3, 4]]
    assert torch.equal(small[:, [0, 5]], rois[:, [0, 5]])
    with pytest.raises(ValueError, match="5B"):
        G.wsd_roigen(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="origin_scale"):
        G.single_scale_rois(rois, 224, 0)


def test_single_scale_computes_in_float32():
    # 224 * 671 / 672 = 223.66...; in float32 224*x is exact, the division rounds: floor as Caffe's float
    x = torch.tensor([[0, 671.0, 3.0, 669.0, 672.0, 1.0]])
    got = G.single_scale_rois(x, 224, 672)
    want = torch.floor(torch.tensor(224.0) * x[:, 1:5] / torch.tensor(672.0))
    assert torch.equal(got[:, 1:5], want)
    assert got[0, 1:5].tolist() == [223.0, 1.0, 223.0, 224.0]


def test_scale_view_shape():
    assert G.scale_view_shape((2, 5, 3, 1), 1, (5,)) == (1, 5, 1, 1)
    assert G.scale_view_shape((2, 5, 3), 1, (5, 3)) == (1, 5, 3)
    assert G.scale_view_shape((2, 5, 3), 2, (3,)) == (1, 1, 3)
    assert G.scale_view_shape((4,), 0, ()) == (1,)
    with pytest.raises(ValueError, match=r"scale shape \[3\] does not match bottom \[2, 5, 3\] from axis 1"):
        G.scale_view_shape((2, 5, 3), 1, (3,))


def test_fillers():
    assert G.filler_fan((64, 3, 3, 3)) == 27
    assert G.filler_fan((64, 3, 3, 3), "FAN_OUT") == 64 * 9
    assert G.filler_fan((64, 3, 3, 3), "AVERAGE") == (27 + 576) / 2
    assert G.filler_fan((10,)) == 1 and G.filler_fan((10,), "FAN_OUT") == 10
    torch.manual_seed(0)
    w = G.xavier_(torch.empty(200, 50))
    bound = math.sqrt(3 / 50)
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.01
    m = G.msra_(torch.empty(400, 100), "FAN_OUT")
    assert abs(float(m.std()) - math.sqrt(2 / 400)) < 0.005
    with pytest.raises(ValueError, match="variance_norm"):
        G.filler_fan((2, 2), "FAN")
