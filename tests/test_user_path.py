"""The user's path on the original data, start to end, through the tools as a user runs
them (each in its own process): a COCO 2014-style download (instances JSON with the 80
real category ids, JPEG photographs) -> tools/make_datalist.py with worker processes,
stopped by Ctrl-C and resumed -> the WSDDN teacher from a VGG16 caffemodel -> stage 1 and
stage 2 through --stage and through the released KD prototxts with --teacher ->
tools/test.py (tie-aware ranking, --gt from the instances JSON) -> the student exported to
a caffemodel and to a student-only file -> tools/predict.py on a photograph.

The nets are VGG16 at 1/16 of its widths on 64-pixel inputs with 8 proposals per image
(tests/coco_style.py); everything else is as a user has it."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mlic import _ext
from mlic.caffe.weight_files import STUDENT_FORMAT, read_weight_file
from mlic.caffe.weight_files import caffemodel_to_param_dict
from mlic.data import read_datalist
from mlic.evaluation import load_scores
from tests.process_group import ctrl_c, process_group
from tests.coco_style import (COCO_NAMES, NET_FLAGS, TRAIN_IDS, coco_file_name, write_coco_style,
                              write_released_prototxts, write_vgg16_caffemodel)

REPO = Path(__file__).resolve().parents[1]
SIZE, BOXES = 64, 8
TRAIN = ["--max-iter", "2", "--batch-size", "2", "--no-tensorboard"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")]


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("MLIC_DEVICE", None)
    return env


def tool(ws, name, *args, status=0):
    """tools/<name>.py in its own process, in the user's folder `ws`."""
    r = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)], cwd=ws, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == status, f"{name}.py {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The user's folder: the COCO download, the VGG16 caffemodel and the released prototxts."""
    ws = tmp_path_factory.mktemp("user")
    coco = write_coco_style(ws / "coco", size=112)
    write_vgg16_caffemodel(ws / "VGG_ILSVRC_16_layers.caffemodel")
    write_released_prototxts(ws / "prototxt", rois=BOXES, input_size=SIZE)
    return ws, coco


def _datalist_args(split, out, workers):
    return ["coco", "--instances", f"coco/annotations/instances_{split}2014.json", "--image-prefix", f"{split}2014/",
            "--image-root", "coco/", "--selective-search", "--bbox-num", BOXES, "--new-width", SIZE,
            "--new-height", SIZE, "--workers", workers, "--out", out]


def _wait_for_lines(path, n, proc, timeout=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, f"make_datalist.py ended early:\n{proc.stderr.read()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach {n} lines in {timeout} s")


@pytest.fixture(scope="module")
def datalists(ws):
    """make_datalist.py for val2014, and for train2014 interrupted by Ctrl-C and resumed.

    The sixth training image is a FIFO while the first run goes on: its reader blocks
    there, so the interruption lands at a known place (five finished lines) whatever the
    machine's speed; then the photograph arrives and the same command is run again."""
    ws, coco = ws
    val = tool(ws, "make_datalist", *_datalist_args("val", "coco_val.txt", 2), "--class-names-out", "coco_names.txt")
    blocked = ws / "coco" / "train2014" / coco_file_name("train", TRAIN_IDS[5])
    photo = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    args = _datalist_args("train", "coco_train.txt", 2)
    partial = ws / "coco_train.txt.partial"
    with process_group([sys.executable, str(REPO / "tools" / "make_datalist.py"), *map(str, args)], cwd=ws,
                       env=_env()) as proc:
        _wait_for_lines(partial, 5, proc)
        time.sleep(0.5)
        out, err = ctrl_c(proc, timeout=120)
    interrupted = dict(status=proc.returncode, stderr=err, partial=partial.read_bytes())
    blocked.unlink()
    blocked.write_bytes(photo)
    resumed = tool(ws, "make_datalist", *args)
    # the same list in one go, in this process only
    tool(ws, "make_datalist", *_datalist_args("train", "coco_train_one_go.txt", 1))
    return dict(val=val, interrupted=interrupted, resumed=resumed)


def test_datalists_from_the_instances_json(ws, datalists):
    ws, coco = ws
    it = datalists["interrupted"]
    assert it["status"] == 130, it["stderr"]
    assert ("make_datalist.py: interrupted; the finished lines are kept in coco_train.txt.partial, and the same "
            "command continues from there" in it["stderr"]) and "Traceback" not in it["stderr"], it["stderr"]
    one_go = (ws / "coco_train_one_go.txt").read_bytes()
    assert it["partial"] == b"".join(one_go.splitlines(keepends=True)[:5])
    assert "resuming: 5 of 12 images already done" in datalists["resumed"].stderr
    assert "wrote 12 lines, 80 labels, 8 boxes each" in datalists["resumed"].stdout
    assert (ws / "coco_train.txt").read_bytes() == one_go
    assert not list(ws.glob("*.partial*"))
    assert (ws / "coco_names.txt").read_text().splitlines() == COCO_NAMES
    for split in ("train", "val"):
        dl = read_datalist(ws / f"coco_{split}.txt", att_num=80, root_folder=str(ws / "coco") + "/")
        # the 80 label columns follow the category ids (1, 3, 18, 90 -> columns 0, 2, 17, 79)
        np.testing.assert_array_equal(dl.labels, coco["labels"][split])
        assert dl.paths[0].endswith(f"{split}2014/" + coco_file_name(split, min(json.loads(
            Path(coco[split]).read_text())["images"], key=lambda im: im["id"])["id"]))
        assert dl.bbox_num == BOXES
        np.testing.assert_allclose(dl.boxes[:, :, 4], [[(BOXES - r) / BOXES for r in range(BOXES)]] * len(dl))
        assert (dl.boxes[:, :, :4] >= 0).all() and (dl.boxes[:, :, :4] <= SIZE - 1).all()


def _train(ws, out, *args):
    tool(ws, "train", "--datalist", "coco_train.txt", "--root-folder", "coco/", *args, *TRAIN, "--out", out)
    return ws / out / "final.pt"


STAGE_NET = ["--num-classes", 80, "--input-size", SIZE, *NET_FLAGS]


@pytest.fixture(scope="module")
def teacher(ws, datalists):
    ws, _ = ws
    return _train(ws, "runs/teacher", "--stage", "wsddn", "--test-datalist", "coco_val.txt", *STAGE_NET,
                  "--weights", "VGG_ILSVRC_16_layers.caffemodel")


def _sklearn_map(scores, labels):
    return np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])
                    if labels[:, c].any()])


def _check_tie_aware(ws, coco, out, stderr):
    """scores.csv and metrics.json of a test.py run: the copied image's scores tie with its
    original's; mAP is scikit-learn's (tied scores one threshold) over the instances
    JSON's labels, which differs from breaking the tie in either image's favour."""
    sf = load_scores(ws / out / "scores.csv")
    labels = coco["labels"]["val"]
    np.testing.assert_array_equal(sf.labels, labels)
    kept, copy = (sf.paths.index("val2014/" + name) for name in coco["dup"])
    assert np.array_equal(sf.scores[kept], sf.scores[copy]), "a copied image must get the same scores"
    metrics = json.loads((ws / out / "metrics.json").read_text())
    ref = _sklearn_map(sf.scores, labels)
    assert metrics["mAP"] == pytest.approx(ref, abs=1e-12)
    eps = np.zeros_like(sf.scores)
    eps[kept] = 1e-6
    assert abs(_sklearn_map(sf.scores + eps, labels) - ref) > 1e-4  # the tie matters
    assert "of the image scores are tied with another score of the same class" in stderr
    return sf, metrics


def test_teacher_tested_with_ground_truth_from_the_instances_json(ws, teacher):
    ws, coco = ws
    log = (teacher.parent / "train.log").read_text()
    assert ("weights VGG_ILSVRC_16_layers.caffemodel (caffemodel): 15 layer(s): conv1_1, conv1_2, conv2_1, "
            in log) and "not in this net (ignored): fc8" in log
    r = tool(ws, "test", "--weights", teacher, "--datalist", "coco_val.txt", "--root-folder", "coco/",
             "--gt", "coco/annotations/instances_val2014.json", "--class-names", "coco_names.txt", "--multiscale",
             "--batch-size", 1, "--out", "runs/teacher/test")
    sf, metrics = _check_tie_aware(ws, coco, "runs/teacher/test", r.stderr)
    assert sf.class_names == COCO_NAMES
    assert metrics["test"] == "multi-scale + mirror" and metrics["images"] == 7
    for key in ("CorLoc", "CorLoc_overall", "det_mAP"):
        assert 0 <= metrics[key] <= 1, (key, metrics)
    assert "CorLoc" in r.stdout and "detection mAP" in r.stdout and "person" in r.stdout


def _teacher_name(kd_layer):
    """conv_wsd_1_1 -> conv1_1, fc_wsd_6 -> fc6, fc_wsd_8_c -> fc8_c (the released renaming)."""
    return re.sub(r"^fc_wsd_(\d+)", r"fc\1", re.sub(r"^conv_wsd_(\d)_(\d)", r"conv\1_\2", kd_layer))


def _close_to_teacher(final, teacher):
    """The KD net's *_wsd_* layers are the teacher's (moved only by two steps of weight decay)."""
    t = read_weight_file(teacher).params
    kd = read_weight_file(final).params
    wsd = [k for k in kd if "_wsd_" in k]
    assert len(wsd) >= 30
    for k in wsd:
        layer, _, i = k.rpartition("/")
        torch.testing.assert_close(kd[k], t[f"{_teacher_name(layer)}/{i}"], rtol=1e-3, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def kd_ports(ws, teacher):
    ws, _ = ws
    s1 = _train(ws, "runs/stage1", "--stage", "stage1", "--teacher", teacher, "--weights",
                "VGG_ILSVRC_16_layers.caffemodel", *STAGE_NET)
    s2 = _train(ws, "runs/stage2", "--stage", "stage2", "--teacher", teacher, "--weights", s1,
                "--test-datalist", "coco_val.txt", *STAGE_NET)
    return s1, s2


@pytest.fixture(scope="module")
def kd_prototxts(ws, teacher):
    ws, _ = ws
    s1 = _train(ws, "runs/stage1_caffe", "--prototxt", "prototxt/train_stage1.prototxt", "--teacher", teacher,
                "--weights", "VGG_ILSVRC_16_layers.caffemodel", "--base-lr", "1e-4")
    s2 = _train(ws, "runs/stage2_caffe", "--prototxt", "prototxt/train_stage2.prototxt", "--teacher", teacher,
                "--weights", s1, "--test-datalist", "coco_val.txt", "--base-lr", "1e-4")
    return s1, s2


@pytest.mark.parametrize("route", ["kd_ports", "kd_prototxts"])
def test_distillation_takes_the_teacher(ws, teacher, route, request):
    ws, _ = ws
    s1, s2 = request.getfixturevalue(route)
    for final in (s1, s2):
        _close_to_teacher(final, teacher)
        log = (final.parent / "train.log").read_text()
        assert f"teacher {teacher} (checkpoint, stage wsddn): " in log and "conv1_1 -> conv_wsd_1_1" in log
        assert not [ln for ln in log.splitlines() if "kept their initial values" in ln and "_wsd_" in ln]
    s1_params = read_weight_file(s1).params
    assert "stage1" in (s1.parent / "train.log").read_text()
    log2 = (s2.parent / "train.log").read_text()
    assert f"weights {s1} (checkpoint, stage " in log2 and "15 layer(s): conv1_1" in log2
    assert set(k for k in s1_params if k.startswith(("conv1_1", "fc7"))) <= set(read_weight_file(s2).params)
    assert "eval @ iter 2: mAP=" in log2


def test_student_exported_tested_and_run_on_a_photograph(ws, kd_ports, kd_prototxts):
    ws, coco = ws
    # the stage-2 net (student and teacher) as a caffemodel for the released prototxt
    tool(ws, "convert_caffemodel", kd_ports[1], "stage2.caffemodel", "--prototxt", "prototxt/train_stage2.prototxt")
    final = read_weight_file(kd_ports[1]).params
    model = caffemodel_to_param_dict(ws / "stage2.caffemodel")
    assert {"conv1_1/0", "fc8_mscoco/0", "fc8_mscoco_soft/0", "conv_wsd_1_1/0", "fc_wsd_8_d/1"} <= set(model)
    for k, v in model.items():
        assert torch.equal(v, final[k]), k
    # the student alone, from the released prototxt's run
    tool(ws, "convert_caffemodel", kd_prototxts[1], "student.pt", "--student", "--class-names", "coco_names.txt")
    exp = torch.load(ws / "student.pt", weights_only=False)
    assert exp["format"] == STUDENT_FORMAT and exp["class_names"] == COCO_NAMES
    student = read_weight_file(ws / "student.pt").params
    assert not [k for k in student if "_wsd_" in k]
    trained = read_weight_file(kd_prototxts[1]).params
    for k in ("conv1_1/0", "fc7/1", "fc8_mscoco/0"):
        assert torch.equal(student[k], trained[k]), k
    # tested without the teacher: the same scores as the stage-2 checkpoint it came from
    r = tool(ws, "test", "--weights", "student.pt", "--datalist", "coco_val.txt", "--root-folder", "coco/",
             "--batch-size", 1, "--out", "runs/student_export/test")
    sf, _ = _check_tie_aware(ws, coco, "runs/student_export/test", r.stderr)
    tool(ws, "test", "--weights", kd_prototxts[1], "--datalist", "coco_val.txt", "--root-folder", "coco/",
         "--batch-size", 1, "--out", "runs/stage2_caffe/test")
    assert np.array_equal(load_scores(ws / "runs/stage2_caffe/test/scores.csv").scores, sf.scores)
    # a photograph: predict.py's top 5 are the test's five highest scores of that image
    name = coco["dup"][0]
    r = tool(ws, "predict", f"coco/val2014/{name}", "--model", "student.pt", "--top-k", 5, "--picture",
             "labelled.png")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"coco/val2014/{name}: "))
    printed = [(p.rsplit(" ", 1)[0], float(p.rsplit(" ", 1)[1])) for p in line.split(": ", 1)[1].split(", ")]
    row = sf.scores[sf.paths.index(f"val2014/{name}")]
    assert [p for _, p in printed] == [round(float(v), 3) for v in np.sort(row)[::-1][:5]]
    for label, p in printed:
        assert abs(row[COCO_NAMES.index(label)] - p) <= 5e-4, (label, p)
    picture = cv2.imread(str(ws / "labelled.png"))
    assert picture is not None and picture.shape[2] == 3
