"""The Caffe schema subset and the prototxt/caffemodel readers."""
import struct
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import unknown_fields

from mlic.caffe import proto
from mlic.caffe.errors import NetBuildError, PrototxtError
from mlic.caffe.io import (blob_to_array, caffemodel_layers, load_net_spec, parse_caffemodel_bytes,
                           read_caffemodel, read_solver)
from mlic.caffe.net import CaffeNet

# ----------------------------------------------------------------------------- wire format by hand


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return _varint(field << 3 | wire)


def _ld(field, payload: bytes):  # length-delimited
    return _key(field, 2) + _varint(len(payload)) + payload


def _vi(field, n):
    return _key(field, 0) + _varint(n)


def _f32(field, x):
    return _key(field, 5) + struct.pack("<f", x)


def _packed_f32(field, xs):
    return _ld(field, b"".join(struct.pack("<f", x) for x in xs))


def test_binary_field_numbers_from_hand_encoded_bytes():
    """Bytes assembled from caffe.proto's field numbers decode to the right fields."""
    shape = _ld(7, _ld(1, _varint(2) + _varint(3)))  # BlobProto.shape{dim: 2 dim: 3} (packed int64)
    blob = shape + _packed_f32(5, [1, 2, 3, 4, 5, 6])  # BlobProto.data = 5
    legacy = _vi(1, 1) + _vi(2, 1) + _vi(3, 1) + _vi(4, 3) + _packed_f32(5, [7, 8, 9])  # num/channels/height/width
    param = _f32(3, 2.0) + _f32(4, 0.0)  # ParamSpec lr_mult 3, decay_mult 4
    ip = _vi(1, 3) + _vi(2, 0) + _vi(5, 2)  # InnerProductParameter num_output 1, bias_term 2, axis 5
    roi = _vi(1, 7) + _vi(2, 6) + _f32(3, 0.0625) + _f32(4, 2.0) + _f32(5, 0.5) + _f32(8, 224.0) + _f32(9, 672.0)
    interp = _vi(1, 224) + _vi(2, 225)
    had = _ld(1, b"list.txt") + _vi(4, 32) + _vi(9, 672) + _vi(10, 673) + _vi(13, 80) + _vi(14, 500) + _f32(15, 0.75)
    layer = (
        _ld(1, b"fc") + _ld(2, b"InnerProduct") + _ld(3, b"x") + _ld(4, b"y") + _f32(5, 1.5) + _ld(6, param)
        + _ld(7, blob) + _ld(7, legacy) + _ld(8, _vi(1, 0)) + _vi(10, 1) + _vi(11, 0) + _ld(117, ip)
        + _ld(147, interp) + _ld(148, had) + _ld(149, roi)
    )
    v1 = _ld(4, b"old") + _vi(5, 14) + _ld(6, legacy) + _ld(2, b"x") + _ld(3, b"z")  # V1: name 4, type 5 (INNER_PRODUCT=14), blobs 6
    net_bytes = _ld(1, b"n") + _ld(100, layer) + _vi(5, 1)  # force_backward 5
    net = parse_caffemodel_bytes(net_bytes)
    assert net.name == "n" and net.force_backward
    lp = net.layer[0]
    assert (lp.name, lp.type, list(lp.bottom), list(lp.top), list(lp.loss_weight)) == ("fc", "InnerProduct", ["x"], ["y"], [1.5])
    assert (lp.param[0].lr_mult, lp.param[0].decay_mult) == (2.0, 0.0)
    assert lp.include[0].phase == proto.TRAIN and lp.phase == proto.TEST and list(lp.propagate_down) == [False]
    assert (lp.inner_product_param.num_output, lp.inner_product_param.bias_term, lp.inner_product_param.axis) == (3, False, 2)
    np.testing.assert_array_equal(blob_to_array(lp.blobs[0]), np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(blob_to_array(lp.blobs[1]), np.array([[[[7, 8, 9]]]], np.float32))
    r = lp.roi_pooling_param
    assert (r.pooled_h, r.pooled_w, r.spatial_scale, r.score_scale, r.score_bias, r.single_scale, r.origin_scale) == (
        7, 6, 0.0625, 2.0, 0.5, 224.0, 672.0)
    assert (lp.interp_param.height, lp.interp_param.width) == (224, 225)
    h = lp.human_att_data_param
    assert (h.source, h.batch_size, h.new_height, h.new_width, h.att_num, h.bbox_num) == ("list.txt", 32, 672, 673, 80, 500)
    assert list(h.scale_factors) == [0.75]
    assert len(unknown_fields.UnknownFieldSet(lp)) == 0
    old = parse_caffemodel_bytes(_ld(2, v1))
    (sl,) = caffemodel_layers(old)
    assert (sl.name, sl.type) == ("old", "InnerProduct")
    np.testing.assert_array_equal(blob_to_array(sl.blobs[0]).ravel(), [7, 8, 9])


@pytest.mark.parametrize("name", ["mini_wsddn", "wsddn_head"])
def test_caffe_written_models_roundtrip_byte_identical(caffe_ref, name):
    """Every field Caffe wrote is known to the schema (same numbers, types and packing):
    re-serialising gives the file back byte for byte."""
    data = (caffe_ref / f"{name}.caffemodel").read_bytes()
    net = read_caffemodel(caffe_ref / f"{name}.caffemodel")
    assert net.SerializeToString() == data
    assert len(unknown_fields.UnknownFieldSet(net)) == 0
    for lp in net.layer:
        assert len(unknown_fields.UnknownFieldSet(lp)) == 0


def test_released_prototxts_parse(prototxt_ref):
    for f in sorted(prototxt_ref.glob("*.prototxt")):
        spec = load_net_spec(f)
        assert len(spec.param.layer) > 40
        assert all(line is not None for line in spec.layer_lines)


def test_deploy_inputs_become_an_input_layer(prototxt_ref):
    spec = load_net_spec(prototxt_ref / "wsddn_deploy.prototxt")
    first = spec.param.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["imagedata", "proposaldata"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 672, 672], [1, 2500, 1, 1]]
    assert not len(spec.param.input) and not len(spec.param.input_dim)
    assert spec.layer_lines[0] == 3  # the first `input:` line


LEGACY = """name: "legacy"
input: "a"
input_dim: 2
input_dim: 3
input_dim: 1
input_dim: 1
input: "b"
input_shape { dim: 2 dim: 3 }
"""


def test_input_dim_count_error():
    with pytest.raises(PrototxtError, match=r"f\.prototxt:1: 1 input\(s\) need 4 input_dim values"):
        from mlic.caffe.io import net_spec_from_text

        net_spec_from_text('input: "a"\ninput_dim: 1\ninput_dim: 2\n', "f.prototxt")


def test_mixed_input_forms_rejected():
    from mlic.caffe.io import net_spec_from_text

    with pytest.raises(PrototxtError, match="either input_shape or input_dim"):
        net_spec_from_text(LEGACY, "x.prototxt")


V1_NET = """name: "v1"
input: "data"
input_dim: 1 input_dim: 2 input_dim: 4 input_dim: 4
layers {
  name: "conv"
  type: CONVOLUTION
  bottom: "data"
  top: "conv"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 }
}
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "fc" type: INNER_PRODUCT bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "drop" type: DROPOUT bottom: "fc" top: "fc" include { phase: TRAIN } }
"""


def test_v1_prototxt_upgrade(tmp_path):
    p = tmp_path / "v1.prototxt"
    p.write_text(V1_NET)
    spec = load_net_spec(p)
    names = [(l.name, l.type) for l in spec.param.layer]
    assert names == [("input", "Input"), ("conv", "Convolution"), ("relu", "ReLU"), ("fc", "InnerProduct"),
                     ("drop", "Dropout")]
    conv = spec.param.layer[1]
    assert [(s.lr_mult, s.decay_mult) for s in conv.param] == [(1, 1), (2, 0)]
    assert spec.layer_lines == [2, 4, 15, 16, 17]
    net = CaffeNet(p, "TEST")
    assert net.layer_names == ["input", "conv", "relu", "fc"]
    assert tuple(net.params["fc"][0].shape) == (5, 3 * 4 * 4)
    assert net.params["conv"][1].lr_mult == 2 and net.params["conv"][1].decay_mult == 0


def test_layer_level_legacy_forms_parse_and_apply():
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" param { lr_mult: 3 decay_mult: 0.5 } param { lr_mult: 0 }
  propagate_down: false inner_product_param { num_output: 4 } include { phase: TEST } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" exclude { phase: TRAIN } }
"""
    net = CaffeNet(text, "TEST")
    assert [(p.lr_mult, p.decay_mult) for p in net.params["ip"]] == [(3, 0.5), (0, 1)]
    assert net.params["ip"][0].requires_grad and not net.params["ip"][1].requires_grad
    assert net.layer_names == ["x", "ip", "relu"]
    assert CaffeNet(text, "TRAIN").layer_names == ["x"]


# ----------------------------------------------------------------------------- errors name file and line


def _write(tmp_path, text, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_field_error_names_file_line_col(tmp_path):
    p = _write(tmp_path, 'layer {\n  name: "a"\n  type: "ReLU"\n  lrn_param { local_size: 5 }\n}\n')
    with pytest.raises(PrototxtError) as ei:
        load_net_spec(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:4:")
    assert "lrn_param" in msg and "supported layer types" in msg and "ROIPooling" in msg


def test_malformed_prototxt_error_names_line(tmp_path):
    p = _write(tmp_path, 'layer {\n  name: "a"\n  type: "ReLU"\n  bottom: x"\n}\n')
    with pytest.raises(PrototxtError, match=rf"^{p}:4:"):
        load_net_spec(p)
    p2 = _write(tmp_path, 'layer {\n  name: "a"\n', "open.prototxt")
    with pytest.raises(PrototxtError, match=rf"^{p2}:\d+"):
        load_net_spec(p2)


def test_unknown_layer_type_error_names_type_line(tmp_path):
    p = _write(tmp_path, 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
                         'layer {\n  name: "l"\n  bottom: "x"\n  top: "y"\n  type: "LRN"\n}\n')
    with pytest.raises(NetBuildError) as ei:
        CaffeNet(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:6: layer 'l': unknown layer type 'LRN'")
    assert "WsdRoigen" in msg and "Interp" in msg


def test_unknown_bottom_error_names_layer_line(tmp_path):
    p = _write(tmp_path, 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n\n'
                         'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }\n')
    with pytest.raises(NetBuildError, match=rf"^{p}:3: layer 'r' \(type ReLU\): unknown bottom blob 'nope'"):
        CaffeNet(p)


def test_bad_layer_params_error_names_layer(tmp_path):
    p = _write(tmp_path, 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 5 } } }\n'
                         'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 7 } }\n')
    with pytest.raises(NetBuildError, match=rf"^{p}:2: layer 's' \(type Slice\).*slice_point"):
        CaffeNet(p)


def test_multiple_sources_of_a_top_rejected():
    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
            'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\n'
            'layer { name: "b" type: "Sigmoid" bottom: "y" top: "x" }\n')
    with pytest.raises(NetBuildError, match="produced by multiple sources"):
        CaffeNet(text)


def test_missing_prototxt_file():
    with pytest.raises(PrototxtError, match="no_such.prototxt: cannot read"):
        load_net_spec(Path("/nonexistent/no_such.prototxt"))


def test_binary_given_as_prototxt(tmp_path):
    p = tmp_path / "w.prototxt"
    p.write_bytes(b"\n\x00\xa2\x06\xff\xfe")
    with pytest.raises(PrototxtError, match=rf"{p}: not a text network definition"):
        load_net_spec(p)


def test_solver_parse_and_errors(tmp_path):
    p = _write(tmp_path, 'net: "n.prototxt"\nbase_lr: 0.01\nlr_policy: "multistep"\nstepvalue: 10\nstepvalue: 20\n'
                         'gamma: 0.1\nmomentum: 0.9\nweight_decay: 0.0005\niter_size: 2\ntype: "SGD"\n', "solver.prototxt")
    sp, f = read_solver(p)
    assert f == str(p) and list(sp.stepvalue) == [10, 20] and sp.iter_size == 2
    assert sp.base_lr == pytest.approx(0.01) and sp.momentum == pytest.approx(0.9)
    bad = _write(tmp_path, "base_lr: 0.1\nlr_polcy: \"fixed\"\n", "bad_solver.prototxt")
    with pytest.raises(PrototxtError, match=rf"^{bad}:2:"):
        read_solver(bad)
