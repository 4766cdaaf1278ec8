"""The ports run their conv bodies channels_last (what build_task sets up) or N x C x H x W:
the same blobs and gradients either way, up to the convolutions' order of sums."""
import copy

import pytest
import torch

from mlic.training.tasks import Switches, build_task
from tests.ops.kernel_utils import requires_ext
from tests.ports.helpers import make_inputs, small_cfg

pytestmark = requires_ext


def _batch(data, label_roi, classes, rois):
    from mlic.data import HumanAttBatch

    n, _, h, w = data.shape
    return HumanAttBatch(pixels=torch.zeros(n, h, w, 3, dtype=torch.uint8), label_roi=label_roi, att_num=classes,
                         bbox_num=rois, indices=torch.arange(n), mirrored=torch.zeros(n, dtype=torch.bool), _data=data)


@pytest.mark.parametrize("stage,switches", [("wsddn", Switches()), ("student", Switches()),
                                            ("stage1", Switches(regions="topk", topk=3)),
                                            ("stage2", Switches(kd_loss="l2"))])
def test_channels_last_computes_what_nchw_computes(stage, switches):
    cfg = small_cfg(dropout=0.0)
    torch.manual_seed(0)
    nchw = build_task(stage, cfg, switches, memory_format="contiguous")
    last = copy.deepcopy(nchw)
    last.model = last.model.set_memory_format("channels_last")
    convs = [m for m in last.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    data, label_roi = make_inputs(classes=cfg.num_classes, rois=cfg.num_rois, size=cfg.input_size)
    batch = _batch(data, label_roi, cfg.num_classes, cfg.num_rois)
    losses, grads = [], []
    for task in (nchw, last):
        out = task.step(task.model, batch)
        out["loss"].backward()
        losses.append(out["loss"].detach())
        grads.append({n: p.grad for n, p in task.model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5 * (1 + float(g.abs().max())),
                                   msg=lambda m: f"{stage} {name}: {m}")


def test_unknown_memory_format_is_refused():
    with pytest.raises(ValueError, match="memory format must be one of contiguous, channels_last"):
        build_task("student", small_cfg(), memory_format="nhwc")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_body_pools_before_relu_with_the_same_bits(layout):
    """The body runs ReLU after a conv's max pool (a quarter of the elements). Against the
    released order, layer by layer (conv, ReLU, then Caffe's pooling reference), on an input
    whose windows hold ties and negative maxima: the same output and the same gradients of
    the input and of every weight, bit for bit."""
    import torch.nn.functional as F

    from mlic.ops.reference import caffe_pool2d_ref
    from prototxt_ports.vgg import VGG16

    cfg = small_cfg()
    torch.manual_seed(3)
    body = VGG16(cfg)
    for m in body.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = torch.randint(-2, 3, m.weight.shape).float() / 4  # exact sums: ties survive
            m.bias.data = torch.randint(-2, 3, m.bias.shape).float() / 4
    body.set_memory_format(layout)
    ref = copy.deepcopy(body)
    x = torch.randint(-2, 3, (2, 3, 30, 26)).float()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = body.run_body(xa)
    y = xb.contiguous(memory_format=body.memory_format)
    zero_windows = 0
    for kind, name in ref.body_plan:
        if kind == "conv":
            y = F.relu(getattr(ref, name)(y))
        else:
            zero_windows += int((caffe_pool2d_ref(y.detach(), 2, 2, 0, "max") == 0).sum())
            y = caffe_pool2d_ref(y, 2, 2, 0, "max")
    assert zero_windows > 0, "no window without a positive value: the test would not see ReLU's zero gradient"
    assert torch.equal(out, y)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    out.backward(g)
    y.backward(g)
    assert torch.equal(xa.grad, xb.grad)
    for (name, p), q in zip(body.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), name
