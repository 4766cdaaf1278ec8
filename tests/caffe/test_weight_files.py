"""Every weight file the project writes is read as Caffe-named blobs, several files load in
order with provenance, and a trained WSDDN maps onto the KD nets' teacher layers."""
import pytest
import torch
import torch.nn.functional as F

from mlic.caffe import CaffeNet
from mlic.caffe.errors import CaffemodelError
from mlic.caffe.torchvision_vgg import InputTransform, VGG16_FILE, fold_input_convention
from mlic.caffe.weight_files import read_weight_file, save_caffemodel, save_param_dict, state_dict_to_param_dict
from mlic.caffe.weights import initialize_weights
from prototxt_ports import WSDDN, KDStage1, KDStage2, Student, wsddn_to_kd_name
from tests.ports.helpers import small_cfg, small_prototxt
from mlic.caffe.weight_files import save_port_caffemodel
from mlic.caffe.weights import load_port

RELEASED_MEAN = (103.52, 116.28, 123.675)


def _seeded(cls, seed, *args, **kw):
    torch.manual_seed(seed)
    m = cls(*args, **kw)
    with torch.no_grad():  # biases are 0 after the fillers: make them tell files apart too
        for p in m.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return m


def _checkpoint(tmp_path, name, model, stage):
    path = tmp_path / name
    torch.save({"model": model.state_dict(), "meta": {"stage": stage}}, path)
    return path


def _kd_net(prototxt_ref, stage):
    text = (prototxt_ref / f"train_{stage}.prototxt").read_text()
    return CaffeNet(small_prototxt(text), "TRAIN")


def test_state_dicts_read_under_caffe_names(tmp_path, prototxt_ref):
    """A KD port's state dict (teacher.*, student.*) reads as the port's own Caffe
    registry says (caffe_param_map: the names the prototxt gives)."""
    port = _seeded(KDStage2, 0, small_cfg())
    wf = read_weight_file(_checkpoint(tmp_path, "kd.pt", port, "stage2"))
    assert wf.kind == "checkpoint"
    expected = {f"{layer}/{i}": p for (layer, i), p in port.caffe_param_map().items()}
    assert list(wf.params) == list(expected)
    for k, p in expected.items():
        assert torch.equal(wf.params[k], p), k
    # a CaffeNet's (layers.<name>.weight) and a bare state dict read the same way
    net = _kd_net(prototxt_ref, "stage2")
    d = state_dict_to_param_dict(net.state_dict())
    assert list(d) == list(net.param_dict())


def test_every_file_kind_loads_the_same_weights(tmp_path):
    src = _seeded(WSDDN, 1, small_cfg())
    files = {
        "checkpoint": _checkpoint(tmp_path, "final.pt", src, "wsddn"),
        "param-dict": tmp_path / "w.pt",
        "caffemodel": tmp_path / "w.caffemodel",
        "state-dict": tmp_path / "sd.pt",
    }
    save_param_dict(src.param_dict(), files["param-dict"])
    save_port_caffemodel(src, files["caffemodel"])
    torch.save(src.state_dict(), files["state-dict"])
    for kind, path in files.items():
        dst = _seeded(WSDDN, 2, small_cfg())
        report = initialize_weights(dst, str(path))
        assert read_weight_file(path).kind == kind
        assert report.initial == [] and report.loads[0].layers == list(src.caffe_params())
        for (layer, i), p in src.caffe_param_map().items():
            assert torch.equal(dst.caffe_params()[layer][i], p), (kind, layer, i)


def test_several_files_later_ones_win_and_the_report_says_which(tmp_path, prototxt_ref):
    a = _seeded(Student, 3, small_cfg())
    b = _seeded(WSDDN, 4, small_cfg())
    pa, pb = _checkpoint(tmp_path, "a.pt", a, "student"), tmp_path / "b.pt"
    # b: the WSDDN's convs and heads (its fc6 reads 7x7 RoI features; the small student's 1x1 pool5)
    save_param_dict({k: v for k, v in b.param_dict().items() if not k.startswith(("fc6/", "fc7/"))}, pb)
    net = _kd_net(prototxt_ref, "stage2")
    report = initialize_weights(net, f"{pa},{pb}", allow_untrained_teacher=True)
    for layer in ("conv1_1", "conv5_3"):  # in both files: b's
        assert report.origin[layer] == str(pb)
        assert torch.equal(net.params[layer][0], b.caffe_params()[layer][0])
    for layer in ("fc6", "fc8_mscoco"):  # only in a
        assert report.origin[layer] == str(pa)
        assert torch.equal(net.params[layer][1], a.caffe_params()[layer][1])
    lines = report.lines()
    assert lines[0].startswith(f"weights {pa} (checkpoint, stage student): 3 layer(s): fc6, fc7, fc8_mscoco;"), lines
    assert "later files replaced conv1_1" in lines[0]
    # by name, as Caffe does: the WSDDN's region sum lands on the KD teacher's
    assert lines[1].startswith(f"weights {pb} (param-dict): 14 layer(s): image_level_score, conv1_1"), lines
    assert lines[1].endswith("not in this net (ignored): fc8_c, fc8_d")
    assert "conv_wsd_1_1" in report.warning() and "fc8_mscoco_soft" in report.warning()


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
@pytest.mark.parametrize("form", ["checkpoint", "caffemodel"])
def test_teacher_maps_a_wsddn_onto_the_kd_prototxt(tmp_path, prototxt_ref, stage, form):
    teacher = _seeded(WSDDN, 5, small_cfg())
    if form == "checkpoint":
        path = _checkpoint(tmp_path, "teacher.pt", teacher, "wsddn")
    else:
        path = tmp_path / "teacher.caffemodel"
        save_port_caffemodel(teacher, path)
    net = _kd_net(prototxt_ref, stage)
    # SPEC section 4: the teacher runs through image_level_score (and the temperature Scales)
    teacher_only = ("image_level_score/", "temp_branch1_learn/", "temp_branch2_learn/")
    student_before = {k: v.clone() for k, v in net.param_dict().items()
                      if "_wsd_" not in k and not k.startswith(teacher_only)}
    report = initialize_weights(net, teacher=str(path))
    wsd = [l for l in net.params if "_wsd_" in l]
    assert wsd and set(wsd) <= set(report.origin)
    for (layer, i), p in teacher.caffe_param_map().items():
        kd = wsddn_to_kd_name(layer)
        if kd in net.params:
            assert torch.equal(net.params[kd][i], p), kd
    for k, v in student_before.items():  # the student is not the teacher's
        assert torch.equal(net.param_dict()[k], v), k
    assert "conv1_1 -> conv_wsd_1_1" in report.lines()[0]


def test_teacher_from_a_kd_file_takes_only_its_teacher_layers(tmp_path):
    kd = _seeded(KDStage2, 6, small_cfg())
    path = _checkpoint(tmp_path, "stage2.pt", kd, "stage2")
    port = _seeded(KDStage1, 7, small_cfg())
    before = {k: v.clone() for k, v in port.param_dict().items()}
    initialize_weights(port, teacher=str(path))
    teacher_layers = set(port.teacher.caffe_params())
    for (layer, i), p in port.caffe_param_map().items():
        if layer in teacher_layers:
            assert torch.equal(p, kd.caffe_params()[layer][i]), layer
        else:
            assert torch.equal(p, before[f"{layer}/{i}"]), layer


def test_untrained_teacher_is_an_error_unless_allowed(tmp_path, prototxt_ref):
    student = _seeded(Student, 8, small_cfg())
    path = tmp_path / "convs.pt"  # the student's convs (they fit both stages' students)
    save_param_dict({k: v for k, v in student.param_dict().items() if k.startswith("conv")}, path)
    for net in (_kd_net(prototxt_ref, "stage1"), KDStage2(small_cfg())):
        with pytest.raises(CaffemodelError, match=r"teacher layers of this KD net would keep their initial values "
                                                  r"\(conv_wsd_1_1, .*--allow-untrained-teacher"):
            initialize_weights(net, str(path))
        report = initialize_weights(net, str(path), allow_untrained_teacher=True)
        assert "conv_wsd_1_1" in report.initial
    with pytest.raises(CaffemodelError, match="has no teacher layers"):
        initialize_weights(Student(small_cfg()), teacher=str(path))


def test_a_file_sharing_no_layer_is_an_error(tmp_path):
    other = CaffeNet('name: "o" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
                     'layer { name: "ip_other" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 2 } }')
    path = tmp_path / "other.caffemodel"
    save_caffemodel(other, path)
    with pytest.raises(CaffemodelError, match=rf"{path}: shares no layer name with the net \(weights\); the file "
                                              r"has ip_other, the net conv1_1, conv1_2"):
        initialize_weights(WSDDN(small_cfg()), str(path))


@pytest.mark.parametrize("case, fragment", [
    ("missing", "no such weights file"),
    ("empty", "empty file, not a weights file"),
    ("truncated-pt", "cannot read this torch.save file; it is truncated or corrupt"),
    ("truncated-caffemodel", "not a valid caffemodel (truncated or corrupt"),
    ("text", "it looks like a text prototxt"),
    ("folder", "a folder, not a weights file"),
    ("not-weights", "a torch.save file but not weights"),
    ("empty-list", "an empty name in the comma-separated list"),
])
def test_bad_weight_files_name_the_file(tmp_path, case, fragment):
    src = _seeded(WSDDN, 9, small_cfg())
    path = tmp_path / f"{case}.bin"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated-pt":
        torch.save({"model": src.state_dict(), "meta": {}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif case == "truncated-caffemodel":
        save_port_caffemodel(src, path)
        path.write_bytes(path.read_bytes()[:-7])
    elif case == "text":
        path.write_text('name: "net"\nlayer { name: "a" type: "ReLU" }\n')
    elif case == "folder":
        path.mkdir()
    elif case == "not-weights":
        torch.save([1, 2, 3], path)
    spec = f"{path},," if case == "empty-list" else str(path)
    with pytest.raises(CaffemodelError) as err:
        initialize_weights(WSDDN(small_cfg()), spec)
    msg = str(err.value)
    assert fragment in msg and (case == "empty-list" or msg.startswith(str(path))), msg
    assert "\n" not in msg


# ----------------------------------------------------------------------------- torchvision


def _tv_convention():
    """torchvision's own statement of its input convention (no download: metadata only)."""
    import torchvision

    t = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
    return torchvision, list(t.mean), list(t.std)


@pytest.mark.parametrize("mean_bgr, scale", [(RELEASED_MEAN, 1.0), ((104.0, 117.0, 123.0), 0.017)])
def test_folded_conv1_1_sees_the_caffe_input_as_torchvision_sees_its_own(mean_bgr, scale):
    torchvision, tv_mean, tv_std = _tv_convention()
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(16, 3, 3, 3, generator=g) * 0.1, torch.randn(16, generator=g) * 0.1
    rgb = torch.randint(0, 256, (2, 3, 20, 24), generator=g).to(torch.float32)
    tv_in = torchvision.transforms.functional.normalize(rgb / 255.0, tv_mean, tv_std)
    ref = F.conv2d(tv_in.double(), w.double(), b.double(), padding=1)
    caffe_in = (rgb.flip(1) - torch.tensor(mean_bgr).view(1, 3, 1, 1)) * scale  # BGR, mean-subtracted, scaled
    fw, fb = fold_input_convention(w, b, InputTransform(mean_bgr, scale))
    ours = F.conv2d(caffe_in, fw, fb, padding=1).double()
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    err = (ours[inner] - ref[inner]).abs().max().item()
    assert err <= 1e-5 * (1 + ref.abs().max().item()), err
    # the border: the zero padding stands for the mean colour, which differs between the
    # conventions by (mean_bgr - 255 * mean) / (255 * std) per channel
    off = torch.tensor([(mean_bgr[2 - c] - 255 * tv_mean[c]) / (255 * tv_std[c]) for c in range(3)])
    bound = (w.abs().sum(dim=(2, 3)) * off.abs().view(1, 3)).sum(1).max().item()
    border = (ours - ref).abs().max().item()
    assert border <= bound + 1e-5 * (1 + ref.abs().max().item()), (border, bound)


def test_torchvision_vgg16_maps_onto_every_released_vgg_layer():
    """The whole torchvision VGG16 (on the meta device: no memory, no download) maps onto
    the full-size WSDDN's layers with the same shapes; only fc8 (ImageNet) is left out."""
    torchvision, _, _ = _tv_convention()
    from mlic.caffe.torchvision_vgg import VGG16_NAMES
    from prototxt_ports import NetConfig

    assert torchvision.models.VGG16_Weights.IMAGENET1K_V1.url.endswith("/" + VGG16_FILE)
    with torch.device("meta"):
        tv_state = torchvision.models.vgg16().state_dict()
        port = WSDDN(NetConfig())
    ours = port.caffe_params()
    mapped = set()
    for key, v in tv_state.items():
        prefix, _, kind = key.rpartition(".")
        layer = VGG16_NAMES[prefix]
        mapped.add(layer)
        if layer != "fc8":
            assert tuple(ours[layer][("weight", "bias").index(kind)].shape) == tuple(v.shape), key
    assert mapped - {"fc8"} == {l for l in ours if l.startswith(("conv", "fc6", "fc7"))}


def _small_tv_state(cfg, seed=0):
    """A state dict in torchvision's VGG16 layout with the sizes of a reduced port."""
    g = torch.Generator().manual_seed(seed)
    from mlic.caffe.torchvision_vgg import VGG16_NAMES

    port = WSDDN(cfg)
    shapes = {l: [tuple(p.shape) for p in ps] for l, ps in port.caffe_params().items()}
    shapes["fc8"] = [(1000, cfg.fc_width), (1000,)]
    state = {}
    for prefix, layer in VGG16_NAMES.items():
        state[f"{prefix}.weight"] = torch.randn(shapes[layer][0], generator=g) * 0.1
        state[f"{prefix}.bias"] = torch.randn(shapes[layer][1], generator=g) * 0.1
    return state


def test_torchvision_weights_through_a_file_and_the_cache(tmp_path, monkeypatch):
    cfg = small_cfg()
    state = _small_tv_state(cfg)
    cache = tmp_path / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    t = InputTransform(RELEASED_MEAN, 1.0)
    with pytest.raises(CaffemodelError, match=r"torchvision:vgg16: torchvision's VGG16 weights are not in the local "
                                              r"cache \(.*hub/checkpoints/vgg16-397923af.pth\); nothing is downloaded"):
        initialize_weights(WSDDN(cfg), "torchvision:vgg16", transform=t)
    cache.mkdir(parents=True)
    torch.save(state, cache / VGG16_FILE)
    for spec in ("torchvision:vgg16", f"torchvision:{cache / VGG16_FILE}", str(cache / VGG16_FILE)):
        port = WSDDN(cfg)
        report = initialize_weights(port, spec, transform=t)
        assert report.loads[0].file.kind == "torchvision" and report.loads[0].ignored == ["fc8"]
        assert torch.equal(port.fc6.weight, state["classifier.0.weight"])
        assert torch.equal(port.conv5_3.bias, state["features.28.bias"])
        fw, fb = fold_input_convention(state["features.0.weight"], state["features.0.bias"], t)
        assert torch.equal(port.conv1_1.weight, fw) and torch.equal(port.conv1_1.bias, fb)
    with pytest.raises(CaffemodelError, match="need the net's input transform"):
        initialize_weights(WSDDN(cfg), "torchvision:vgg16")
    with pytest.raises(CaffemodelError, match="torchvision:/nowhere/x.pth: expected torchvision:vgg16"):
        initialize_weights(WSDDN(cfg), "torchvision:/nowhere/x.pth", transform=t)
    bn = dict(state, **{"features.1.running_mean": torch.zeros(4)})
    torch.save(bn, tmp_path / "bn.pth")
    with pytest.raises(CaffemodelError, match="not torchvision's plain VGG16"):
        initialize_weights(WSDDN(cfg), f"torchvision:{tmp_path / 'bn.pth'}", transform=t)


def test_a_kd_checkpoint_that_refers_to_its_teacher_gets_it_from_that_file(tmp_path):
    """KD runs may record the --teacher file's path and SHA-256 instead of its weights:
    reading such a checkpoint takes the teacher from that file, checked by its hash."""
    import hashlib

    teacher = _seeded(WSDDN, 11, small_cfg())
    tpath = _checkpoint(tmp_path, "teacher.pt", teacher, "wsddn")
    kd = _seeded(KDStage2, 12, small_cfg())
    student_only = {k: v for k, v in kd.state_dict().items() if not k.startswith("teacher.")}
    ref = {"path": str(tpath), "sha256": hashlib.sha256(tpath.read_bytes()).hexdigest(), "embedded": False}
    path = tmp_path / "final.pt"
    torch.save({"model": student_only, "meta": {"stage": "stage2", "teacher": ref}}, path)
    wf = read_weight_file(path)
    for (layer, i), p in teacher.caffe_param_map().items():
        kd_name = wsddn_to_kd_name(layer)
        if kd_name in kd.teacher.caffe_params():
            assert torch.equal(wf.params[f"{kd_name}/{i}"], p), kd_name
    assert torch.equal(wf.params["fc8_mscoco/0"], kd.student.fc8_mscoco.weight)
    assert f"teacher from {tpath}" in wf.describe()
    tpath.write_bytes(tpath.read_bytes() + b"x")
    with pytest.raises(CaffemodelError, match=rf"{path}: refers to its teacher {tpath}, which has changed since"):
        read_weight_file(path)
    tpath.unlink()
    with pytest.raises(CaffemodelError, match=rf"{path}: refers to its teacher {tpath}, which does not exist"):
        read_weight_file(path)


def test_caffenet_and_ports_take_any_weight_file(tmp_path, prototxt_ref):
    src = _seeded(WSDDN, 13, small_cfg())
    ckpt = _checkpoint(tmp_path, "final.pt", src, "wsddn")
    net = CaffeNet(small_prototxt((prototxt_ref / "wsddn_train.prototxt").read_text()), "TEST", weights=ckpt)
    assert not net.load_report.missing
    port = WSDDN(small_cfg())
    load_port(port, ckpt)
    for (layer, i), p in src.caffe_param_map().items():
        assert torch.equal(net.params[layer][i], p) and torch.equal(port.caffe_params()[layer][i], p), layer
