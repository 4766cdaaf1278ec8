import torch

from mlic.study.standin import NormalizedBody
from prototxt_ports import NetConfig, Student

BODY = ("conv1_1:4", "pool1", "conv2_1:6", "pool2", "conv3_1:8")


def test_folded_body_computes_what_the_normalised_one_does():
    """The stand-in's BatchNorm folded into the weights gives the same fc7 (eval mode) in
    the student port, which has no normalisation."""
    torch.manual_seed(0)
    cfg = NetConfig(num_classes=3, num_rois=4, input_size=32, student_size=32, fc_dim=10, pooled_size=2, dropout=0.0,
                    body=BODY)
    net = NormalizedBody(cfg)
    with torch.no_grad():  # statistics and affine parameters far from the identity
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.2, 3.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.3)
    net.eval()
    student = Student(cfg, head=False).eval()
    missing, unexpected = student.load_state_dict(net.folded_state(), strict=False)
    assert not missing and not unexpected
    x = torch.randn(5, 3, 32, 32)
    ours = student(x)["fc7"]
    ref = net.features(x)
    assert ours.abs().max() > 0.1  # not a trivially dead net
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_relu_after_the_pool_gives_the_released_order_bit_for_bit():
    """features() runs ReLU after each conv's max pool; against conv, BatchNorm, ReLU, pool
    layer by layer (training mode, ties and all-negative windows on purpose): the same fc7
    and the same gradients of the input and of every parameter."""
    import copy

    import torch.nn.functional as F

    torch.manual_seed(1)
    cfg = NetConfig(num_classes=3, num_rois=4, input_size=32, student_size=32, fc_dim=10, pooled_size=2, dropout=0.0,
                    body=BODY)
    net = NormalizedBody(cfg)
    ref = copy.deepcopy(net)
    x = torch.randint(-2, 3, (4, 3, 32, 32)).float()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = net.features(xa)
    y = xb
    for name in ref.plan + ["pool"]:
        if name == "pool":
            y = F.max_pool2d(y, 2, 2, ceil_mode=True)
        else:
            y = F.relu(ref.layers[name + "_bn"](ref.layers[name](y)))
    y = y.flatten(1)
    for name in ("fc6", "fc7"):
        y = F.relu(ref.layers[name + "_bn"](ref.layers[name](y)))
    assert torch.equal(ours, y)
    g = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2))
    ours.backward(g)
    y.backward(g)
    assert torch.equal(xa.grad, xb.grad)
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        if name.startswith("head."):  # not part of features()
            continue
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(net.named_buffers(), ref.buffers()):
        assert torch.equal(b, c), name
