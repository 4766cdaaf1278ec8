"""Every layer type of the released nets against independent references (SPEC section 3),
on small synthetic prototxts."""
import math

import numpy as np
import pytest
import torch

from mlic import ops
from mlic.caffe import CaffeNet
from mlic.caffe.errors import NetBuildError
from mlic.ops import geometry

rng = np.random.default_rng(1234)


def inp(name, *shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def run(text, phase="TEST", backward=None, **blobs):
    net = CaffeNet(text, phase, retain_diffs=True)
    net.forward(**blobs)
    if backward is not None:
        net.backward(backward)
    return net


def np_(t):
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------- plumbing layers


def test_slice_silence_split_names_and_diffs():
    x = rng.standard_normal((2, 7)).astype(np.float32)
    text = inp("x", 2, 7) + (
        'layer { name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 slice_point: 3 } }\n'
        'layer { name: "sil" type: "Silence" bottom: "b" }\n'
        'layer { name: "r1" type: "ReLU" bottom: "a" top: "r1" }\n'
        'layer { name: "s1" type: "Sigmoid" bottom: "a" top: "s1" }\n'
        'layer { name: "l1" type: "EuclideanLoss" bottom: "r1" bottom: "s1" top: "l1" }\n'
    )
    net = CaffeNet(text, force_backward=True, retain_diffs=True)
    assert net.layer_names == ["x", "sl", "a_sl_0_split", "sil", "r1", "s1", "l1"]
    net.forward(x=x)
    net.backward()
    np.testing.assert_array_equal(np_(net.blobs["a"]), x[:, :3])
    np.testing.assert_array_equal(np_(net.blobs["b"]), x[:, 3:])
    a = x[:, :3].astype(np.float64)
    r, s = np.maximum(a, 0), 1 / (1 + np.exp(-a))
    d = (r - s) / 2
    g0 = d * (a > 0)  # into the ReLU's split
    g1 = -d * s * (1 - s)  # into the Sigmoid's split
    diffs = net.blob_diffs
    np.testing.assert_allclose(np_(diffs["a_sl_0_split_0"]), g0, atol=1e-6)
    np.testing.assert_allclose(np_(diffs["a_sl_0_split_1"]), g1, atol=1e-6)
    np.testing.assert_allclose(np_(diffs["a"]), g0 + g1, atol=1e-6)  # the source blob sums its consumers
    np.testing.assert_allclose(np_(diffs["x"])[:, :3], g0 + g1, atol=1e-6)
    np.testing.assert_array_equal(np_(diffs["x"])[:, 3:], 0)  # Silence sends nothing


def test_slice_equal_parts_and_legacy_slice_dim():
    x = np.arange(24, dtype=np.float32).reshape(2, 6, 2)
    net = run(inp("x", 2, 6, 2) + 'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" }', x=x)
    for i, t in enumerate("abc"):
        np.testing.assert_array_equal(np_(net.blobs[t]), x[:, 2 * i : 2 * i + 2])
    net = run(inp("x", 2, 6, 2) + 'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" '
              'slice_param { slice_dim: 2 } }', x=x)
    np.testing.assert_array_equal(np_(net.blobs["b"]), x[:, :, 1:])


def test_wsd_roigen_and_single_scale():
    lr = np.array([[10.2, 20.9, 30.5, 40.0, 0.7, 1.0, 2.0, 671.9, 335.99, 0.1],
                   [0.0, 3.0, 5.0, 7.0, 0.3, 2.99, 3.01, 3.02, 2.0, 0.9]], np.float32)
    text = inp("list_roi", 2, 10, 1, 1) + (
        'layer { name: "roi" type: "WsdRoigen" bottom: "list_roi" top: "roi" }\n'
        'layer { name: "roi_224" type: "WsdRoigenSingleScale" bottom: "list_roi" top: "roi_224" '
        'roi_pooling_param { single_scale: 224 origin_scale: 672 } }\n'
    )
    net = run(text, list_roi=lr.reshape(2, 10, 1, 1))
    assert net.layer_names[1] == "list_roi_list_roi_0_split"
    boxes = lr.reshape(4, 5)
    expect = np.concatenate([np.array([[0], [0], [1], [1]], np.float32), boxes], 1)
    np.testing.assert_array_equal(np_(net.blobs["roi"]), expect)
    small = expect.copy()
    small[:, 1:5] = np.floor(np.float32(224) * boxes[:, :4] / np.float32(672))
    np.testing.assert_array_equal(np_(net.blobs["roi_224"]), small)
    # by hand: 10.2 -> floor(3.4) = 3, 671.9 -> floor(223.97) = 223
    assert net.blobs["roi_224"][0, 1] == 3 and net.blobs["roi_224"][1, 3] == 223


def test_wsd_roigen_rejects_non_multiple_of_5():
    with pytest.raises(NetBuildError, match="multiple of 5"):
        CaffeNet(inp("l", 2, 12) + 'layer { name: "roi" type: "WsdRoigen" bottom: "l" top: "roi" }')


def test_reshape_flatten_concat():
    x = rng.standard_normal((2, 12, 1, 1)).astype(np.float32)
    y = rng.standard_normal((2, 3, 4)).astype(np.float32)
    text = inp("x", 2, 12, 1, 1) + inp("y", 2, 3, 4) + (
        'layer { name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }\n'
        'layer { name: "r2" type: "Reshape" bottom: "r" top: "r2" reshape_param { axis: 1 num_axes: 1 shape { dim: 3 dim: 1 } } }\n'
        'layer { name: "f" type: "Flatten" bottom: "r2" top: "f" }\n'
        'layer { name: "c" type: "Concat" bottom: "r" bottom: "y" top: "c" concat_param { axis: 1 } }\n'
    )
    net = run(text, x=x, y=y)
    assert tuple(net.blobs["r"].shape) == (2, 3, 4) == net.blob_shapes["r"]
    assert tuple(net.blobs["r2"].shape) == (2, 3, 1, 4) == net.blob_shapes["r2"]
    np.testing.assert_array_equal(np_(net.blobs["f"]), x.reshape(2, 12))
    np.testing.assert_array_equal(np_(net.blobs["c"]), np.concatenate([x.reshape(2, 3, 4), y], 1))


# ----------------------------------------------------------------------------- convolution


def conv_ref(x, w, b, stride, pad, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg : (g + 1) * cg, i * sh : i * sh + kh, j * sw : j * sw + kw]
                out[:, oc, i, j] = (patch * w[oc]).sum((1, 2, 3)) + (b[oc] if b is not None else 0)
    return out


def test_convolution_rect_kernel_pad_stride_group():
    x = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)
    text = inp("x", 2, 4, 7, 9) + (
        'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 6 '
        'kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 3 group: 2 '
        'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } } }\n'
        'layer { name: "nb" type: "Convolution" bottom: "x" top: "nb" convolution_param { num_output: 3 '
        'kernel_size: 3 pad: 1 stride: 1 bias_term: false weight_filler { type: "xavier" } } }\n'
    )
    net = run(text, x=x)
    w, b = (np_(p) for p in net.params["c"])
    assert w.shape == (6, 2, 3, 2) and b.shape == (6,)
    np.testing.assert_allclose(np_(net.blobs["c"]), conv_ref(x, w, b, (2, 3), (1, 0), 2), atol=1e-5)
    assert len(net.params["nb"]) == 1
    np.testing.assert_allclose(np_(net.blobs["nb"]), conv_ref(x, np_(net.params["nb"][0]), None, (1, 1), (1, 1), 1),
                               atol=1e-5)


def test_region_sum_is_a_general_1x1_convolution():
    """image_level_score: N x B x C x 1 -> N x 1 x C x 1 with the loaded weights."""
    p = rng.random((2, 5, 3, 1)).astype(np.float32)
    text = inp("p", 2, 5, 3, 1) + (
        'layer { name: "s" type: "Convolution" bottom: "p" top: "s" param { lr_mult: 0 decay_mult: 0 } '
        'convolution_param { num_output: 1 pad_h: 0 pad_w: 0 kernel_h: 1 kernel_w: 1 stride_h: 1 stride_w: 1 '
        'weight_filler { type: "constant" value: 1 } bias_term: false } }\n'
    )
    net = run(text, p=p)
    np.testing.assert_allclose(np_(net.blobs["s"]), p.sum(1, keepdims=True), rtol=1e-6)
    w = np.array([1.0, 2.0, 0.0, -1.0, 0.5], np.float32)
    with torch.no_grad():
        net.params["s"][0].copy_(torch.from_numpy(w).view(1, 5, 1, 1))
    net.forward(p=p)
    np.testing.assert_allclose(np_(net.blobs["s"])[:, 0], np.einsum("nbc,b->nc", p[..., 0], w)[..., None], rtol=1e-6)


# ----------------------------------------------------------------------------- pooling family


def caffe_pool_ref(x, k, s, p, mode):
    """Caffe's pooling, written from SPEC section 3."""
    n, c, h, w = x.shape
    any_pad = p[0] > 0 or p[1] > 0

    def osize(size, k, s, p):
        o = int(math.ceil((size + 2 * p - k) / s)) + 1
        if any_pad and (o - 1) * s >= size + p:
            o -= 1
        return o

    oh, ow = osize(h, k[0], s[0], p[0]), osize(w, k[1], s[1], p[1])
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        hs = i * s[0] - p[0]
        he = hs + k[0]
        for j in range(ow):
            ws = j * s[1] - p[1]
            we = ws + k[1]
            hs0, he0, ws0, we0 = max(hs, 0), min(he, h), max(ws, 0), min(we, w)
            win = x[:, :, hs0:he0, ws0:we0]
            if mode == "max":
                out[:, :, i, j] = win.max((2, 3)) if win.size else -np.finfo(np.float32).max
            else:
                size = (min(he, h + p[0]) - hs) * (min(we, w + p[1]) - ws)
                with np.errstate(invalid="ignore"):  # an empty window: 0/0, as in Caffe
                    out[:, :, i, j] = win.sum((2, 3)) / size
    return out


@pytest.mark.parametrize("params,k,s,p", [
    ("kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (0 + 1, 1)),
    ("kernel_size: 2 stride: 2", (2, 2), (2, 2), (0, 0)),
    ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0", (3, 2), (2, 1), (2, 0)),
    ("kernel_size: 2 stride: 3", (2, 2), (3, 3), (0, 0)),  # stride > kernel: Caffe keeps a window PyTorch drops
])
@pytest.mark.parametrize("mode", ["MAX", "AVE"])
def test_pooling_caffe_rules(params, k, s, p, mode):
    # the layer (PyTorch's pooling where it gives Caffe's result) and the compiled op alone
    x = rng.standard_normal((2, 3, 13, 17)).astype(np.float32)
    text = inp("x", 2, 3, 13, 17) + f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param {{ pool: {mode} {params} }} }}'
    net = CaffeNet(text)
    ref = caffe_pool_ref(x.astype(np.float64), k, s, p, mode.lower())
    for out in (net(x=x)["p"], ops.caffe_pool2d(torch.from_numpy(x), k, s, p, mode.lower())):
        assert tuple(out.shape) == ref.shape == net.blob_shapes["p"]
        np.testing.assert_allclose(np_(out), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
def test_pooling_window_past_the_input(mode):
    """Without padding Caffe keeps a last window that starts past the input (empty: MAX
    gives -FLT_MAX, AVE 0/0); PyTorch's ceil mode drops it, so the net must not use it."""
    assert not geometry.torch_pool_matches_caffe(4, 6, (1, 1), (2, 2), (0, 0))
    x = rng.standard_normal((1, 2, 4, 6)).astype(np.float32)
    text = inp("x", 1, 2, 4, 6) + f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param {{ pool: {mode} kernel_size: 1 stride: 2 }} }}'
    out = np_(CaffeNet(text)(x=x)["p"])
    ref = caffe_pool_ref(x.astype(np.float64), (1, 1), (2, 2), (0, 0), mode.lower())
    assert out.shape == ref.shape == (1, 2, 3, 4)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_global_pooling():
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    text = inp("x", 2, 3, 5, 4) + 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: AVE global_pooling: true } }'
    want = x.astype(np.float64).mean((2, 3), keepdims=True)  # a float32 sum of 20 values: absolute error ~1e-7
    np.testing.assert_allclose(np_(CaffeNet(text)(x=x)["p"]), want, rtol=1e-5, atol=1e-6)


def test_pooling_max_gradient_goes_to_first_maximum():
    x = np.zeros((1, 1, 2, 4), np.float32)  # all ties: the first (row-major) element wins
    text = inp("x", 1, 1, 2, 4) + 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }'
    net = CaffeNet(text, force_backward=True, retain_diffs=True)
    net.forward(x=x)
    net.backward({"p": np.array([[[[1.0, 2.0]]]], np.float32)})
    np.testing.assert_array_equal(np_(net.blob_diffs["x"]), [[[[1, 0, 2, 0], [0, 0, 0, 0]]]])


def spp_ref(x, levels, mode):
    outs = []
    for lvl in range(levels):
        bins = 2**lvl
        kh, kw = -(-x.shape[2] // bins), -(-x.shape[3] // bins)
        ph, pw = (kh * bins - x.shape[2] + 1) // 2, (kw * bins - x.shape[3] + 1) // 2
        outs.append(caffe_pool_ref(x, (kh, kw), (kh, kw), (ph, pw), mode).reshape(x.shape[0], -1))
    return np.concatenate(outs, 1)


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
def test_spp(mode):
    x = rng.standard_normal((2, 3, 11, 14)).astype(np.float32)
    text = inp("x", 2, 3, 11, 14) + f'layer {{ name: "s" type: "SPP" bottom: "x" top: "s" spp_param {{ pyramid_height: 3 pool: {mode} }} }}'
    net = run(text, x=x)
    assert net.blob_shapes["s"] == (2, 3 * 21)
    np.testing.assert_allclose(np_(net.blobs["s"]), spp_ref(x.astype(np.float64), 3, mode.lower()), rtol=1e-6, atol=1e-6)


def test_spp_refuses_pad_not_below_kernel():
    text = inp("x", 1, 2, 8, 19) + 'layer { name: "s" type: "SPP" bottom: "x" top: "s" spp_param { pyramid_height: 4 } }'
    with pytest.raises(NetBuildError, match=r"level 3 of the pyramid \(8x8 bins\) needs padding \(0, 3\) not smaller than its kernel \(1, 3\)"):
        CaffeNet(text)


def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def roi_pool_ref(feat, rois, ph, pw, scale, score_scale, score_bias):
    k = rois.shape[0]
    n, c, h, w = feat.shape
    out = np.zeros((k, c, ph, pw))
    for r in range(k):
        b = int(rois[r, 0])
        x1, y1, x2, y2 = (c_round(float(np.float32(v) * np.float32(scale))) for v in rois[r, 1:5])
        rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bw, bh = np.float32(rw) / np.float32(pw), np.float32(rh) / np.float32(ph)
        f = score_scale * rois[r, 5] + score_bias
        for i in range(ph):
            hs = min(max(int(math.floor(np.float32(i) * bh)) + y1, 0), h)
            he = min(max(int(math.ceil(np.float32(i + 1) * bh)) + y1, 0), h)
            for j in range(pw):
                ws = min(max(int(math.floor(np.float32(j) * bw)) + x1, 0), w)
                we = min(max(int(math.ceil(np.float32(j + 1) * bw)) + x1, 0), w)
                if he <= hs or we <= ws:
                    continue
                out[r, :, i, j] = feat[b, :, hs:he, ws:we].max((1, 2)) * f
    return out


@pytest.mark.parametrize("backend", ["auto", "reference", "emulated-cuda"])
def test_roi_pooling_with_scores(backend):
    feat = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    boxes = np.array([[2, 6, 9.9, 18, 0.5, 0, 0, 47, 39, 1.0, 10, 10, 2, 2, 0.25],
                      [-8, -8, 3, 3, 0.9, 6, 6, 6, 6, 0.2, 30, 2, 60, 30, 0.7]], np.float32)
    text = inp("feat", 2, 3, 10, 12) + inp("lr", 2, 15) + (
        'layer { name: "roi" type: "WsdRoigen" bottom: "lr" top: "roi" }\n'
        'layer { name: "p" type: "ROIPooling" bottom: "feat" bottom: "roi" top: "p" '
        'roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 score_scale: 2 score_bias: 0.5 } }\n'
    )
    net = CaffeNet(text, force_backward=True, retain_diffs=True, ops_backend=backend)
    net.forward(feat=feat, lr=boxes)
    ref = roi_pool_ref(feat, np_(net.blobs["roi"]), 3, 2, 0.25, 2.0, 0.5)
    np.testing.assert_allclose(np_(net.blobs["p"]), ref, rtol=1e-6, atol=1e-6)
    net.backward({"p": np.ones((6, 3, 3, 2), np.float32)})
    assert np.abs(np_(net.blob_diffs["roi"])).max() == 0  # no gradient to the rois
    assert np_(net.blob_diffs["feat"]).sum() == pytest.approx(
        sum((2 * s + 0.5) * np.count_nonzero(ref[i]) for i, s in enumerate(boxes.reshape(6, 5)[:, 4])) / 3 * 3, rel=1e-5)


def test_roi_pooling_bad_batch_index_is_an_error():
    text = inp("feat", 1, 2, 5, 5) + inp("roi", 1, 6) + (
        'layer { name: "p" type: "ROIPooling" bottom: "feat" bottom: "roi" top: "p" '
        'roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 1 } }\n')
    net = CaffeNet(text)
    with pytest.raises(ValueError, match="layer 'p' \\(type ROIPooling\\)"):
        net(feat=np.zeros((1, 2, 5, 5), np.float32), roi=np.array([[1, 0, 0, 2, 2, 1]], np.float32))


def _src(i, size_in, size_out):
    """src = dst * (in-1)/(out-1) in float32 (0 when out == 1), as SPEC section 3 says."""
    r = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0)
    s = np.float32(r * np.float32(i))
    i0 = int(s)
    return i0, min(i0 + 1, size_in - 1), float(np.float32(s - np.float32(i0)))


def interp_ref(x, oh, ow):
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        y0, y1, ly = _src(i, h, oh)
        for j in range(ow):
            x0, x1, lx = _src(j, w, ow)
            out[:, :, i, j] = ((1 - ly) * ((1 - lx) * x[:, :, y0, x0] + lx * x[:, :, y0, x1])
                               + ly * ((1 - lx) * x[:, :, y1, x0] + lx * x[:, :, y1, x1]))
    return out


@pytest.mark.parametrize("oh,ow", [(5, 7), (29, 22), (1, 4), (13, 17)])
def test_interp_align_corners(oh, ow):
    x = rng.standard_normal((2, 3, 13, 17)).astype(np.float32)
    text = inp("x", 2, 3, 13, 17) + f'layer {{ name: "i" type: "Interp" bottom: "x" top: "i" interp_param {{ height: {oh} width: {ow} }} }}'
    net = run(text, x=x)
    np.testing.assert_allclose(np_(net.blobs["i"]), interp_ref(x.astype(np.float64), oh, ow), atol=1e-6)


def test_interp_zoom_shrink_crop_sizes():
    x = rng.standard_normal((1, 1, 9, 11)).astype(np.float32)
    cases = [("zoom_factor: 2", (17, 21)), ("shrink_factor: 2", (5, 6)), ("shrink_factor: 2 zoom_factor: 3", (13, 16)),
             ("height: 4 width: 4 pad_beg: -1 pad_end: -2", (4, 4))]
    for params, shape in cases:
        net = run(inp("x", 1, 1, 9, 11) + f'layer {{ name: "i" type: "Interp" bottom: "x" top: "i" interp_param {{ {params} }} }}', x=x)
        assert tuple(net.blobs["i"].shape[2:]) == shape, params
    # pad_beg -1, pad_end -2: the input cropped to rows/cols [1, size-2) is resized
    np.testing.assert_allclose(np_(net.blobs["i"]), interp_ref(x[:, :, 1:7, 1:9].astype(np.float64), 4, 4), atol=2e-6)


def _interp_caffe_float32(x, oh, ow):
    """caffe_cpu_interp2 in float32, each product and sum rounded on its own (numpy does not
    fuse them): h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d), 1 - lambda in float32."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow), dtype=np.float32)
    one = np.float32(1)
    for i in range(oh):
        y0, y1, ly = _src(i, h, oh)
        ly1 = np.float32(ly)
        ly0 = one - ly1
        for j in range(ow):
            x0, x1, lx = _src(j, w, ow)
            lx1 = np.float32(lx)
            lx0 = one - lx1
            top = lx0 * x[:, :, y0, x0] + lx1 * x[:, :, y0, x1]
            bottom = lx0 * x[:, :, y1, x0] + lx1 * x[:, :, y1, x1]
            out[:, :, i, j] = ly0 * top + ly1 * bottom
    return out


@pytest.mark.parametrize("oh,ow,layout,crop", [(64, 64, "contiguous", None), (29, 22, "channels_last", None),
                                               (1, 4, "contiguous", None), (40, 9, "contiguous", (1, 2, 10, 12))])
def test_interp_bits_are_caffes_expression(oh, ow, layout, crop):
    """caffe_interp's float32 output equals Caffe's expression evaluated in float32, bit for
    bit (downsampling as the student does, upsampling, a crop, a channels_last input)."""
    from mlic.ops.functional import caffe_interp

    x = rng.standard_normal((2, 3, 13, 17)).astype(np.float32)
    if oh == 64:
        x = rng.standard_normal((2, 3, 210, 190)).astype(np.float32)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    ours = caffe_interp(torch.from_numpy(x).contiguous(memory_format=fmt), oh, ow, crop).numpy()
    if crop is not None:
        y0, x0, h, w = crop
        x = x[:, :, y0 : y0 + h, x0 : x0 + w]
    ref = _interp_caffe_float32(x, oh, ow)
    assert ours.dtype == np.float32 and np.array_equal(ours.view(np.int32), ref.view(np.int32))


def test_interp_gradient_is_the_adjoint():
    from mlic.ops.functional import caffe_interp

    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: caffe_interp(t, 8, 3), (x,))


# ----------------------------------------------------------------------------- common layers


def test_inner_product_axis_bias_transpose():
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    text = inp("x", 2, 3, 4) + (
        'layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 5 '
        'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }\n'
        'layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" inner_product_param { num_output: 2 axis: 2 '
        'bias_term: false weight_filler { type: "gaussian" } } }\n'
        'layer { name: "t" type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 2 axis: -1 '
        'transpose: true weight_filler { type: "gaussian" } } }\n'
    )
    net = run(text, x=x)
    wa, ba = (np_(p) for p in net.params["a"])
    assert wa.shape == (5, 12)
    np.testing.assert_allclose(np_(net.blobs["a"]), x.reshape(2, 12) @ wa.T + ba, atol=1e-5)
    (wb,) = (np_(p) for p in net.params["b"])
    np.testing.assert_allclose(np_(net.blobs["b"]), x @ wb.T, atol=1e-5)
    wt = np_(net.params["t"][0])
    assert wt.shape == (4, 2)
    np.testing.assert_allclose(np_(net.blobs["t"]), x @ wt + np_(net.params["t"][1]), atol=1e-5)


def test_relu_negative_slope_in_place():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], np.float32)
    text = inp("x", 1, 5) + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" relu_param { negative_slope: 0.1 } }'
    net = run(text, x=x)
    np.testing.assert_allclose(np_(net.blobs["x"]), [[-0.2, -0.05, 0, 0.5, 3]], rtol=1e-6)


def test_dropout_train_and_test():
    x = np.ones((200, 100), np.float32)
    text = inp("x", 200, 100) + 'layer { name: "d" type: "Dropout" bottom: "x" top: "d" dropout_param { dropout_ratio: 0.25 } }'
    torch.manual_seed(0)
    y = np_(run(text, "TRAIN", x=x).blobs["d"])
    vals = np.unique(y)
    assert len(vals) == 2 and vals[0] == 0 and vals[1] == pytest.approx(1 / 0.75)
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(np_(run(text, "TEST", x=x).blobs["d"]), x)
    net = CaffeNet(text, "TRAIN")
    net.eval()  # eval mode switches it off too
    np.testing.assert_array_equal(np_(net(x=x)["d"]), x)


def test_softmax_axes_and_gradient():
    x = rng.standard_normal((2, 4, 3, 1)).astype(np.float32)
    text = inp("x", 2, 4, 3, 1) + (
        'layer { name: "s1" type: "Softmax" bottom: "x" top: "s1" softmax_param { axis: 1 } }\n'
        'layer { name: "s2" type: "Softmax" bottom: "x" top: "s2" softmax_param { axis: 2 } }\n'
    )
    net = CaffeNet(text, force_backward=True, retain_diffs=True)
    net.forward(x=x)
    xd = x.astype(np.float64)
    for name, ax in (("s1", 1), ("s2", 2)):
        e = np.exp(xd - xd.max(ax, keepdims=True))
        np.testing.assert_allclose(np_(net.blobs[name]), e / e.sum(ax, keepdims=True), rtol=1e-6)
    g = rng.standard_normal((2, 4, 3, 1)).astype(np.float32)
    net.backward({"s1": g})
    y = np_(net.blobs["s1"])
    np.testing.assert_allclose(np_(net.blob_diffs["x"]), (g - (g * y).sum(1, keepdims=True)) * y, atol=1e-6)


def test_eltwise_prod_sum_max():
    a, b, c = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3))
    b[0, 0] = a[0, 0]  # a tie between bottoms 0 and 1: Caffe takes bottom 1
    c[0, 0] = a[0, 0] - 1
    text = inp("a", 3, 4) + inp("b", 3, 4) + inp("c", 3, 4) + (
        'layer { name: "p" type: "Eltwise" bottom: "a" bottom: "b" top: "p" eltwise_param { operation: PROD } }\n'
        'layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "s" eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 } }\n'
        'layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "m" eltwise_param { operation: MAX } }\n'
    )
    net = CaffeNet(text, force_backward=True, retain_diffs=True)
    net.forward(a=a, b=b, c=c)
    np.testing.assert_allclose(np_(net.blobs["p"]), a * b, rtol=1e-6)
    np.testing.assert_allclose(np_(net.blobs["s"]), a - 2 * b + 0.5 * c, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np_(net.blobs["m"]), np.maximum(np.maximum(a, b), c))
    gp, gs, gm = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3))
    net.backward({"p": gp, "s": gs, "m": gm})
    arg = np.where(a > b, 0, 1)
    arg = np.where(c > np.maximum(a, b), 2, arg)
    d = net.blob_diffs
    np.testing.assert_allclose(np_(d["a_a_0_split_0"]), gp * b, rtol=1e-6)
    np.testing.assert_allclose(np_(d["b_b_0_split_0"]), gp * a, rtol=1e-6)
    np.testing.assert_allclose(np_(d["b_b_0_split_1"]), -2 * gs, rtol=1e-6)
    np.testing.assert_array_equal(np_(d["a_a_0_split_2"]), gm * (arg == 0))
    np.testing.assert_array_equal(np_(d["b_b_0_split_2"]), gm * (arg == 1))
    assert np_(d["b_b_0_split_2"])[0, 0] == gm[0, 0] and np_(d["a_a_0_split_2"])[0, 0] == 0


def test_scale_layers_as_in_stage2():
    x = rng.standard_normal((2, 5, 4, 1)).astype(np.float32)
    z = rng.standard_normal((3, 4)).astype(np.float32)
    text = inp("x", 2, 5, 4, 1) + inp("z", 3, 4) + inp("s", 5) + (
        'layer { name: "t1" type: "Scale" bottom: "x" top: "t1" param { lr_mult: 1 decay_mult: 0 } '
        'scale_param { axis: 2 filler { type: "constant" value: 2 } bias_term: false } }\n'
        'layer { name: "t2" type: "Scale" bottom: "x" top: "t2" scale_param { axis: 1 filler { type: "constant" value: 2 } } }\n'
        'layer { name: "zs" type: "Scale" bottom: "z" top: "zs" param { lr_mult: 10 decay_mult: 0 } '
        'scale_param { filler { type: "constant" value: 0.2 } bias_term: false } }\n'
        'layer { name: "all" type: "Scale" bottom: "x" top: "all" scale_param { axis: 1 num_axes: -1 bias_term: true '
        'filler { type: "uniform" } bias_filler { type: "uniform" } } }\n'
        'layer { name: "two" type: "Scale" bottom: "x" bottom: "s" top: "two" }\n'
    )
    s = rng.standard_normal(5).astype(np.float32)
    net = CaffeNet(text, force_backward=True, retain_diffs=True)
    assert tuple(net.params["t1"][0].shape) == (4,) and tuple(net.params["t2"][0].shape) == (5,)
    assert tuple(net.params["zs"][0].shape) == (4,) and net.params["zs"][0].lr_mult == 10
    np.testing.assert_array_equal(np_(net.params["zs"][0]), [np.float32(0.2)] * 4)
    with torch.no_grad():
        net.params["t1"][0].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    net.forward(x=x, z=z, s=s)
    np.testing.assert_allclose(np_(net.blobs["t1"]), x * np.array([1, 2, 3, 4.0])[None, None, :, None], rtol=1e-6)
    np.testing.assert_allclose(np_(net.blobs["t2"]), 2 * x, rtol=1e-6)
    np.testing.assert_allclose(np_(net.blobs["zs"]), z * np.float32(0.2), rtol=1e-6)
    sc, bi = (np_(p) for p in net.params["all"])
    assert sc.shape == bi.shape == (5, 4, 1)
    np.testing.assert_allclose(np_(net.blobs["all"]), x * sc + bi, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np_(net.blobs["two"]), x * s[None, :, None, None], rtol=1e-6)
    g = rng.standard_normal((2, 5, 4, 1)).astype(np.float32)
    net.backward({"t1": g})
    np.testing.assert_allclose(np_(net.params["t1"][0].grad), (g * x).sum((0, 1, 3)), rtol=1e-5)


def test_sigmoid():
    x = np.linspace(-20, 20, 9, dtype=np.float32).reshape(1, 9)
    net = run(inp("x", 1, 9) + 'layer { name: "s" type: "Sigmoid" bottom: "x" top: "s" }', x=x)
    np.testing.assert_allclose(np_(net.blobs["s"]), 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6)


# ----------------------------------------------------------------------------- losses


def loss_net(kind, shape, extra=""):
    dims = " ".join(str(d) for d in shape)
    return (inp("a", *shape) + inp("b", *shape) +
            f'layer {{ name: "l" type: "{kind}" bottom: "a" bottom: "b" top: "l" {extra} }}')


def test_cross_entropy_loss_clamped_value_and_gradient():
    p = np.array([[0.3, 0.99999, 0.0, 0.5], [1.0, 0.7, 0.00001, 0.2]], np.float32)
    t = np.array([[1, 1, 1, 0], [0, 0, 1, 1]], np.float32)
    net = CaffeNet(loss_net("CrossEntropyLoss", (2, 4), "loss_weight: 3 propagate_down: 1 propagate_down: 0"),
                   retain_diffs=True, force_backward=True)
    net.forward(a=p, b=t)
    pd = p.astype(np.float64)
    val = -np.where(t == 1, np.log(np.maximum(pd, 1e-4)), np.log(np.maximum(1 - pd, 1e-4))).sum() / 2
    assert float(net.blobs["l"].detach()) == pytest.approx(val, rel=1e-6)
    assert float(net.objective.detach()) == pytest.approx(3 * val, rel=1e-6)
    net.backward()
    grad = -3 / 2 * (t / np.maximum(pd, 1e-4) + (1 - t) / np.minimum(pd - 1, -1e-4))
    np.testing.assert_allclose(np_(net.blob_diffs["a"]), grad, rtol=1e-6)
    assert grad[0, 2] == pytest.approx(-1.5e4)  # not zero where the value is clamped
    assert np_(net.blob_diffs["l"]) == 3.0


def test_sigmoid_cross_entropy_loss_soft_targets():
    x = np.array([[-30.0, -1.0, 0.0, 2.0], [5.0, 40.0, -0.3, 0.7]], np.float32)
    t = np.array([[0.1, 0.5, 1.0, 0.0], [0.9, 1.0, 0.25, 0.6]], np.float32)
    net = CaffeNet(loss_net("SigmoidCrossEntropyLoss", (2, 4), "loss_weight: 2"), retain_diffs=True,
                   force_backward=True)
    net.forward(a=x, b=t)
    xd = x.astype(np.float64)
    val = np.sum(np.log1p(np.exp(-np.abs(xd))) + np.maximum(xd, 0) - xd * t) / 2  # / num = 2
    assert float(net.blobs["l"].detach()) == pytest.approx(val, rel=1e-6)
    net.backward()
    np.testing.assert_allclose(np_(net.blob_diffs["a"]), 2 * (1 / (1 + np.exp(-xd)) - t) / 2, rtol=1e-5, atol=1e-7)
    assert np.abs(np_(net.blob_diffs["b"])).max() == 0


def test_euclidean_loss_both_gradients():
    a = rng.standard_normal((6, 3)).astype(np.float32)
    b = rng.standard_normal((6, 3)).astype(np.float32)
    net = CaffeNet(loss_net("EuclideanLoss", (6, 3)), retain_diffs=True, force_backward=True)
    net.forward(a=a, b=b)
    d = a.astype(np.float64) - b
    assert float(net.blobs["l"].detach()) == pytest.approx((d**2).sum() / 12, rel=1e-6)
    net.backward()
    np.testing.assert_allclose(np_(net.blob_diffs["a"]), d / 6, rtol=1e-5)
    np.testing.assert_allclose(np_(net.blob_diffs["b"]), -d / 6, rtol=1e-5)


def test_loss_count_mismatch_is_an_error():
    text = inp("a", 2, 4) + inp("b", 2, 3) + 'layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }'
    with pytest.raises(NetBuildError, match="same count"):
        CaffeNet(text)


def test_fillers():
    torch.manual_seed(0)
    text = inp("x", 1, 400) + (
        'layer { name: "g" type: "InnerProduct" bottom: "x" top: "g" inner_product_param { num_output: 300 '
        'weight_filler { type: "gaussian" mean: 1 std: 2 } bias_filler { type: "constant" value: 3 } } }\n'
        'layer { name: "x1" type: "InnerProduct" bottom: "x" top: "x1" inner_product_param { num_output: 300 '
        'weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -2 max: -1 } } }\n'
        'layer { name: "m" type: "InnerProduct" bottom: "x" top: "m" inner_product_param { num_output: 300 '
        'weight_filler { type: "msra" variance_norm: FAN_OUT } } }\n'
    )
    net = CaffeNet(text)
    g, gb = (np_(p) for p in net.params["g"])
    assert abs(g.mean() - 1) < 0.02 and abs(g.std() - 2) < 0.02 and (gb == 3).all()
    xv, xb = (np_(p) for p in net.params["x1"])
    lim = math.sqrt(3 / 400)  # fan_in = count / num_output
    assert xv.max() <= lim and xv.min() >= -lim and abs(xv.std() - lim / math.sqrt(3)) < 0.002
    assert xb.min() >= -2 and xb.max() <= -1
    m = np_(net.params["m"][0])
    assert abs(m.std() - math.sqrt(2 / (300 * 400 / 400))) < 0.002  # fan_out = count / shape[1] = 300
    with pytest.raises(NetBuildError, match="unknown filler type 'bogus'"):
        CaffeNet(inp("x", 1, 4) + 'layer { name: "f" type: "InnerProduct" bottom: "x" top: "f" '
                 'inner_product_param { num_output: 2 weight_filler { type: "bogus" } } }')


def test_human_att_data_tops_can_be_fed(prototxt_ref):
    net = CaffeNet(prototxt_ref / "wsddn_train.prototxt", "TEST")
    assert net.input_names == ["data", "label_roi"]
    assert net.blob_shapes["data"] == (16, 3, 672, 672) and net.blob_shapes["label_roi"] == (16, 80 + 2500)
    with pytest.raises(ValueError, match="input blob\\(s\\) \\['label_roi'\\] not given"):
        net(data=torch.zeros(1, 3, 32, 32))


DATA_LAYER = """layer {{ name: "data" type: "HumanAttData" top: "data" {tops}
  transform_param {{ mirror: true mean_value: 1 mean_value: 2 mean_value: 3 {tscale} }}
  human_att_data_param {{ source: "a.txt" root_folder: "/data/" batch_size: 32 shuffle: true new_width: 672
    new_height: 640 scale_factors: 0.714286 scale_factors: 1 {counts} {extra} }} }}
"""


def _data_layer(tops='top: "label_roi"', counts="att_num: 80 bbox_num: 500", extra="", tscale="scale: 0.5"):
    return DATA_LAYER.format(tops=tops, counts=counts, extra=extra, tscale=tscale)


def test_human_att_data_layer_becomes_the_pipelines_config():
    from mlic.caffe.layers import human_att_data_config
    from mlic.data import HumanAttDataConfig

    net = CaffeNet(_data_layer(), "TRAIN")
    cfg, tops = net.human_att_data()
    assert tops == ["data", "label_roi"]
    assert cfg == HumanAttDataConfig(source="a.txt", root_folder="/data/", batch_size=32, shuffle=True, new_width=672,
                                     new_height=640, scale_factors=(float(np.float32(0.714286)), 1.0),  # float in Caffe
                                     att_num=80, bbox_num=500,
                                     mirror=True, mean_values=(1, 2, 3), scale=0.5)
    assert net.human_att_data(source="b.txt", batch_size=2)[0].source == "b.txt"
    # human_att_data_param's own scale counts only where transform_param has none
    lp = CaffeNet(_data_layer(extra="scale: 0.25", tscale=""), "TRAIN").layer_params[0]
    assert human_att_data_config(lp).scale == 0.25
    lp = CaffeNet(_data_layer(extra="scale: 0.25"), "TRAIN").layer_params[0]
    assert human_att_data_config(lp).scale == 0.5


@pytest.mark.parametrize("counts, field", [("bbox_num: 500", "att_num"), ("att_num: 80", "bbox_num")])
def test_human_att_data_without_its_counts_is_refused_where_the_prototxt_is_read(tmp_path, counts, field):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\n' + _data_layer(counts=counts))
    with pytest.raises(NetBuildError, match=rf"^{path}:2: layer 'data' \(type HumanAttData\): human_att_data_param "
                                            rf"has no {field} \(the number of (labels|boxes) per image, which sizes "
                                            r"its top 'label_roi'\)$"):
        CaffeNet(path, "TRAIN")
    # a layer with only the data top does not need them
    CaffeNet(_data_layer(tops="", counts=counts), "TRAIN")


@pytest.mark.parametrize("extra, fragment", [
    ("crop_size: 224", "crop_size is not supported"), ("mean_file: 'm.binaryproto'", "mean_file is not supported"),
    ("is_color: false", "is_color: false is not supported"), ("rand_skip: 3", "rand_skip is not supported"),
])
def test_human_att_data_options_the_pipeline_lacks_are_refused(extra, fragment):
    with pytest.raises(NetBuildError, match=rf"layer 'data' \(type HumanAttData\): {fragment}"):
        CaffeNet(_data_layer(extra=extra), "TRAIN")


def test_net_data_layer_needs_exactly_one():
    two = _data_layer() + _data_layer().replace('name: "data"', 'name: "data2"').replace('top: "data"', 'top: "d2"') \
        .replace('top: "label_roi"', 'top: "lr2"')
    with pytest.raises(NetBuildError, match=r"needs exactly one HumanAttData layer .* found 2"):
        CaffeNet(two, "TRAIN").human_att_data()
    with pytest.raises(NetBuildError, match=r"found 0"):
        CaffeNet(inp("x", 1, 3), "TRAIN").human_att_data()
