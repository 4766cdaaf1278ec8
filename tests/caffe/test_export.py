"""Exports of trained checkpoints: to a caffemodel for a prototxt (bit-identical round
trips), and the student-only file that tools/test.py and tools/predict.py load without the
teacher."""
import csv
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from mlic import _ext
from mlic.caffe import CaffeNet
from mlic.cli.convert import main as convert
from mlic.caffe.io import read_caffemodel
from mlic.caffe.weight_files import read_weight_file
from mlic.caffe.weight_files import caffemodel_to_param_dict
from mlic.caffe.weights import load_param_dict
from tests.caffe.helpers import PORT_NET, STUDENT, released_prototxt, train
from tests.conftest import REPO
from tests.ports.helpers import SMALL

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
NAMES = ["cat", "dog", "car", "tree", "boat"]


@pytest.fixture(scope="module")
def runs(kd_data, kd_teacher, tmp_path_factory):
    """The teacher, stage 2 through our port and through the released prototxt."""
    root = tmp_path_factory.mktemp("runs")
    stage2 = train(kd_data, root / "stage2", "--stage", "stage2", "--teacher", str(kd_teacher), *PORT_NET)
    proto = released_prototxt(root, "train_stage2")
    stage2_proto = train(kd_data, root / "stage2_proto", "--prototxt", str(proto), "--teacher", str(kd_teacher))
    names = root / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    return dict(root=root, teacher=kd_teacher, stage2=stage2, stage2_proto=stage2_proto, proto=proto,
                wsddn_proto=released_prototxt(root, "wsddn_train"), names=names)


@pytest.mark.parametrize("run, proto", [("teacher", "wsddn_proto"), ("stage2", "proto"), ("stage2_proto", "proto")])
def test_checkpoint_to_caffemodel_round_trip_is_bit_identical(runs, tmp_path, run, proto):
    ckpt = read_weight_file(runs[run])
    model = tmp_path / "m.caffemodel"
    assert convert([str(runs[run]), str(model), "--prototxt", str(runs[proto])]) == 0
    stored = caffemodel_to_param_dict(model)
    net = CaffeNet(runs[proto], "TEST")
    assert list(stored) == list(net.param_dict())  # every learnable blob of the prototxt's net
    for k, v in stored.items():
        assert torch.equal(v, ckpt.params[k]), k
    # caffemodel -> .pt -> caffemodel: the same bytes; and Caffe's reader sees the layer types
    assert convert([str(model), str(tmp_path / "m.pt")]) == 0
    assert convert([str(tmp_path / "m.pt"), str(tmp_path / "again.caffemodel"), "--prototxt",
                    str(runs[proto])]) == 0
    assert (tmp_path / "again.caffemodel").read_bytes() == model.read_bytes()
    types = {l.name: l.type for l in read_caffemodel(model).layer}
    assert types["conv1_1" if run == "teacher" else "conv_wsd_1_1"] == "Convolution"


def _scores(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], np.array([[float(x) for x in r[1:]] for r in rows[1:]])


def _test_tool(weights, kd_data, out):
    from mlic.cli.test import main

    assert main(["--weights", str(weights), "--datalist", kd_data["test"], "--root-folder", kd_data["root_folder"],
                 "--out", str(out), "--batch-size", "2"]) == 0
    return _scores(out / "scores.csv")


def test_student_export_is_what_test_py_and_predict_py_use(runs, kd_data, tmp_path):
    student = tmp_path / "student.pt"
    assert convert([str(runs["stage2"]), str(student), "--student", "--class-names", str(runs["names"])]) == 0
    exp = torch.load(student, map_location="cpu", weights_only=False)
    layers = {k.rpartition("/")[0] for k in exp["params"]}
    assert not any("_wsd_" in l or l.startswith(("temp_branch", "image_level")) for l in layers)
    assert {"conv1_1", "conv5_3", "fc6", "fc7", "fc8_mscoco"} <= layers and "fc8_mscoco_soft" not in layers
    assert exp["class_names"] == NAMES and exp["input"] == {"size": [SMALL["input_size"]] * 2,
                                                           "mean_bgr": [103.52, 116.28, 123.675], "scale": 1.0}
    # tools/test.py: the export scores the test images as the stage-2 checkpoint does
    head_a, a = _test_tool(runs["stage2"], kd_data, tmp_path / "t_ckpt")
    head_b, b = _test_tool(student, kd_data, tmp_path / "t_student")
    assert np.array_equal(a[:, : len(NAMES)], b[:, : len(NAMES)])
    assert "cat" in ",".join(head_b)
    # tools/predict.py on the test images: the same probabilities as the data pipeline gives
    images = [str(p) for p in _test_images(kd_data)]
    pic = tmp_path / "pic.png"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), images[0], "--model", str(student),
                        "--top-k", "3", "--picture", str(pic)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    probs = b[0, : len(NAMES)]
    order = np.argsort(-probs, kind="stable")[:3]
    assert first == f"{images[0]}: " + ", ".join(f"{NAMES[c]} {probs[c]:.3f}" for c in order)
    img = cv2.imread(str(pic))
    assert img is not None and img.shape[1] == 480 and img.shape[0] > 480
    r = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), *images, "--model", str(student),
                        "--picture", str(tmp_path / "pics")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(images) + 1, r.stderr
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted(f"{p.rpartition('/')[2][:-4]}.png"
                                                                           for p in images)


def _test_images(kd_data):
    from mlic.data import read_datalist

    dl = read_datalist(kd_data["test"], root_folder=kd_data["root_folder"])
    return [dl.image_path(i) for i in range(len(dl))]


def test_student_of_a_prototxt_run_matches_caffenet(runs, kd_data, tmp_path):
    """A --prototxt train_stage2 run's student, with the sizes its prototxt gives, predicts
    what CaffeNet's train_stage2 (TEST phase) computes at fc8_mscoco; tools/test.py tests
    that run through it."""
    from mlic.caffe.student_export import load_student
    from mlic.deploy import load_images

    model, info = load_student(runs["stage2_proto"])
    assert info.cfg.student_size == STUDENT and info.cfg.student_head == "fc8_mscoco"
    images = [str(p) for p in _test_images(kd_data)]
    x = load_images(images, info)
    net = CaffeNet(runs["proto"], "TEST")
    load_param_dict(net, read_weight_file(runs["stage2_proto"]).params)  # its teacher by reference
    net.eval()
    from mlic.data import read_datalist

    dl = read_datalist(kd_data["test"], root_folder=kd_data["root_folder"])
    label_roi = torch.as_tensor(np.stack([dl.label_roi(i) for i in range(len(dl))]))
    with torch.no_grad():
        net(data=x, label_roi=label_roi)
        ref = torch.sigmoid(net.blobs["fc8_mscoco"])
        ours = model.predict(x)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-6), (ours - ref).abs().max()
    _, scores = _test_tool(runs["stage2_proto"], kd_data, tmp_path / "t")
    assert np.allclose(scores[:, : SMALL["classes"]], ref.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("what, fragment", [
    ("teacher", "a WSDDN teacher (fc8_c, fc8_d), not a student classifier"),
    ("missing-image", "no-such.jpg: no such file"),
    ("not-an-image", "not an image OpenCV can read"),
    ("truncated", "cannot read this torch.save file; it is truncated or corrupt"),
])
def test_predict_errors_are_one_sentence_and_exit_2(runs, kd_data, tmp_path, what, fragment):
    student = tmp_path / "student.pt"
    assert convert([str(runs["stage2"]), str(student), "--student"]) == 0
    image = _test_images(kd_data)[0]
    model = str(student)
    if what == "teacher":
        model = str(runs["teacher"])
    elif what == "missing-image":
        image = str(tmp_path / "no-such.jpg")
    elif what == "not-an-image":
        (tmp_path / "x.jpg").write_text("hello")
        image = str(tmp_path / "x.jpg")
    else:
        (tmp_path / "t.pt").write_bytes(student.read_bytes()[:500])
        model = str(tmp_path / "t.pt")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), image, "--model", model],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

