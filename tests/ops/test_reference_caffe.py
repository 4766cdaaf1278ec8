"""The pure-PyTorch references and the Caffe geometry rules against real Caffe outputs
(tests/fixtures/caffe)."""
import pytest
import torch

from mlic.ops.reference import (
    caffe_pool2d_ref,
    roi_pool_ref,
    spp_ref,
    wsddn_two_stream_ref,
)
from mlic.ops.geometry import single_scale_rois, wsd_roigen
from tests.ops.caffe_cases import assert_forward_close, assert_grad_close, layer_text, load_case, param, t


@pytest.fixture
def roi_case(caffe_ref):
    return load_case(caffe_ref / "roi_pool.npz")


def test_wsd_roigen_matches_caffe(roi_case):
    rois = wsd_roigen(t(roi_case, "input/list_roi"))
    assert torch.equal(rois, t(roi_case, "blob/roi"))


def test_wsd_roigen_single_scale_matches_caffe(roi_case):
    text = layer_text(str(roi_case["prototxt"]), "roi_small")
    single, origin = param(text, "single_scale"), param(text, "origin_scale")
    rois = single_scale_rois(wsd_roigen(t(roi_case, "input/list_roi")), single, origin)
    # rounded coordinates are integers: exact
    assert torch.equal(rois, t(roi_case, "blob/roi_small"))


def test_roi_pool_matches_caffe(roi_case):
    text = layer_text(str(roi_case["prototxt"]), "pool")
    out, argmax = roi_pool_ref(
        t(roi_case, "input/feat"),
        t(roi_case, "blob/roi"),
        int(param(text, "pooled_h")),
        int(param(text, "pooled_w")),
        spatial_scale=param(text, "spatial_scale", 1.0),
        score_scale=param(text, "score_scale", 1.0),
        score_bias=param(text, "score_bias", 0.0),
    )
    caffe = t(roi_case, "blob/pool")
    assert_forward_close(out, caffe, "pool")
    # the case has empty bins (argmax -1, output exactly 0) and bins on the constant patch
    assert (argmax == -1).any()
    assert torch.all(out[argmax == -1] == 0)
    assert torch.all(caffe[argmax == -1] == 0)


def test_roi_pool_on_caffe_inputs_recovers_argmax(roi_case):
    """Caffe's case has no argmax top; check that dividing the output by the score factor
    gives back exactly the feature value our argmax points at."""
    text = layer_text(str(roi_case["prototxt"]), "pool")
    feat, rois = t(roi_case, "input/feat"), t(roi_case, "blob/roi")
    ph, pw = int(param(text, "pooled_h")), int(param(text, "pooled_w"))
    _, argmax = roi_pool_ref(feat, rois, ph, pw, spatial_scale=param(text, "spatial_scale"))
    caffe = t(roi_case, "blob/pool")
    factor = (param(text, "score_scale") * rois[:, 5] + param(text, "score_bias")).float()
    k, c = caffe.shape[:2]
    planes = feat[rois[:, 0].long()].reshape(k, c, -1)
    picked = torch.where(argmax >= 0, planes.gather(2, argmax.clamp(min=0).long().reshape(k, c, -1)).reshape(argmax.shape),
                         torch.zeros(()))
    assert_forward_close(picked * factor[:, None, None, None], caffe, "pool via argmax")


@pytest.fixture
def pool_case(caffe_ref):
    return load_case(caffe_ref / "interp_pool_spp.npz")


# consumers of x in layer order; Caffe's split k feeds the k-th of them
POOL_TOPS = ["down", "up", "pmax", "pave", "pceil", "spp_max", "spp_ave"]


def _pool_fn(prototxt: str, top: str):
    text = layer_text(prototxt, top)
    mode = {"MAX": "max", "AVE": "ave"}[param(text, "pool")]
    if 'type: "SPP"' in text:
        height = int(param(text, "pyramid_height"))
        return lambda x: spp_ref(x, height, mode)
    k = int(param(text, "kernel_size"))
    s = int(param(text, "stride", 1.0))
    p = int(param(text, "pad", 0.0))
    return lambda x: caffe_pool2d_ref(x, k, s, p, mode)


def _interp_align_corners(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Caffe Interp (bilinear, corners aligned, source position in float32); autograd gives its adjoint."""
    def axis(size_in, size_out):
        ratio = torch.tensor((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0, dtype=torch.float32)
        src = torch.arange(size_out, dtype=torch.float32) * ratio
        i0 = src.long()
        lam = (src - i0.float()).to(x.dtype)
        return i0, i0 + (i0 < size_in - 1).long(), lam

    h0, h1, lh = axis(x.shape[2], out_h)
    w0, w1, lw = axis(x.shape[3], out_w)
    rows = x[:, :, h0, :] * (1 - lh)[:, None] + x[:, :, h1, :] * lh[:, None]
    return rows[..., w0] * (1 - lw) + rows[..., w1] * lw


@pytest.mark.parametrize("top", ["pmax", "pave", "pceil", "spp_max", "spp_ave"])
def test_pool_and_spp_match_caffe(pool_case, top):
    proto = str(pool_case["prototxt"])
    x = t(pool_case, "input/x").requires_grad_()
    y = _pool_fn(proto, top)(x)
    assert_forward_close(y, t(pool_case, f"blob/{top}"), top)
    (g,) = torch.autograd.grad(y, x, t(pool_case, f"diff/{top}"))
    split = POOL_TOPS.index(top)
    assert_grad_close(g, t(pool_case, f"diff/x_x_0_split_{split}"), f"{top} backward")


def test_pool_case_total_gradient(pool_case):
    """diff/x is the sum over all consumers, the two Interp layers included."""
    proto = str(pool_case["prototxt"])
    x = t(pool_case, "input/x").requires_grad_()
    total = torch.zeros_like(x)
    for top in POOL_TOPS:
        if top in ("down", "up"):
            text = layer_text(proto, top)
            y = _interp_align_corners(x, int(param(text, "height")), int(param(text, "width")))
            split = POOL_TOPS.index(top)
            assert_forward_close(y, t(pool_case, f"blob/{top}"), top)
            (g,) = torch.autograd.grad(y, x, t(pool_case, f"diff/{top}"))
            assert_grad_close(g, t(pool_case, f"diff/x_x_0_split_{split}"), f"{top} backward")
        else:
            y = _pool_fn(proto, top)(x)
            (g,) = torch.autograd.grad(y, x, t(pool_case, f"diff/{top}"))
        total += g
    assert_grad_close(total, t(pool_case, "diff/x"), "x")


@pytest.mark.parametrize("mode", ["max", "ave"])
def test_spp_only_matches_caffe(caffe_ref, mode):
    case = load_case(caffe_ref / "spp_only.npz")
    text = layer_text(str(case[f"{mode}/prototxt"]), "spp")
    height = int(param(text, "pyramid_height"))
    assert param(text, "pool") == mode.upper()
    x = t(case, f"{mode}/input/x").requires_grad_()
    y = spp_ref(x, height, mode)
    assert_forward_close(y, t(case, f"{mode}/blob/spp"), f"spp {mode}")
    (g,) = torch.autograd.grad(y, x, t(case, f"{mode}/topdiff/spp"))
    assert_grad_close(g, t(case, f"{mode}/diff/x"), f"spp {mode} backward")


@pytest.fixture
def head_case(caffe_ref):
    return load_case(caffe_ref / "wsddn_head.npz")


def test_two_stream_forward_matches_caffe(head_case):
    # Caffe's blobs are N x R x C x 1 (the class axis is 2, regions 1)
    cls = t(head_case, "blob/reshape_branch1")[..., 0]
    det = t(head_case, "blob/reshape_branch2")[..., 0]
    weights = t(head_case, "param/image_level_score/0")
    assert torch.all(weights == 1)  # the region sum is a plain sum in this case
    image, region = wsddn_two_stream_ref(cls, det)
    assert_forward_close(region, t(head_case, "blob/proposal_class_score")[..., 0], "proposal_class_score")
    assert_forward_close(image, t(head_case, "blob/image_level_score")[:, 0, :, 0], "image_level_score")
    # the two softmaxes the product is made of
    assert_forward_close(torch.softmax(cls, 2), t(head_case, "blob/class_score")[..., 0], "class_score")
    assert_forward_close(torch.softmax(det, 1), t(head_case, "blob/proposal_score")[..., 0], "proposal_score")


@pytest.mark.parametrize("source", ["image_level_score", "proposal_class_score"])
def test_two_stream_backward_matches_caffe(head_case, source):
    cls = t(head_case, "blob/reshape_branch1")[..., 0].requires_grad_()
    det = t(head_case, "blob/reshape_branch2")[..., 0].requires_grad_()
    image, region = wsddn_two_stream_ref(cls, det)
    if source == "image_level_score":
        # the region sum's gradient is the image gradient broadcast over regions
        out, grad = image, t(head_case, "diff/image_level_score")[:, 0, :, 0]
    else:
        out, grad = region, t(head_case, "diff/proposal_class_score")[..., 0]
    gc, gd = torch.autograd.grad(out, (cls, det), grad)
    assert_grad_close(gc, t(head_case, "diff/reshape_branch1")[..., 0], "reshape_branch1")
    assert_grad_close(gd, t(head_case, "diff/reshape_branch2")[..., 0], "reshape_branch2")
