"""WSDDN port against CaffeNet built from the released wsddn_train / wsddn_deploy (small
sizes), against the real Caffe mini_wsddn case, and its own invariants."""
import numpy as np
import pytest
import torch

from mlic.caffe import CaffeNet
from mlic.caffe.weights import load_caffemodel, load_param_dict
from prototxt_ports import WSDDN, NetConfig, wsddn_to_kd_name
from tests.ports.helpers import SMALL, close, make_inputs, randomize_, small_cfg, small_prototxt, spec_prototxt
from mlic.caffe.weight_files import save_port_caffemodel
from mlic.caffe.weights import load_port

C, B = SMALL["classes"], SMALL["rois"]


@pytest.fixture(params=["released", "spec"])
def source(request):
    """Where the net definitions come from: the released prototxts (small sizes), or
    written here from SPEC section 4 (always available)."""
    if request.param == "released":
        return request.getfixturevalue("prototxt_ref")
    return None


def _net(source, name, phase, **kw):
    if source is None:
        text = spec_prototxt(name, small_cfg())
    else:
        text = small_prototxt((source / f"{name}.prototxt").read_text())
    return CaffeNet(text, phase, **kw)


def _port_and_net(source, name="wsddn_train", phase="TEST", seed=0):
    torch.manual_seed(seed)
    port = WSDDN(small_cfg())
    randomize_(port)
    net = _net(source, name, phase)
    report = load_param_dict(net, port.param_dict(), strict=True)
    assert report.complete
    return port, net


# blob name -> (our layout) compared after reshaping to Caffe's
WSDDN_BLOBS = ["labels", "list_roi", "roi", "conv5_3", "roi_pooling", "fc6", "fc7", "fc8_c", "fc8_d",
               "reshape_branch1", "reshape_branch2", "class_score", "proposal_score", "proposal_class_score",
               "image_level_score", "loss"]


@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_wsddn_train_matches_caffenet(source, phase):
    port, net = _port_and_net(source, phase=phase)
    data, label_roi = make_inputs()
    if phase == "TRAIN":  # dropout active in both: the same masks from the same RNG stream
        port.train()
        net.train()
    else:
        port.eval()
        net.eval()
    torch.manual_seed(123)
    ref = net(data=data, label_roi=label_roi)
    net.backward()
    torch.manual_seed(123)
    out = port(data, label_roi=label_roi, all_blobs=True)
    out["loss"].backward()
    assert set(ref) == {"loss"}
    for name in WSDDN_BLOBS + ["conv1_1", "pool1", "conv3_3", "pool4"]:
        close(out[name], net.blobs[name], what=name)
    if phase == "TRAIN":  # dropout did drop
        assert (net.blobs["fc7"] == 0).float().mean() > 0.3
    diffs = net.param_diffs()
    for (layer, i), p in port.caffe_param_map().items():
        if layer == "image_level_score":
            assert p.grad is None  # lr_mult 0: requires_grad False
            continue
        close(p.grad, diffs[f"{layer}/{i}"], what=f"grad {layer}/{i}")


def test_wsddn_deploy_matches_caffenet(prototxt_ref):
    port, net = _port_and_net(prototxt_ref, "wsddn_deploy", "TEST")  # released only: imagedata/proposaldata
    data, label_roi = make_inputs(n=1)
    proposals = label_roi[:, C:].reshape(1, 5 * B, 1, 1)
    ref = net(imagedata=data, proposaldata=proposals)
    port.eval()
    image, region = port.predict(data, list_roi=proposals)
    close(image, ref["image_level_score"], what="image_level_score")
    close(region, net.blobs["proposal_class_score"], what="proposal_class_score")
    assert image.shape == (1, C) and region.shape == (1, B, C)


def test_loaded_region_sum_weights_are_used(source):
    """image_level_score is a general 1x1 convolution once its weight is not all ones."""
    port, net = _port_and_net(source)
    w = torch.linspace(0.5, 2.0, B).view(1, B, 1, 1)
    with torch.no_grad():
        port.image_level_score.weight.copy_(w)
        net.params["image_level_score"][0].copy_(w)
    port.eval()
    net.eval()
    data, label_roi = make_inputs(seed=3)
    net(data=data, label_roi=label_roi)
    out = port(data, label_roi=label_roi)
    close(out["image_level_score"], net.blobs["image_level_score"], what="weighted region sum")
    by_hand = (out["proposal_class_score"] * w.view(1, B, 1)).sum(1)
    close(out["image_level_score"], by_hand, rel=1e-6, what="by hand")
    assert not torch.allclose(out["image_level_score"], out["proposal_class_score"].sum(1))
    # back to ones: the fused sum again
    with torch.no_grad():
        port.image_level_score.weight.fill_(1)
    out = port(data, label_roi=label_roi)
    close(out["image_level_score"], out["proposal_class_score"].sum(1), rel=1e-6, what="ones")


def test_caffemodel_round_trip(tmp_path):
    """Our caffemodel loads into CaffeNet by name, and a CaffeNet caffemodel into the port."""
    from mlic.caffe import save_caffemodel

    port, _ = _port_and_net(None)
    path = tmp_path / "port.caffemodel"
    save_port_caffemodel(port, path)
    net = _net(None, "wsddn_train", "TEST")
    assert load_caffemodel(net, str(path), strict=True).complete
    for (layer, i), p in port.caffe_param_map().items():
        assert torch.equal(net.params[layer][i].detach(), p.detach())
    # the other way, through the KD teacher's names
    torch.manual_seed(5)
    net2 = _net(None, "wsddn_train", "TEST")
    for blobs in net2.params.values():
        for b in blobs:
            with torch.no_grad():
                b.normal_()
    path2 = tmp_path / "net.caffemodel"
    save_caffemodel(net2, str(path2))
    teacher = WSDDN(small_cfg(), "kd", heads=True)
    report = load_port(teacher, path2, strict=True, rename=wsddn_to_kd_name)
    assert sorted(report.loaded) == sorted(wsddn_to_kd_name(n) for n in net2.params)
    assert torch.equal(teacher.conv_wsd_3_2.weight.detach(), net2.params["conv3_2"][0].detach())
    assert torch.equal(teacher.fc_wsd_8_d.bias.detach(), net2.params["fc8_d"][1].detach())


def test_param_specs_follow_the_prototxt(source):
    port = WSDDN(small_cfg())
    net = _net(source, "wsddn_train", "TRAIN")
    ours = [(name, lr, dm, tuple(p.shape)) for name, p, lr, dm in port.param_specs()]
    theirs = [(g["name"], g["lr_mult"], g["decay_mult"], tuple(g["params"][0].shape)) for g in net.param_groups()]
    assert ours == theirs
    keys = set(port.state_dict())
    assert {"conv1_1.weight", "conv1_1.bias", "fc6.weight", "fc8_c.weight", "image_level_score.weight"} <= keys
    assert port.caffe_param_map()[("fc8_d", 1)] is port.fc8_d.bias


def test_full_size_names_and_shapes():
    port = WSDDN(NetConfig(), "kd", heads=True, temperature=True)
    shapes = {k: tuple(v.shape) for k, v in port.state_dict().items()}
    assert shapes["conv_wsd_1_1.weight"] == (64, 3, 3, 3)
    assert shapes["conv_wsd_5_3.weight"] == (512, 512, 3, 3)
    assert shapes["fc_wsd_6.weight"] == (4096, 512 * 7 * 7)
    assert shapes["fc_wsd_8_c.weight"] == (80, 4096)
    assert shapes["temp_branch1_learn.weight"] == (80,)
    assert shapes["temp_branch2_learn.weight"] == (500,)
    assert shapes["image_level_score.weight"] == (1, 500, 1, 1)
    assert torch.all(port.temp_branch1_learn.weight == 2) and torch.all(port.image_level_score.weight == 1)


def test_temperature_scales_the_logits():
    cfg = small_cfg()
    torch.manual_seed(0)
    plain = WSDDN(cfg).eval()
    hot = WSDDN(cfg, temperature=True).eval()
    load_port(hot, plain.param_dict())
    data, label_roi = make_inputs()
    a = plain(data, label_roi=label_roi)
    b = hot(data, label_roi=label_roi)
    close(b["temp_branch1_learn"], 2 * a["reshape_branch1"], rel=1e-6, what="x2")
    expected = (torch.softmax(2 * a["reshape_branch1"].double(), 2) * torch.softmax(2 * a["reshape_branch2"].double(), 1))
    close(b["image_level_score"], expected.sum(1), rel=1e-5, what="T=0.5 scores")
    with torch.no_grad():
        hot.temp_branch2_learn.weight[3] = 0.0  # a per-region factor
    c = hot(data, label_roi=label_roi)
    assert torch.allclose(c["temp_branch2_learn"][:, 3], torch.zeros(2, C))


def test_cross_entropy_gradient_at_the_port_scores():
    """The loss gradient reaching image_level_score is the authors' formula."""
    port = WSDDN(small_cfg()).eval()
    data, label_roi = make_inputs(seed=4)
    out = port(data, label_roi=label_roi)
    image = out["image_level_score"]
    image.retain_grad()
    out["loss"].backward()
    p, t = image.detach().double(), out["labels"].double()
    expected = -(t / p.clamp_min(1e-4) + (1 - t) / (p - 1).clamp_max(-1e-4)) / 2
    close(image.grad, expected, rel=1e-5, what="dL/dp")
    value = -torch.where(t == 1, p.clamp_min(1e-4).log(), (1 - p).clamp_min(1e-4).log()).sum() / 2
    close(out["loss"], value, rel=1e-5, what="loss")


def test_bad_inputs_are_reported():
    port = WSDDN(small_cfg())
    data, label_roi = make_inputs()
    with pytest.raises(ValueError, match="num_rois"):
        port(data, list_roi=label_roi[:, C:-5])  # 7 boxes per image
    with pytest.raises(ValueError, match="multiple of 5"):
        port(data, list_roi=label_roi[:, C + 1:])
    with pytest.raises(ValueError, match="exactly one of rois"):
        port(data)
    with pytest.raises(ValueError, match="data must be"):
        port(data[0], label_roi=label_roi)
    with pytest.raises(ValueError, match="names"):
        WSDDN(small_cfg(), "caffe")


MINI_BODY = ("conv1_1:8", "pool1", "conv2_1:8", "pool2", "pool3", "conv5_3:16")


def test_mini_wsddn_against_caffe(caffe_ref):
    """The real Caffe case: forward blobs and loss; the fc gradients given Caffe's diffs
    at the logits (reshape_branch1/2), and the head's backward given Caffe's diff at
    image_level_score. (End to end, the clamped cross-entropy sends gradients of ~565
    into the head here, which amplifies float32 forward rounding differences past the
    tolerance; the loss gradient itself is test_cross_entropy_gradient_at_the_port_scores.)
    The case stops the gradient at roi_pooling."""
    from prototxt_ports import _ops

    z = np.load(caffe_ref / "mini_wsddn.npz")
    cfg = NetConfig(num_classes=4, num_rois=8, input_size=64, body=MINI_BODY, pooled_size=2, spatial_scale=0.125,
                    fc_dim=32)
    port = WSDDN(cfg).eval()
    report = load_port(port, caffe_ref / "mini_wsddn.caffemodel", strict=True)
    assert report.complete
    for k in z.files:
        if k.startswith("param/"):
            layer, i = k[6:].rsplit("/", 1)
            assert torch.equal(port.caffe_param_map()[(layer, int(i))].detach(), torch.from_numpy(z[k])), k
    out = port(torch.from_numpy(z["input/data"]), label_roi=torch.from_numpy(z["input/label_roi"]), all_blobs=True)
    for name in ["labels", "list_roi", "roi", "conv1_1", "pool1", "conv2_1", "pool2", "pool3", "conv5_3",
                 "roi_pooling", "fc6", "fc7", "fc8_c", "fc8_d", "reshape_branch1", "reshape_branch2", "class_score",
                 "proposal_score", "proposal_class_score", "image_level_score", "loss"]:
        close(out[name], z[f"blob/{name}"], what=name)
    diffs = [torch.from_numpy(z[f"diff/reshape_branch{i}"]).reshape(2, 8, 4) for i in (1, 2)]
    torch.autograd.backward([out["reshape_branch1"], out["reshape_branch2"]], diffs)
    for layer in ("fc6", "fc7", "fc8_c", "fc8_d"):
        for i in (0, 1):
            close(port.caffe_param_map()[(layer, i)].grad, z[f"param_diff/{layer}/{i}"], what=f"{layer}/{i}")
    # the head alone from Caffe's inputs
    r1, r2 = (torch.from_numpy(z[f"blob/reshape_branch{i}"]).reshape(2, 8, 4).requires_grad_() for i in (1, 2))
    image, region, pc, pd = _ops.two_stream(r1, r2)
    close(pc, z["blob/class_score"], rel=1e-5, what="class_score")
    close(pd, z["blob/proposal_score"], rel=1e-5, what="proposal_score")
    close(image, z["blob/image_level_score"], rel=1e-5, what="image_level_score")
    image.backward(torch.from_numpy(z["diff/image_level_score"]).reshape(2, 4))
    close(r1.grad, z["diff/reshape_branch1"], what="diff reshape_branch1")
    close(r2.grad, z["diff/reshape_branch2"], what="diff reshape_branch2")
