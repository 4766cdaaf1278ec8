"""The compiled ops directly against real Caffe outputs (tests/fixtures/caffe; skipped without the extension)."""
import pytest
import torch

from mlic import ops as mops
from mlic.ops.geometry import wsd_roigen
from tests.ops.caffe_cases import assert_forward_close, assert_grad_close, layer_text, load_case, param, t
from tests.ops.kernel_utils import KERNEL_DEVICES, backend_of, device_or_skip, requires_ext

pytestmark = requires_ext


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_roi_pool_matches_caffe(caffe_ref, device):
    dev, be = device_or_skip(device), backend_of(device)
    case = load_case(caffe_ref / "roi_pool.npz")
    text = layer_text(str(case["prototxt"]), "pool")
    rois = wsd_roigen(t(case, "input/list_roi"))
    out = mops.roi_pool(
        t(case, "input/feat").to(dev), rois.to(dev), int(param(text, "pooled_h")), int(param(text, "pooled_w")),
        spatial_scale=param(text, "spatial_scale"), score_scale=param(text, "score_scale"),
        score_bias=param(text, "score_bias"), backend=be)
    assert_forward_close(out.cpu(), t(case, "blob/pool"), "pool")


@pytest.mark.parametrize("mode", ["max", "ave"])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_spp_only_matches_caffe(caffe_ref, device, mode):
    dev, be = device_or_skip(device), backend_of(device)
    case = load_case(caffe_ref / "spp_only.npz")
    height = int(param(layer_text(str(case[f"{mode}/prototxt"]), "spp"), "pyramid_height"))
    x = t(case, f"{mode}/input/x").to(dev).requires_grad_()
    y = mops.spp(x, height, mode, backend=be)
    assert_forward_close(y.detach().cpu(), t(case, f"{mode}/blob/spp"), f"spp {mode}")
    y.backward(t(case, f"{mode}/topdiff/spp").to(dev))
    assert_grad_close(x.grad.cpu(), t(case, f"{mode}/diff/x"), f"spp {mode} backward")


@pytest.mark.parametrize("top,split", [("pmax", 2), ("pave", 3), ("pceil", 4), ("spp_max", 5), ("spp_ave", 6)])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_pool_and_spp_match_caffe(caffe_ref, device, top, split):
    dev, be = device_or_skip(device), backend_of(device)
    case = load_case(caffe_ref / "interp_pool_spp.npz")
    text = layer_text(str(case["prototxt"]), top)
    mode = param(text, "pool").lower()
    x = t(case, "input/x").to(dev).requires_grad_()
    if 'type: "SPP"' in text:
        y = mops.spp(x, int(param(text, "pyramid_height")), mode, backend=be)
    else:
        y = mops.caffe_pool2d(x, int(param(text, "kernel_size")), int(param(text, "stride", 1.0)),
                              int(param(text, "pad", 0.0)), mode, backend=be)
    assert_forward_close(y.detach().cpu(), t(case, f"blob/{top}"), top)
    y.backward(t(case, f"diff/{top}").to(dev))
    assert_grad_close(x.grad.cpu(), t(case, f"diff/x_x_0_split_{split}"), f"{top} backward")


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_two_stream_matches_caffe(caffe_ref, device):
    dev, be = device_or_skip(device), backend_of(device)
    case = load_case(caffe_ref / "wsddn_head.npz")
    cls = t(case, "blob/reshape_branch1")[..., 0].to(dev).requires_grad_()
    det = t(case, "blob/reshape_branch2")[..., 0].to(dev).requires_grad_()
    image, region = mops.wsddn_two_stream(cls, det, backend=be)
    assert_forward_close(region.detach().cpu(), t(case, "blob/proposal_class_score")[..., 0], "proposal_class_score")
    assert_forward_close(image.detach().cpu(), t(case, "blob/image_level_score")[:, 0, :, 0], "image_level_score")
    image.backward(t(case, "diff/image_level_score")[:, 0, :, 0].to(dev))
    assert_grad_close(cls.grad.cpu(), t(case, "diff/reshape_branch1")[..., 0], "reshape_branch1")
    assert_grad_close(det.grad.cpu(), t(case, "diff/reshape_branch2")[..., 0], "reshape_branch2")
