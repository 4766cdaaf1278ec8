"""Net-level Caffe semantics: phases, splits, in-place blobs, propagate_down,
force_backward, loss weights, lr_mult exposure, data layers."""
import numpy as np
import pytest
import torch

from mlic.caffe import CaffeNet
from mlic.caffe.errors import NetBuildError


def inp(name, *shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def np_(t):
    return t.detach().double().numpy()


def ip(name, bottom, n, extra="", top=None):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top or name}" {extra} '
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} '
            f'bias_filler {{ type: "gaussian" std: 0.5 }} }} }}\n')


def test_phase_level_stage_rules():
    text = inp("x", 1, 2) + (
        'layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }\n'
        'layer { name: "b" type: "ReLU" bottom: "x" top: "b" include { phase: TEST stage: "deploy" } }\n'
        'layer { name: "c" type: "ReLU" bottom: "x" top: "c" exclude { min_level: 2 } }\n'
        'layer { name: "d" type: "ReLU" bottom: "x" top: "d" include { not_stage: "deploy" } }\n'
    )
    assert CaffeNet(text, "TRAIN").layer_names[-3:] == ["a", "c", "d"]
    assert CaffeNet(text, "TEST", stages=["deploy"]).layer_names[-2:] == ["b", "c"]
    assert CaffeNet(text, "TEST", level=3).layer_names[-1:] == ["d"]
    with pytest.raises(NetBuildError, match="either include rules or exclude rules"):
        CaffeNet(inp("x", 1) + 'layer { name: "e" type: "ReLU" bottom: "x" top: "e" include { phase: TRAIN } '
                 'exclude { phase: TEST } }')


def test_in_place_blobs_data_is_last_diff_is_first():
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    text = inp("x", 1, 4) + (
        'layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { filler { type: "constant" value: -2 } '
        'axis: 1 num_axes: 1 } }\n'
        'layer { name: "r" type: "ReLU" bottom: "y" top: "y" }\n'
        'layer { name: "r2" type: "Scale" bottom: "y" top: "y" param { lr_mult: 0 } scale_param { filler { type: "constant" value: 3 } } }\n'
    )
    net = CaffeNet(text, force_backward=True, retain_diffs=True)
    net.forward(x=x)
    y0 = -2 * x
    np.testing.assert_allclose(np_(net.blobs["y"]), 3 * np.maximum(y0, 0))
    g = np.array([[1.0, 10.0, 100.0, 1000.0]], np.float32)
    net.backward({"y": g})
    # Caffe's in-place chain leaves the gradient w.r.t. the first version in the blob's diff
    np.testing.assert_allclose(np_(net.blob_diffs["y"]), 3 * g * (y0 > 0))
    np.testing.assert_allclose(np_(net.blob_diffs["x"]), -2 * 3 * g * (y0 > 0))


def test_propagate_down_and_lr_mult_zero():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    t = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    text = inp("x", 3, 4) + inp("t", 3, 2) + ip("a", "x", 5) + ip("b", "a", 2, "propagate_down: false") + \
        ip("c", "x", 2, "param { lr_mult: 0 } param { lr_mult: 0 }") + \
        'layer { name: "l1" type: "EuclideanLoss" bottom: "b" bottom: "t" top: "l1" }\n' \
        'layer { name: "l2" type: "EuclideanLoss" bottom: "c" bottom: "t" top: "l2" loss_weight: 0.5 }\n'
    net = CaffeNet(text, retain_diffs=True)
    assert not net.params["c"][0].requires_grad and net.params["b"][0].requires_grad
    obj = net.forward_backward(x=x, t=t)
    assert float(obj) == pytest.approx(float(net.blobs["l1"].detach()) + 0.5 * float(net.blobs["l2"].detach()))
    assert net.params["a"][0].grad is None  # propagate_down: false on b stops the flow into a
    assert net.params["b"][0].grad is not None and net.params["c"][0].grad is None
    d = net.blob_diffs
    assert np.abs(np_(d["a"])).max() == 0 and np.abs(np_(d["b"])).max() > 0
    # c has no learnable params and its input needs no gradient: Caffe computes no diff for it
    assert np.abs(np_(d["c"])).max() == 0
    assert float(d["l1"]) == 1.0 and float(d["l2"]) == 0.5
    groups = {g["name"]: (g["lr_mult"], g["decay_mult"]) for g in net.param_groups()}
    assert groups == {"a/0": (1, 1), "a/1": (1, 1), "b/0": (1, 1), "b/1": (1, 1), "c/0": (0, 1), "c/1": (0, 1)}


def test_force_backward_overrides_propagate_down_but_not_labels():
    """As in Caffe: force_backward turns propagate_down 0 into 1 where the layer allows it
    (not the label input of a loss layer other than EuclideanLoss)."""
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    t = np.random.default_rng(1).random((2, 3)).astype(np.float32)
    text = "force_backward: true\n" + inp("x", 2, 3) + inp("t", 2, 3) + (
        'layer { name: "e" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "e" propagate_down: 1 propagate_down: 0 }\n'
        'layer { name: "s" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "s" }\n'
    )
    net = CaffeNet(text, retain_diffs=True)
    net.forward(x=x, t=t)
    net.backward()
    d = net.blob_diffs
    np.testing.assert_allclose(np_(d["t_t_0_split_0"]), -(x - t) / 2, rtol=1e-5)
    assert np.abs(np_(d["t_t_0_split_1"])).max() == 0
    net2 = CaffeNet(text, retain_diffs=True, force_backward=False)
    net2.forward(x=x, t=t)
    net2.backward()
    assert np.abs(np_(net2.blob_diffs["x"])).max() == 0  # nothing needs backward without force_backward


def test_loss_top_consumed_by_another_layer_gets_a_split():
    text = inp("a", 2, 2) + inp("b", 2, 2) + (
        'layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" loss_weight: 2 }\n'
        'layer { name: "r" type: "Power" bottom: "l" top: "r" }\n'
    ).replace('type: "Power"', 'type: "Sigmoid"')
    net = CaffeNet(text, force_backward=True, retain_diffs=True)
    assert net.layer_names == ["a", "b", "l", "l_l_0_split", "r"]
    assert net.layer_params[-1].bottom[0] == "l_l_0_split_1"  # split 0 carries the loss
    net.forward(a=np.ones((2, 2), np.float32), b=np.zeros((2, 2), np.float32))
    assert float(net.objective.detach()) == pytest.approx(2 * 1.0)
    net.backward({"r": np.ones((), np.float32)})
    d = net.blob_diffs
    assert float(d["l_l_0_split_0"]) == 2.0
    s = 1 / (1 + np.exp(-1.0))
    assert float(d["l"]) == pytest.approx(2.0 + s * (1 - s), rel=1e-6)


def test_inputs_are_checked():
    net = CaffeNet(inp("x", 1, 2) + 'layer { name: "r" type: "ReLU" bottom: "x" top: "r" }')
    with pytest.raises(ValueError, match=r"unknown input blob\(s\) \['y'\]"):
        net(x=np.zeros((1, 2), np.float32), y=1)
    with pytest.raises(ValueError, match=r"input blob\(s\) \['x'\] not given"):
        net()
    out = net({"x": np.array([[-1, 2]])})  # ints become the net's float type
    assert out["r"].dtype == torch.float32 and out["r"].tolist() == [[0, 2]]


def test_backward_needs_loss_or_diffs():
    net = CaffeNet(inp("x", 1, 2) + 'layer { name: "r" type: "ReLU" bottom: "x" top: "r" }', force_backward=True)
    net.forward(x=np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="no loss"):
        net.backward()
    with pytest.raises(RuntimeError, match="no loss layer"):
        net.forward_backward(x=np.ones((1, 2), np.float32))


def test_blob_diffs_need_retain_diffs():
    net = CaffeNet(inp("x", 1, 2) + 'layer { name: "r" type: "ReLU" bottom: "x" top: "r" }')
    net.forward(x=np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="retain_diffs"):
        net.blob_diffs


def test_duplicate_layer_names_with_params_are_refused():
    text = inp("x", 1, 2) + ip("f", "x", 2) + ip("f", "f", 2, top="g")
    with pytest.raises(NetBuildError, match="same name"):
        CaffeNet(text)
    # parameterless duplicates (the KD prototxts reuse relu names) are fine
    net = CaffeNet(inp("x", 1, 2) + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
                   'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n')
    assert net.layer_names == ["x", "r", "r"]


def test_too_many_param_specs():
    with pytest.raises(NetBuildError, match="3 param specs given but the layer has 2"):
        CaffeNet(inp("x", 1, 2) + ip("f", "x", 2, "param {} param {} param {}"))


def test_human_att_data_reads_through_mlic_data(tmp_path):
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("mlic.data")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
        lines.append(f"im{i}.png 1 0 {i} {i} 5 6 0.5")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    text = ('layer { name: "data" type: "HumanAttData" top: "data" top: "label_roi" '
            'transform_param { mirror: false mean_value: 100 mean_value: 110 mean_value: 120 } '
            'human_att_data_param { source: "list.txt" batch_size: 2 new_width: 16 new_height: 12 att_num: 2 bbox_num: 1 } }\n'
            'layer { name: "sl" type: "Slice" bottom: "label_roi" top: "labels" top: "list_roi" slice_param { slice_point: 2 } }\n'
            'layer { name: "roi" type: "WsdRoigen" bottom: "list_roi" top: "roi" }\n'
            'layer { name: "sil" type: "Silence" bottom: "labels" bottom: "data" }\n')
    net = CaffeNet(text, "TRAIN", data_dir=str(tmp_path))
    net.forward()
    assert tuple(net.blobs["data"].shape) == (2, 3, 12, 16)
    np.testing.assert_allclose(np_(net.blobs["roi"]), [[0, 0, 0, 5, 6, 0.5], [1, 1, 1, 5, 6, 0.5]], rtol=1e-6)
    net.forward()  # the next batch wraps around the 3-image list
    assert np_(net.blobs["roi"])[:, 1].tolist() == [2, 0]
    img = cv2.resize(cv2.imread(str(tmp_path / "im2.png")), (16, 12), interpolation=cv2.INTER_LINEAR)
    expect = img.transpose(2, 0, 1).astype(np.float32) - np.array([100, 110, 120], np.float32)[:, None, None]
    np.testing.assert_allclose(np_(net.blobs["data"][0]), expect, atol=1e-4)
