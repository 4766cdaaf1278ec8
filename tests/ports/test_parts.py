"""NetConfig, the VGG body, the student, the RoI plumbing and the Caffe bookkeeping."""
import pytest
import torch

from mlic.ops.functional import caffe_interp
from mlic.ops.reference import caffe_pool2d_ref
from prototxt_ports import VGG16, KDStage2, NetConfig, Student, caffe_param_map
from prototxt_ports import _ops
from prototxt_ports.rois import single_scale_rois, split_label_roi, wsd_roigen
from tests.ports.helpers import close, small_cfg
from mlic.caffe.weights import load_port


def test_config_width_and_defaults():
    cfg = NetConfig(width=0.125)
    convs = [layer.channels for layer in cfg.body_layers() if layer.kind == "conv"]
    assert convs == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert cfg.fc_width == 512 and NetConfig().fc_width == 4096 and NetConfig(fc_dim=100).fc_width == 100
    full = NetConfig()
    assert (full.num_classes, full.num_rois, full.input_size, full.student_size) == (80, 500, 672, 224)
    assert (full.pooled_size, full.spatial_scale, full.dropout) == (7, 0.0625, 0.5)
    assert (full.temp_branch1_init, full.temp_branch2_init, full.soft_scale_init) == (2.0, 2.0, 0.2)
    assert full.feature_size(672) == 42 and full.feature_size(224) == 14 and full.feature_size(673) == 43


@pytest.mark.parametrize("kw, msg", [
    ({"width": 0}, "width"),
    ({"body": ("conv1_1:8", "pool1")}, "end with a conv"),
    ({"body": ("conv1_1", "pool1", "conv2_1:8")}, "body entry 0"),
    ({"body": ("conv1_1:8", "conv1_1:8")}, "repeats"),
    ({"num_rois": 0}, "num_rois"),
    ({"dropout": 1.0}, "dropout"),
    ({"conv_init": "msra"}, "conv_init"),
    ({"student_head": "fc8 coco"}, "student_head"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        NetConfig(**kw)


@pytest.mark.parametrize("h, w", [(7, 9), (8, 8), (2, 3), (3, 2)])
def test_max_pool_is_caffe_pooling(h, w):
    """Caffe MAX 2x2/2 (the reference op) on odd sizes and ties, forward and gradient."""
    x = torch.randint(0, 3, (2, 3, h, w)).float()  # many ties: the first maximum must win
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = _ops.max_pool_2x2(a), caffe_pool2d_ref(b, 2, 2, 0, "max")
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(a.grad, b.grad)


def test_vgg_names_and_blobs():
    cfg = small_cfg()
    kd = VGG16(cfg, "kd")
    assert kd.conv_names[0] == "conv_wsd_1_1" and kd.feature_name == "conv_wsd_5_3"
    blobs = kd(torch.randn(1, 3, 64, 64))
    assert list(blobs)[:3] == ["conv_wsd_1_1", "conv_wsd_1_2", "pool_wsd_1"]
    assert blobs["conv_wsd_5_3"].shape == (1, 32, 4, 4) and torch.all(blobs["conv_wsd_5_3"] >= 0)
    custom = VGG16(cfg, conv_pattern="c{block}x{index}", pool_pattern="p{block}", final_pool=True)
    assert custom.body_plan[-1] == ("pool", "p5") and "c3x2.weight" in custom.state_dict()
    zeros = VGG16(NetConfig(width=1 / 16, conv_init="zeros"))
    assert not zeros.conv1_1.weight.any()  # what the prototxts' missing fillers give
    with pytest.raises(ValueError, match="expected input"):
        kd(torch.randn(1, 4, 64, 64))


def test_student_forward_and_predict():
    cfg = small_cfg()
    torch.manual_seed(0)
    s = Student(cfg, soft_scale=True).eval()
    data = torch.randn(2, 3, 64, 64)
    out = s(data, all_blobs=True)
    close(out["data_size32"], caffe_interp(data, 32, 32), rel=0, what="interp")
    assert out["pool5"].shape == (2, 32, 1, 1) and out["fc8_mscoco"].shape == (2, 5)
    close(out["fc8_mscoco_soft"], 0.2 * out["fc8_mscoco"], rel=1e-7, what="soft scale")
    close(s.predict(data), torch.sigmoid(out["fc8_mscoco"]), rel=1e-7, what="predict")
    # input already at the student's size: Interp is the identity
    small = torch.randn(1, 3, 32, 32)
    assert torch.equal(s(small)["data_size32"], small)
    assert set(s.state_dict()) >= {"conv1_1.weight", "fc6.weight", "fc8_mscoco.weight", "fc8_mscoco_soft.weight"}
    nus = Student(small_cfg(num_classes=81, student_head="fc8_nuswide"))
    assert nus(data)["fc8_nuswide"].shape == (2, 81)


def test_student_paths_need_matching_sizes():
    cfg = small_cfg()  # pool5 is 1x1 at 32, RoI pooling 7x7
    roi_student = Student(cfg, fc6_input="roi", head=False)
    with pytest.raises(ValueError, match="pool5 and RoI-pooling sizes"):
        roi_student(torch.randn(1, 3, 64, 64))
    full = NetConfig(width=1 / 16, fc_dim=16)  # 224 -> 7x7 pool5 = 7x7 RoI pooling: both paths
    s = Student(full).eval()
    rois = torch.tensor([[0, 0, 0, 223, 223, 1.0]])
    a = s.forward_rois(torch.randn(1, 3, 224, 224), rois)
    assert a["roi_pooling_224"].shape == (1, 32, 7, 7) and a["fc7"].shape == (1, 16)


def test_roi_plumbing_by_hand():
    label_roi = torch.tensor([[1., 0., 10., 20., 671., 400., 0.5, 3., 2., 5., 6., 0.25],
                              [0., 1., 0., 0., 335., 336., 1.0, 1., 1., 2., 2., 0.75]])
    labels, list_roi = split_label_roi(label_roi, 2)
    assert labels.tolist() == [[1, 0], [0, 1]]
    rois = wsd_roigen(list_roi)
    assert rois.tolist() == [[0, 10, 20, 671, 400, 0.5], [0, 3, 2, 5, 6, 0.25], [1, 0, 0, 335, 336, 1.0],
                             [1, 1, 1, 2, 2, 0.75]]
    small = single_scale_rois(rois, 224, 672)
    # floor(224 * x / 672): 671 -> 223, 400 -> 133, 335 -> 111, 336 -> 112, 5 -> 1, 2 -> 0
    assert small[0].tolist() == [0, 3, 6, 223, 133, 0.5]
    assert small[1].tolist() == [0, 1, 0, 1, 2, 0.25]
    assert small[2, 1:5].tolist() == [0, 0, 111, 112]
    with pytest.raises(ValueError, match="5 values"):
        split_label_roi(label_roi[:, :-1], 2)


def test_param_map_and_groups():
    port = KDStage2(small_cfg())
    pm = caffe_param_map(port)
    assert pm[("conv_wsd_2_1", 0)] is port.teacher.conv_wsd_2_1.weight
    assert pm[("fc8_mscoco_soft", 0)] is port.student.fc8_mscoco_soft.weight
    assert pm[("temp_branch2_learn", 0)].shape == (8,)
    assert len(pm) == len(list(port.parameters()))
    groups = port.param_groups()
    assert [g["name"] for g in groups] == [f"{layer}/{i}" for layer, i in pm]
    assert {(g["lr_mult"], g["decay_mult"]) for g in groups if g["name"].startswith("fc8_mscoco/")} == {(10, 10),
                                                                                                        (20, 0)}
    assert pm[("fc8_mscoco_soft", 0)].lr_mult == 10  # also on the parameters, for CaffeSGD(port.parameters())
    learnable = port.param_groups(only_learnable=True)
    assert "image_level_score/0" not in {g["name"] for g in learnable}
    d = port.param_dict()
    assert torch.equal(d["fc_wsd_8_d/1"], port.teacher.fc_wsd_8_d.bias)


def test_load_reports_missing_and_unexpected(tmp_path):
    cfg = small_cfg()
    a, b = KDStage2(cfg), KDStage2(cfg)
    d = a.param_dict()
    del d["fc7/0"], d["fc7/1"]
    d["extra/0"] = torch.zeros(3)
    report = load_port(b, d)
    assert report.missing == ["fc7"] and report.unexpected == ["extra"]
    assert torch.equal(b.student.conv3_1.weight, a.student.conv3_1.weight)
    with pytest.raises(ValueError, match="strict"):
        load_port(b, d, strict=True)
    d["fc6/0"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="fc6"):
        load_port(b, d)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_port(b, tmp_path / "missing.caffemodel")
    path = tmp_path / "p.pt"
    torch.save(dict(a.param_dict()), path)
    c = KDStage2(cfg)
    assert load_port(c, path, strict=True).complete
    assert torch.equal(c.student.fc7.weight, a.student.fc7.weight)
