"""The four released prototxts build unmodified in their phases, with Caffe's blob shapes
(computed here from Caffe's formulas), and the deploy net runs at full size."""
import gc
import math

import numpy as np
import pytest
import torch

from mlic.caffe import CaffeNet


def conv_out(size, k=3, p=1, s=1):
    return (size + 2 * p - k) // s + 1


def pool_out(size, k=2, s=2, p=0):
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def vgg_shapes(n, size, prefix_conv="conv", pool_names=None):
    """conv1_1 .. conv5_3 / pool1 .. pool4 shapes of VGG16 on an n x 3 x size x size input."""
    shapes = {}
    chans = [64, 128, 256, 512, 512]
    reps = [2, 2, 3, 3, 3]
    for stage, (c, r) in enumerate(zip(chans, reps), 1):
        for i in range(1, r + 1):
            size = conv_out(size)
            shapes[prefix_conv.format(stage, i)] = (n, c, size, size)
        if stage < 5:
            size = pool_out(size)
            shapes[pool_names.format(stage)] = (n, c, size, size)
    return shapes, size


def _teacher_shapes(n, b, c_num, size):
    s, last = vgg_shapes(n, size, "conv_wsd_{}_{}", "pool_wsd_{}")
    s.update({"roi": (n * b, 6), "roi_pooling": (n * b, 512, 7, 7), "fc_wsd_6": (n * b, 4096), "fc_wsd_7": (n * b, 4096)})
    return s


@pytest.fixture
def built(prototxt_ref):
    nets = []

    def build(name, phase):
        net = CaffeNet(prototxt_ref / f"{name}.prototxt", phase)
        nets.append(net)
        return net

    yield build
    nets.clear()
    gc.collect()


@pytest.mark.parametrize("phase,batch", [("TRAIN", 32), ("TEST", 16)])
def test_wsddn_train_builds(built, phase, batch):
    net = built("wsddn_train", phase)
    sh = net.blob_shapes
    n, b, c = batch, 500, 80
    expect, last = vgg_shapes(n, 672, "conv{}_{}", "pool{}")
    assert last == 42
    expect.update({
        "data": (n, 3, 672, 672), "label_roi": (n, c + 5 * b), "labels": (n, c), "list_roi": (n, 5 * b),
        "roi": (n * b, 6), "roi_pooling": (n * b, 512, 7, 7), "fc6": (n * b, 4096), "fc7": (n * b, 4096),
        "fc8_c": (n * b, c), "fc8_d": (n * b, c), "reshape_branch1": (n, b, c, 1), "class_score": (n, b, c, 1),
        "proposal_class_score": (n, b, c, 1), "image_level_score": (n, 1, c, 1), "loss": (),
    })
    for k, v in expect.items():
        assert sh[k] == v, k
    assert net.output_names == ["loss"] and net.loss_tops == {"loss": 1.0}
    assert [(p.lr_mult, p.decay_mult) for p in net.params["fc8_c"]] == [(10, 10), (20, 0)]
    assert [(p.lr_mult, p.decay_mult) for p in net.params["conv1_1"]] == [(1, 1), (2, 0)]
    w = net.params["image_level_score"]
    assert len(w) == 1 and tuple(w[0].shape) == (1, b, 1, 1) and bool((w[0] == 1).all()) and w[0].lr_mult == 0
    hp = net.layer("data").lp.human_att_data_param
    assert hp.batch_size == batch and (len(hp.scale_factors) == 5) == (phase == "TRAIN")


def test_wsddn_deploy_builds(built):
    net = built("wsddn_deploy", "TEST")
    assert net.input_names == ["imagedata", "proposaldata"]
    assert net.blob_shapes["roi"] == (500, 6) and net.blob_shapes["image_level_score"] == (1, 1, 80, 1)
    assert net.output_names == ["image_level_score"] and net.loss_tops == {}


@pytest.mark.parametrize("phase,batch", [("TRAIN", 32), ("TEST", 16)])
def test_stage1_builds(built, phase, batch):
    net = built("train_stage1", phase)
    n, b = batch, 500
    expect = _teacher_shapes(n, b, 80, 672)
    student, last = vgg_shapes(n, 224, "conv{}_{}", "pool{}")
    assert last == 14
    expect.update(student)
    expect.update({"data_size224": (n, 3, 224, 224), "roi_224": (n * b, 6), "roi_pooling_224": (n * b, 512, 7, 7),
                   "fc6": (n * b, 4096), "fc7": (n * b, 4096), "loss_euclid": ()})
    for k, v in expect.items():
        assert net.blob_shapes[k] == v, k
    # teacher layers pass no gradient down; the Euclidean loss only into the student
    assert all(not any(pd) for lp, pd in zip(net.layer_params, net._pd) if lp.name.startswith(("conv_wsd", "fc_wsd")))
    loss = net.layer_names.index("loss_euclid")
    assert net._pd[loss] == [False, True]
    assert "label" in net.layer("silence").bottom_names


@pytest.mark.parametrize("phase,batch", [("TRAIN", 28), ("TEST", 4)])
def test_stage2_builds(built, phase, batch):
    net = built("train_stage2", phase)
    n, b, c = batch, 500, 80
    expect = _teacher_shapes(n, b, c, 672)
    student, last = vgg_shapes(n, 224, "conv{}_{}", "pool{}")
    expect.update(student)
    expect.update({"pool5": (n, 512, pool_out(last), pool_out(last)), "fc6": (n, 4096), "fc7": (n, 4096),
                   "fc8_mscoco": (n, c), "fc8_mscoco_soft": (n, c), "temp_branch1_learn": (n, b, c, 1),
                   "temp_branch2_learn": (n, b, c, 1), "image_level_score": (n, 1, c, 1), "loss_soft": (),
                   "loss_sig": ()})
    assert expect["pool5"] == (n, 512, 7, 7)
    for k, v in expect.items():
        assert net.blob_shapes[k] == v, k
    t1, t2, soft = net.params["temp_branch1_learn"], net.params["temp_branch2_learn"], net.params["fc8_mscoco_soft"]
    assert tuple(t1[0].shape) == (c,) and tuple(t2[0].shape) == (b,) and tuple(soft[0].shape) == (c,)
    assert bool((t1[0] == 2).all()) and bool((t2[0] == 2).all())
    assert bool((soft[0] == np.float32(0.2)).all()) and soft[0].lr_mult == 10 and soft[0].decay_mult == 0
    assert net.loss_tops == {"loss_soft": 1.0, "loss_sig": 1.0}
    for name in ("loss_soft", "loss_sig"):
        assert net._pd[net.layer_names.index(name)] == [True, False]


@pytest.mark.slow
def test_deploy_forward_full_size(prototxt_ref):
    """VGG16 WSDDN at 672 x 672 with 500 RoIs, random weights, on CPU."""
    torch.manual_seed(0)
    net = CaffeNet(prototxt_ref / "wsddn_deploy.prototxt", "TEST")
    with torch.no_grad():
        for name, ps in net.params.items():
            if name.startswith("conv"):
                ps[0].normal_(0, math.sqrt(2 / ps[0][0].numel()))
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 672, 672, generator=g) * 50
    xy = torch.rand(500, 4, generator=g) * 671
    boxes = torch.cat([torch.minimum(xy[:, :2], xy[:, 2:]), torch.maximum(xy[:, :2], xy[:, 2:]),
                       torch.rand(500, 1, generator=g)], 1)
    with torch.no_grad():
        out = net(imagedata=image, proposaldata=boxes.reshape(1, 2500, 1, 1))
    expect, last = vgg_shapes(1, 672, "conv{}_{}", "pool{}")
    expect.update({"imagedata": (1, 3, 672, 672), "proposaldata": (1, 2500, 1, 1), "roi": (500, 6),
                   "roi_pooling": (500, 512, 7, 7), "fc6": (500, 4096), "fc7": (500, 4096),
                   "fc7_drop7_0_split_0": (500, 4096), "fc7_drop7_0_split_1": (500, 4096), "fc8_c": (500, 80),
                   "fc8_d": (500, 80), "reshape_branch1": (1, 500, 80, 1), "reshape_branch2": (1, 500, 80, 1),
                   "class_score": (1, 500, 80, 1), "proposal_score": (1, 500, 80, 1),
                   "proposal_class_score": (1, 500, 80, 1), "image_level_score": (1, 1, 80, 1)})
    assert set(net.blobs) == set(expect)
    for k, v in expect.items():
        assert tuple(net.blobs[k].shape) == v, k
    scores = out["image_level_score"].reshape(80)
    assert torch.isfinite(scores).all() and bool((scores >= 0).all()) and bool((scores <= 1 + 1e-6).all())
    # per class, the region-softmax weights sum to 1, so the image score is a convex combination
    ps = net.blobs["proposal_score"][0, :, :, 0]
    torch.testing.assert_close(ps.sum(0), torch.ones(80))
