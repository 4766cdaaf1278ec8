"""The ops under autocast: their Autocast kernels cast float16/bfloat16 inputs to float32,
compute and return float32 (autocast's float32 list), and gradients reach the inputs in
their own dtype - so reduced-precision features meet float32 RoIs without a dtype error."""
import pytest
import torch

from mlic import ops as mops
from tests.ops.kernel_utils import (
    EMULATED_CUDA, KERNEL_DEVICES, assert_same, backend_of, device_or_skip, distinct_features, requires_ext,
)

pytestmark = requires_ext


def _autocast(dev):
    # CPU autocast computes in bfloat16, CUDA autocast in float16 (their defaults)
    return torch.autocast(device_type=dev.type)


def _low(dev):
    return torch.bfloat16 if dev.type == "cpu" else torch.float16


def _calls(be, rois):
    return {
        "roi_pool": lambda f: mops.roi_pool(f, rois, 2, 3, spatial_scale=0.5, score_scale=2.0, backend=be),
        "roi_spp": lambda f: mops.roi_spp(f, rois, [1, 2], spatial_scale=0.5, backend=be),
        "spp": lambda f: mops.spp(f, 2, "max", backend=be),
        "caffe_pool2d": lambda f: mops.caffe_pool2d(f, 3, 2, 1, "ave", backend=be),
    }


@pytest.mark.parametrize("op", ["roi_pool", "roi_spp", "spp", "caffe_pool2d"])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_pooling_ops_run_in_float32_under_autocast(device, op):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(1)
    low = _low(dev)
    f = distinct_features(2, 3, 8, 10, g, spacing=0.25).to(dev, low).requires_grad_()
    rois = torch.tensor([[0, 0, 0, 15, 13, 0.5], [1, 2, 3, 9, 12, 1.0]], device=dev)  # float32, as the data gives
    call = _calls(backend_of(device), rois)[op]
    with _autocast(dev):
        out = call(f)
    assert out.dtype == torch.float32
    f32 = f.detach().float().requires_grad_()
    want = call(f32)  # outside autocast: the float32 op on the same (rounded) values
    assert_same(out, want, what=f"{op} under autocast")
    g_out = torch.randn(want.shape, generator=g).to(dev)
    out.backward(g_out)
    want.backward(g_out)
    assert f.grad.dtype == low
    assert_same(f.grad.float(), f32.grad.to(low).float(), dtype=low, what=f"{op} gradient", grad=True)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_two_stream_runs_in_float32_under_autocast(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(2)
    low = _low(dev)
    shape = (1, 4, 3) if device == EMULATED_CUDA else (2, 30, 7)
    cls = torch.randn(shape, generator=g).to(dev, low).requires_grad_()
    det = torch.randn(shape, generator=g).to(dev, low).requires_grad_()
    with _autocast(dev):
        image, region = mops.wsddn_two_stream(cls, det, backend=backend_of(device))
    assert image.dtype == region.dtype == torch.float32
    c32, d32 = cls.detach().float().requires_grad_(), det.detach().float().requires_grad_()
    wi, wr = mops.wsddn_two_stream(c32, d32, backend=backend_of(device))
    assert_same(image, wi, what="image scores")
    assert_same(region, wr, what="region scores")
    (image.sum() + (region * region).sum()).backward()
    (wi.sum() + (wr * wr).sum()).backward()
    assert cls.grad.dtype == det.grad.dtype == low
    assert_same(cls.grad.float(), c32.grad.to(low).float(), dtype=low, what="d cls", grad=True)


def test_float64_stays_float64_under_autocast():
    f = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, 0, 0, 4, 4, 1.0]], dtype=torch.float64)
    with torch.autocast("cpu"):
        out = mops.roi_pool(f, rois, 2, 2)
    assert out.dtype == torch.float64


def test_wsddn_port_under_cpu_autocast():
    """What failed before the Autocast kernels: the WSDDN teacher's conv features in
    bfloat16 meet float32 RoIs ("features and rois must have the same dtype")."""
    from prototxt_ports import NetConfig, WSDDN

    torch.manual_seed(0)
    cfg = NetConfig(num_classes=4, num_rois=5, input_size=64, width=0.0625, fc_dim=16, pooled_size=2)
    net = WSDDN(cfg)
    data = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[0, 0, 63, 63, 1.0], [5, 5, 30, 40, 0.5], [10, 0, 63, 20, 0.2], [0, 30, 20, 63, 0.9],
                          [20, 20, 40, 40, 0.7]])
    list_roi = boxes.reshape(1, -1).repeat(2, 1)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    with torch.autocast("cpu"):
        out = net(data, list_roi=list_roi, labels=labels)
    assert out["image_level_score"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
