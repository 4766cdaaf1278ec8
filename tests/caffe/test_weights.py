"""caffemodel and parameter-dict reading/writing, legacy forms, and their errors."""
import numpy as np
import pytest
import torch

from mlic.caffe import CaffeNet, proto
from mlic.cli.convert import main as convert_main
from mlic.caffe.errors import CaffemodelError
from mlic.caffe.io import read_caffemodel
from mlic.caffe.weight_files import (caffemodel_to_param_dict, net_to_caffemodel, read_weight_file, save_caffemodel,
                                     save_param_dict)
from mlic.caffe.weights import load_caffemodel, load_weights

NET = """name: "w"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "sc" scale_param { bias_term: true filler { type: "uniform" } bias_filler { type: "uniform" } } }
layer { name: "fc" type: "InnerProduct" bottom: "sc" top: "fc" inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
"""


def _net(seed):
    torch.manual_seed(seed)
    return CaffeNet(NET)


def _same_params(a, b):
    assert list(a.params) == list(b.params)
    for k in a.params:
        for p, q in zip(a.params[k], b.params[k]):
            assert p.shape == q.shape
            assert torch.equal(p, q), k


def test_caffemodel_round_trip_is_exact(tmp_path):
    src = _net(0)
    path = tmp_path / "w.caffemodel"
    save_caffemodel(src, path)
    dst = _net(1)
    assert not torch.equal(dst.params["fc"][0], src.params["fc"][0])
    report = load_caffemodel(dst, path)
    assert report.loaded == ["conv", "sc", "fc"] and not report.missing and not report.unexpected
    _same_params(src, dst)
    msg = read_caffemodel(path)
    assert msg.name == "w"
    layers = {l.name: l for l in msg.layer}
    assert [list(b.shape.dim) for b in layers["fc"].blobs] == [[5, 4 * 4 * 4], [5]]
    assert layers["conv"].type == "Convolution" and not len(layers["relu"].blobs)


def test_weights_at_construction(tmp_path):
    src = _net(0)
    save_caffemodel(src, tmp_path / "w.caffemodel")
    torch.manual_seed(5)
    net = CaffeNet(NET, weights=tmp_path / "w.caffemodel")
    assert net.load_report.loaded == ["conv", "sc", "fc"]
    _same_params(src, net)


def test_param_dict_round_trip_and_file(tmp_path):
    src = _net(0)
    d = src.param_dict()
    assert list(d) == ["conv/0", "conv/1", "sc/0", "sc/1", "fc/0", "fc/1"]
    save_param_dict(d, tmp_path / "w.pt")
    back = read_weight_file(tmp_path / "w.pt").params
    dst = _net(2)
    load_weights(dst, tmp_path / "w.pt")
    _same_params(src, dst)
    assert all(torch.equal(back[k], d[k]) for k in d)
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CaffemodelError, match="bad.pt: cannot read this torch.save file; it is truncated or corrupt"):
        read_weight_file(tmp_path / "bad.pt")


def _v1_model(path, fc_w, fc_b, conv_w, conv_b, extra_layer=True):
    """A legacy model: V1 `layers` with 4-D num/channels/height/width blobs."""
    net = proto.NetParameter(name="old")

    def blob(layer, a):
        b = layer.blobs.add()
        shape4 = (1,) * (4 - a.ndim) + a.shape
        b.num, b.channels, b.height, b.width = shape4
        b.data.extend(a.astype(np.float32).ravel().tolist())

    conv = net.layers.add(name="conv", type=proto.V1LayerParameter.CONVOLUTION)
    blob(conv, conv_w)
    blob(conv, conv_b)
    fc = net.layers.add(name="fc", type=proto.V1LayerParameter.INNER_PRODUCT)
    blob(fc, fc_w)
    blob(fc, fc_b)
    if extra_layer:
        blob(net.layers.add(name="fc8_imagenet", type=proto.V1LayerParameter.INNER_PRODUCT), np.ones((3, 5)))
    net.layers.add(name="relu", type=proto.V1LayerParameter.RELU)
    path.write_bytes(net.SerializeToString())


def test_v1_legacy_caffemodel_loads(tmp_path):
    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(4).astype(np.float32)
    fc_w = rng.standard_normal((5, 64)).astype(np.float32)
    fc_b = rng.standard_normal(5).astype(np.float32)
    path = tmp_path / "vgg_like.caffemodel"
    _v1_model(path, fc_w, fc_b, conv_w, conv_b)
    net = _net(0)
    report = load_caffemodel(net, path)
    assert report.loaded == ["conv", "fc"] and report.missing == ["sc"] and report.unexpected == ["fc8_imagenet"]
    np.testing.assert_array_equal(net.params["fc"][0].detach().numpy(), fc_w)  # 1 x 1 x 5 x 64 -> 5 x 64
    np.testing.assert_array_equal(net.params["fc"][1].detach().numpy(), fc_b)  # 1 x 1 x 1 x 5 -> 5
    np.testing.assert_array_equal(net.params["conv"][0].detach().numpy(), conv_w)
    d = caffemodel_to_param_dict(path)
    assert tuple(d["fc/0"].shape) == (5, 64) and tuple(d["fc/1"].shape) == (5,) and tuple(d["conv/1"].shape) == (4,)
    with pytest.raises(CaffemodelError, match="strict load failed"):
        load_caffemodel(_net(0), path, strict=True)


def test_rename_maps_file_layers_to_net_layers(tmp_path):
    src = _net(0)
    path = tmp_path / "w.caffemodel"
    save_caffemodel(src, path)
    renamed = NET.replace('name: "fc"', 'name: "fc_wsd"')
    dst = CaffeNet(renamed)
    report = load_caffemodel(dst, path, rename={"fc": "fc_wsd"})
    assert "fc_wsd" in report.loaded and not report.missing
    assert torch.equal(dst.params["fc_wsd"][0], src.params["fc"][0])


def test_shape_mismatch_names_file_layer_and_shapes(tmp_path):
    path = tmp_path / "w.caffemodel"
    save_caffemodel(_net(0), path)
    other = CaffeNet(NET.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(CaffemodelError) as ei:
        load_caffemodel(other, path)
    msg = str(ei.value)
    assert str(path) in msg and "layer 'fc'" in msg and "[5, 64]" in msg and "[6, 64]" in msg


def test_blob_count_mismatch(tmp_path):
    path = tmp_path / "w.caffemodel"
    save_caffemodel(_net(0), path)
    other = CaffeNet(NET.replace('num_output: 5 weight_filler', 'num_output: 5 bias_term: false weight_filler'))
    with pytest.raises(CaffemodelError, match=r"layer 'fc' has 2 blob\(s\) in the file but 1 in the net"):
        load_caffemodel(other, path)


def test_truncated_corrupt_empty_and_text_files(tmp_path):
    good = tmp_path / "good.caffemodel"
    save_caffemodel(_net(0), good)
    data = good.read_bytes()
    assert read_caffemodel(good).layer[-1].name == "fc"
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[:-7])  # inside the last blob's data
    with pytest.raises(CaffemodelError, match=rf"^{cut}: not a valid caffemodel \(truncated or corrupt"):
        read_caffemodel(cut)
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(CaffemodelError, match=rf"^{bad}: not a valid caffemodel"):
        load_caffemodel(_net(0), bad)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffemodelError, match=rf"^{empty}: empty file"):
        read_caffemodel(empty)
    text = tmp_path / "text.caffemodel"
    text.write_text(NET)
    with pytest.raises(CaffemodelError, match="looks like a text prototxt"):
        read_caffemodel(text)
    with pytest.raises(CaffemodelError, match="no_such.caffemodel: cannot read"):
        read_caffemodel(tmp_path / "no_such.caffemodel")


def test_blob_with_wrong_value_count(tmp_path):
    msg = net_to_caffemodel(_net(0))
    fc = [l for l in msg.layer if l.name == "fc"][0]
    del fc.blobs[1].data[-1]
    path = tmp_path / "short.caffemodel"
    path.write_bytes(msg.SerializeToString())
    with pytest.raises(CaffemodelError, match=r"layer 'fc' blob 1: holds 4 values but its shape \[5\] needs 5"):
        load_caffemodel(_net(0), path)


def test_double_data_blobs(tmp_path):
    msg = net_to_caffemodel(_net(0))
    fc = [l for l in msg.layer if l.name == "fc"][0]
    vals = np.arange(5, dtype=np.float64) / 3
    del fc.blobs[1].data[:]
    fc.blobs[1].double_data.extend(vals.tolist())
    net = _net(1)
    load_caffemodel(net, msg)
    np.testing.assert_array_equal(net.params["fc"][1].detach().numpy(), vals.astype(np.float32))


def test_convert_tool_round_trip(tmp_path, capsys):
    src = _net(0)
    proto_path = tmp_path / "net.prototxt"
    proto_path.write_text(NET)
    model = tmp_path / "a.caffemodel"
    save_caffemodel(src, model)
    assert convert_main([str(model), str(tmp_path / "a.pt")]) == 0
    assert convert_main([str(tmp_path / "a.pt"), str(tmp_path / "b.caffemodel"), "--prototxt", str(proto_path)]) == 0
    back = _net(3)
    load_caffemodel(back, tmp_path / "b.caffemodel")
    _same_params(src, back)
    assert convert_main([str(tmp_path / "a.pt"), str(tmp_path / "c.caffemodel")]) == 2
    assert "needs --prototxt" in capsys.readouterr().err
    (tmp_path / "x.caffemodel").write_bytes(b"\xff\xff")
    assert convert_main([str(tmp_path / "x.caffemodel"), str(tmp_path / "x.pt")]) == 2
    assert "x.caffemodel: not a valid caffemodel" in capsys.readouterr().err


def test_caffe_written_models_load(caffe_ref):
    """The caffemodels written by Caffe load into nets built from their cases' prototxts
    and hold exactly the recorded parameters."""
    for name in ("wsddn_head", "mini_wsddn"):
        z = np.load(caffe_ref / f"{name}.npz")
        net = CaffeNet(str(z["prototxt"]), "TEST")
        report = load_caffemodel(net, caffe_ref / f"{name}.caffemodel")
        assert not report.missing and not report.unexpected
        for k in z.files:
            if k.startswith("param/"):
                layer, _, i = k[6:].rpartition("/")
                np.testing.assert_array_equal(net.params[layer][int(i)].detach().numpy(), z[k])
