"""KD stage ports against CaffeNet built from the released train_stage1 / train_stage2
(small sizes) and from SPEC-written definitions, against Caffe's mini_stage1/2 cases,
one SGD step each, and the SPEC section 8 switches."""
import math

import numpy as np
import pytest
import torch

from mlic.caffe import CaffeNet
from mlic.caffe.weights import load_param_dict
from mlic.solver import CaffeSGD
from mlic.caffe.weights import load_port
from prototxt_ports import KDStage1, KDStage2, NetConfig
from prototxt_ports.losses import probability_l2_loss
from tests.conftest import DEVICES
from tests.ports.helpers import (SMALL, changed, close, make_inputs, randomize_, sgd_step, small_cfg, small_prototxt,
                                 snapshot, spec_prototxt)

C, B, S = SMALL["classes"], SMALL["rois"], SMALL["student_size"]
RELEASED = {"stage1": "train_stage1", "stage2": "train_stage2"}


@pytest.fixture(params=["released", "spec"])
def source(request):
    if request.param == "released":
        return request.getfixturevalue("prototxt_ref")
    return None


def _net(source, stage, phase):
    if source is None:
        return CaffeNet(spec_prototxt(stage, small_cfg()), phase), {}
    text = small_prototxt((source / f"{RELEASED[stage]}.prototxt").read_text())
    # the released blob names keep "224" although the small net resizes to S
    names = {f"data_size{S}": "data_size224", f"roi_{S}": "roi_224", f"roi_pooling_{S}": "roi_pooling_224"}
    return CaffeNet(text, phase), names


def _port(stage, seed=0, **kw):
    torch.manual_seed(seed)
    port = (KDStage1 if stage == "stage1" else KDStage2)(small_cfg(), **kw)
    randomize_(port)
    return port


STAGE_BLOBS = {
    "stage1": ["label", "list_roi", "roi", f"roi_{S}", "conv_wsd_1_1", "pool_wsd_2", "conv_wsd_5_3", "roi_pooling",
               "fc_wsd_6", "fc_wsd_7", f"data_size{S}", "conv1_1", "pool3", "conv5_3", f"roi_pooling_{S}", "fc6",
               "fc7", "loss_euclid"],
    "stage2": ["label", "list_roi", "roi", "conv_wsd_5_3", "roi_pooling", "fc_wsd_6", "fc_wsd_7", "fc_wsd_8_c",
               "reshape_branch1", "temp_branch1_learn", "fc_wsd_8_d", "reshape_branch2", "temp_branch2_learn",
               "class_score", "proposal_score", "proposal_class_score", "image_level_score", f"data_size{S}",
               "conv1_1", "conv5_3", "pool5", "fc6", "fc7", "fc8_mscoco", "fc8_mscoco_soft", "loss_soft",
               "loss_sig"],
}


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_stage_matches_caffenet(source, stage, phase):
    port = _port(stage)
    net, names = _net(source, stage, phase)
    assert load_param_dict(net, port.param_dict(), strict=True).complete
    data, label_roi = make_inputs(seed=7)
    port.train(phase == "TRAIN")
    net.train(phase == "TRAIN")
    torch.manual_seed(11)  # the same dropout masks: both draw teacher drop6, drop7, then student drop6, drop7
    net(data=data, label_roi=label_roi)
    net.backward()
    torch.manual_seed(11)
    out = port(data, label_roi, all_blobs=True)
    out["loss"].backward()
    for name in STAGE_BLOBS[stage]:
        close(out[name], net.blobs[names.get(name, name)], what=name)
    total = sum(float(net.blobs[t].detach()) * w for t, w in net.loss_tops.items())
    close(out["loss"], torch.tensor(total), what="objective")
    diffs = net.param_diffs()
    for (layer, i), p in port.caffe_param_map().items():
        if p in set(port.teacher.parameters()):
            assert p.grad is None, f"teacher {layer}/{i} got a gradient"
            assert not diffs[f"{layer}/{i}"].any()
        else:
            close(p.grad, diffs[f"{layer}/{i}"], what=f"grad {layer}/{i}")


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_param_specs_follow_the_prototxt(source, stage):
    port = _port(stage)
    net, _ = _net(source, stage, "TRAIN")
    ours = [(name, lr, dm, tuple(p.shape)) for name, p, lr, dm in port.param_specs()]
    theirs = [(g["name"], g["lr_mult"], g["decay_mult"], tuple(g["params"][0].shape)) for g in net.param_groups()]
    assert ours == theirs


MINI = dict(num_classes=4, num_rois=6, input_size=96, student_size=32, pooled_size=3, spatial_scale=0.125, fc_dim=24,
            body=("conv1_1:8", "pool1", "conv2_1:8", "pool2", "pool3", "conv5_3:16"))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_mini_stage_against_caffe(caffe_ref, stage):
    """Caffe's mini KD cases (TEST phase). In mini_stage1 the student convs have lr_mult 0
    (no CPU RoI-pooling backward in the fork), so only fc6/fc7 gradients are Caffe's."""
    z = np.load(caffe_ref / f"mini_{stage}.npz")
    port = (KDStage1 if stage == "stage1" else KDStage2)(NetConfig(**MINI)).eval()
    params = {k[6:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("param/")}
    assert load_port(port, params, strict=True).complete
    out = port(torch.from_numpy(z["input/data"]), torch.from_numpy(z["input/label_roi"]), all_blobs=True)
    blobs = [k[5:] for k in z.files if k.startswith("blob/") and "_split" not in k
             and k[5:] not in ("data", "label_roi")]
    assert len(blobs) > 20
    for name in blobs:
        close(out[name], z[f"blob/{name}"], what=name)
    out["loss"].backward()
    for (layer, i), p in port.caffe_param_map().items():
        ref = z[f"param_diff/{layer}/{i}"]
        if layer.startswith(("conv_wsd", "fc_wsd", "temp_", "image_level")):
            assert p.grad is None and not ref.any(), f"teacher {layer}/{i}"
        elif stage == "stage1" and layer.startswith("conv"):
            assert not ref.any()  # not computed by Caffe here
        else:
            close(p.grad, ref, what=f"grad {layer}/{i}")


# ----------------------------------------------------------------------------- training steps


STAGE1_LEARNS = {"conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
                 "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7"}


def _layers(names):
    return {n.rsplit("/", 1)[0] for n in names}


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_one_sgd_step(stage):
    port = _port(stage).eval()  # no dropout: the two losses see the same net
    data, label_roi = make_inputs(seed=2)
    out = port(data, label_roi)
    out["loss"].backward()
    for name, p, lr, _ in port.param_specs():
        if name.split("/")[0] in _layers(n for n, *_ in port.teacher.param_specs()):
            assert p.grad is None, name  # temperatures included
    before = snapshot(port)
    sgd_step(port, lr=1e-4 if stage == "stage1" else 1e-3)
    after = port(data, label_roi)
    assert float(after["loss"].detach()) < float(out["loss"].detach())
    moved = _layers(changed(before, port))
    if stage == "stage1":
        assert moved == STAGE1_LEARNS
        assert not any(k.startswith("fc8") for k in port.state_dict())
    else:
        assert moved == STAGE1_LEARNS | {"fc8_mscoco", "fc8_mscoco_soft"}
    # every blob of a moved layer moved (weights and biases)
    assert {n for n in changed(before, port)} == {n for n in before if n.split("/")[0] in moved}


@pytest.mark.parametrize("teacher", ["caffe-decay", "frozen"])
def test_teacher_weight_decay(teacher):
    """Caffe SGD with weight decay: the released teacher (lr_mult kept) shrinks without a
    gradient, the frozen one does not; temperatures (decay_mult 0) stay at 2."""
    port = _port("stage2", teacher=teacher).eval()
    opt = CaffeSGD(port.param_groups(), base_lr=0.1, momentum=0.9, weight_decay=0.1)
    data, label_roi = make_inputs(seed=2)
    w0 = port.teacher.conv_wsd_3_1.weight.detach().clone()
    h0 = port.teacher.fc_wsd_8_c.weight.detach().clone()
    port(data, label_roi)["loss"].backward()
    opt.step()
    w1 = port.teacher.conv_wsd_3_1.weight.detach()
    h1 = port.teacher.fc_wsd_8_c.weight.detach()
    if teacher == "caffe-decay":
        close(w1, w0 * (1 - 0.1 * 0.1 * 1), rel=1e-6, what="conv decay (lr 1, decay 1)")
        close(h1, h0 * (1 - 0.1 * 10 * 0.1 * 10), rel=1e-6, what="head decay (lr 10, decay 10)")
    else:
        assert torch.equal(w1, w0) and torch.equal(h1, h0)
    assert torch.all(port.teacher.temp_branch1_learn.weight == 2)
    assert torch.all(port.teacher.temp_branch2_learn.weight == 2)
    assert torch.all(port.teacher.image_level_score.weight == 1)


# ----------------------------------------------------------------------------- switches


def test_frozen_teacher():
    for stage in ("stage1", "stage2"):
        port = _port(stage, teacher="frozen")
        specs = {name: (p, lr, dm) for name, p, lr, dm in port.param_specs()}
        teacher_params = set(port.teacher.parameters())
        for name, (p, lr, dm) in specs.items():
            if p in teacher_params:
                assert (lr, dm) == (0, 0) and not p.requires_grad, name
        assert specs["conv1_1/0"][1:] == (1, 1) and specs["conv1_1/1"][1:] == (2, 0)
    released = _port("stage2")
    assert released.teacher.conv_wsd_1_1.weight.requires_grad
    assert dict((n, lr) for n, _, lr, _ in released.param_specs())["temp_branch1_learn/0"] == 1


def test_stage1_convs_only():
    port = _port("stage1", stage1_train="convs").eval()
    specs = {name: (lr, dm) for name, _, lr, dm in port.param_specs()}
    assert specs["fc6/0"] == specs["fc7/1"] == (0, 0)
    assert specs["conv5_3/0"] == (1, 1)
    assert not port.student.fc6.weight.requires_grad
    data, label_roi = make_inputs(seed=2)
    port(data, label_roi)["loss"].backward()
    before = snapshot(port)
    sgd_step(port, 1e-4)
    assert _layers(changed(before, port)) == STAGE1_LEARNS - {"fc6", "fc7"}  # convs still get the gradient


def test_probability_l2_loss_by_hand():
    x = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # sigmoid: 0.5, 0.75
    p = torch.tensor([[0.5, 0.5]])
    loss = probability_l2_loss(x, p)
    assert abs(float(loss.detach()) - 0.25 ** 2 / 2) < 1e-7
    loss.backward()
    # (sigmoid - p) * sigmoid * (1 - sigmoid) / num
    assert torch.allclose(x.grad, torch.tensor([[0.0, 0.25 * 0.75 * 0.25]]))


def test_stage2_l2_loss():
    port = _port("stage2", kd_loss="l2").eval()
    data, label_roi = make_inputs(seed=5)
    out = port(data, label_roi)
    q = torch.sigmoid(out["fc8_mscoco_soft"].double())
    expected = ((q - out["image_level_score"].double()) ** 2).sum() / (2 * data.shape[0])
    close(out["loss_soft"], expected, rel=1e-6, what="l2")
    released = _port("stage2").eval()
    load_port(released, port.param_dict())
    soft_ce = released(data, label_roi)["loss_soft"]
    assert not torch.isclose(soft_ce, out["loss_soft"])
    close(released(data, label_roi)["loss_sig"], out["loss_sig"], rel=1e-6, what="loss_sig unchanged")


@pytest.mark.parametrize("kd_loss", ["soft-ce", "l2"])
def test_stage2_monitor_matches_autograd(kd_loss):
    """The logged gradient norms at fc8 equal autograd's gradient of each loss term alone."""
    port = _port("stage2", kd_loss=kd_loss, soft_weight=1.5).eval()
    with torch.no_grad():
        port.student.fc8_mscoco_soft.weight.uniform_(0.1, 0.9)
    data, label_roi = make_inputs(seed=6)
    out = port(data, label_roi)
    mon = port.monitor(out)
    w = port.student.fc8_mscoco.weight
    grads = {}
    for term, weight in (("soft", 1.5), ("hard", 1.0)):
        port.zero_grad()
        out = port(data, label_roi)
        (weight * out["loss_soft" if term == "soft" else "loss_sig"]).backward()
        grads[term] = w.grad.detach().clone()
    for term in ("soft", "hard"):
        close(mon[f"grad_fc8_{term}"], grads[term].norm(), rel=1e-5, what=term)
    cos = (grads["soft"] * grads["hard"]).sum() / (grads["soft"].norm() * grads["hard"].norm())
    close(mon["grad_fc8_cos"], cos, rel=1e-4, what="cosine")
    scale = port.student.fc8_mscoco_soft.weight
    assert float(mon["soft_scale_min"]) == float(scale.detach().min())
    assert float(mon["soft_scale_max"]) == float(scale.detach().max())
    t = out["image_level_score"]
    assert float(mon["target_saturated"]) == float(((t < 0.01) | (t > 0.99)).float().mean())


def test_regions_topk():
    k = 3
    port = _port("stage1", regions="topk", topk=k).eval()
    data, label_roi = make_inputs(seed=8)
    out = port(data, label_roi)
    obj = out["proposal_score"].detach().amax(2).numpy()  # [N, B]
    expected = []
    for n in range(obj.shape[0]):
        top = sorted(np.argsort(-obj[n], kind="stable")[:k])
        expected += [n * B + int(r) for r in top]
        assert obj[n][top].min() >= np.sort(obj[n])[-k]
    assert out["roi_index"].tolist() == expected
    assert out["fc7"].shape[0] == len(expected)
    # the loss is the Euclidean loss over the selected rows only, num = N * k
    s = port.student.forward_rois(data, out[f"roi_{S}"][expected])
    by_hand = ((out["fc_wsd_7"][expected].double() - s["fc7"].double()) ** 2).sum() / (2 * len(expected))
    close(out["loss_euclid"], by_hand, rel=1e-6, what="topk loss")
    # the released default uses every proposal
    all_regions = KDStage1(small_cfg()).eval()
    assert all_regions(data, label_roi)["fc7"].shape[0] == 2 * B
    with pytest.raises(ValueError, match="topk"):
        KDStage1(small_cfg(), regions="topk")


def test_teacher_dropout_switch():
    data, label_roi = make_inputs(seed=2)
    port = _port("stage1", teacher_dropout=False).train()
    torch.manual_seed(1)
    a = port(data, label_roi)
    torch.manual_seed(2)
    b = port(data, label_roi)
    assert torch.equal(a["fc_wsd_7"], b["fc_wsd_7"])  # teacher deterministic
    assert not torch.equal(a["fc7"], b["fc7"])  # student still drops
    released = _port("stage1").train()
    torch.manual_seed(1)
    c = released(data, label_roi)
    assert (c["fc_wsd_7"] == 0).float().mean() > 0.3


def test_stage2_needs_labels_and_options_are_checked():
    port = _port("stage2")
    data, label_roi = make_inputs()
    with pytest.raises(ValueError, match="labels"):
        port(data, list_roi=label_roi[:, C:])
    for kw in ({"kd_loss": "kl"}, {"teacher": "fixed"}):
        with pytest.raises(ValueError):
            KDStage2(small_cfg(), **kw)
    with pytest.raises(ValueError, match="stage1_train"):
        KDStage1(small_cfg(), stage1_train="fc")
    # labels + rois instead of label_roi give the same result
    port.eval()
    a = port(data, label_roi)
    from prototxt_ports.rois import split_label_roi, wsd_roigen

    labels, list_roi = split_label_roi(label_roi, C)
    b = port(data, labels=labels, rois=wsd_roigen(list_roi))
    assert torch.equal(a["loss"], b["loss"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_device_matches_cpu(device, stage):
    """The ports run where mlic.ops runs; CUDA results equal the CPU ones."""
    port = _port(stage, regions="topk", topk=3) if stage == "stage1" else _port(stage)
    port.eval()
    data, label_roi = make_inputs(seed=9)
    ref = port(data, label_roi)
    ref["loss"].backward()
    grads = {name: p.grad.clone() for name, p, _, _ in port.param_specs() if p.grad is not None}
    port.zero_grad(set_to_none=True)
    port.to(device)
    out = port(data.to(device), label_roi.to(device))
    out["loss"].backward()
    for name in ("fc_wsd_7", "fc7", "loss") + (("image_level_score", "fc8_mscoco_soft") if stage == "stage2" else ()):
        close(out[name].cpu(), ref[name], what=name)
    for name, p, _, _ in port.param_specs():
        if name in grads:
            close(p.grad.cpu(), grads[name], what=f"grad {name}")
        else:
            assert p.grad is None
