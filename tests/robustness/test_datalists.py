"""Malformed datalists, ground truth and dataset files through the tools: each case -> the
exit status and a fragment of the one sentence it must print (or, for inputs that are
valid, a clean run). The tools' main() runs in this process (one case also as its own
process, for the real exit status); nothing here can crash the interpreter."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlic import _ext
from tests.robustness.conftest import REPO, tool_main

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
NET = ["--input-size", "64", "--student-size", "32", "--pooled-size", "1", "--width", "0.0625", "--fc-dim", "16",
       "--scales", "none", "--no-tensorboard", "--quiet", "--max-iter", "1", "--batch-size", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("robust_data")
    files = generate_dataset(str(root / "d"), SyntheticConfig(num_train=6, num_test=4, bbox_num=2, image_size=64,
                                                              num_classes=4, seed=5))
    lines = Path(files["train"]).read_text().splitlines()
    # the first 40 % of an image file: a JPEG (which libjpeg decodes, the rest grey) and a PNG
    import cv2

    img = cv2.imread(str(Path(files["root_folder"]) / lines[0].split()[0]))
    for ext in ("jpg", "png"):
        ok, buf = cv2.imencode(f".{ext}", img)
        assert ok
        (Path(files["root_folder"]) / "train" / f"cut.{ext}").write_bytes(buf.tobytes()[: len(buf) * 2 // 5])
    return root, files, lines


def _fields(line):
    return line.split()


def _edit(lines, fn):
    return "".join(fn(k, ln) + "\n" for k, ln in enumerate(lines))


# Each case: the text of the training list made from the 6 good lines (4 labels, 2 boxes).
CASES = {
    "three stray numbers on every line": (
        lambda L: _edit(L, lambda k, ln: ln + " 7 8 9"), [], 2, "3 more than whole boxes of 5"),
    "three stray numbers, label count given": (
        lambda L: _edit(L, lambda k, ln: ln + " 7 8 9"), ["--num-classes", "4"], 2,
        "train.txt:1: 18 fields cannot hold 1 path + 4 labels + 5 per box (att_num=4): 3 fields left over"),
    "labels written 1.0 0.0": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:1] + [f"{int(v)}.0" for v in _fields(ln)[1:5]]
                                                  + _fields(ln)[5:])), [], 0,
        "read as 4 labels + 2 boxes per line"),
    "a first box of 0/1 values on every line": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:5] + ["0", "0", "1", "1", "1"] + _fields(ln)[10:])),
        [], 2, "every line reads as 9 labels + 1 box or as 4 labels + 2 boxes"),
    "a first box of 0/1 values, label count given": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:5] + ["0", "0", "1", "1", "1"] + _fields(ln)[10:])),
        ["--num-classes", "4"], 0, "final weights"),
    "a label 2 on line 3": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:3] + ["2"] + _fields(ln)[4:]) if k == 2 else ln),
        [], 2, "train.txt:3: field 4 (label 3) must be 0 or 1, got '2'"),
    "a coordinate of 1e12": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:7] + ["1e12"] + _fields(ln)[8:]) if k == 1 else ln),
        ["--num-classes", "4"], 2, "train.txt:2: field 8 (box 1 x2) is '1e12', beyond +-16777216"),
    "no boxes": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:5])), ["--num-classes", "4"], 2,
        "train.txt:1: 0 proposal boxes per line"),
    "one field too many on line 1": (
        lambda L: _edit(L, lambda k, ln: ln + " 0.5" if k == 0 else ln), [], 2,
        "train.txt:1: wrong number of fields: 16, expected 15"),
    "nan score": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:9] + ["nan"] + _fields(ln)[10:]) if k == 4 else ln),
        ["--num-classes", "4"], 2, "train.txt:5: field 10 (box 1 score) is not a number: 'nan'"),
    "lines disagreeing evenly": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:5] + ["1", "0", "0", "1", "1"] + _fields(ln)[10:])
                        if k % 2 else ln), [], 2, "as many lines (3) read as"),
    "an empty file": (lambda L: "\n\n", [], 2, "the datalist has no entries"),
    "a path with a space": (
        lambda L: _edit(L, lambda k, ln: "my " + ln if k == 1 else ln), ["--num-classes", "4"], 2,
        "the image path seems to contain whitespace"),
    "a truncated JPEG on line 2": (
        lambda L: _edit(L, lambda k, ln: " ".join(["train/cut.jpg"] + _fields(ln)[1:]) if k == 1 else ln),
        ["--num-classes", "4", "--max-iter", "3"], 2, "train.txt:2: cannot decode image"),
    "a truncated PNG on line 2": (
        lambda L: _edit(L, lambda k, ln: " ".join(["train/cut.png"] + _fields(ln)[1:]) if k == 1 else ln),
        ["--num-classes", "4", "--max-iter", "3"], 2, "train.txt:2: cannot decode image"),
    "a UTF-8 byte order mark": (
        lambda L: "\ufeff" + _edit(L, lambda k, ln: ln), [], 2,
        "train.txt:1: the file starts with a UTF-8 byte order mark (EF BB BF)"),
    "lines ended by CR alone": (
        lambda L: "\r".join(L) + "\r", [], 2, "train.txt:1: lines end in a carriage return alone (CR"),
    "lines ended by CR alone, label count given": (
        lambda L: "\r".join(L) + "\r", ["--num-classes", "4"], 2, "train.txt:1: lines end in a carriage return alone"),
    "line 3 laid out as 9 labels + 1 box": (
        lambda L: _edit(L, lambda k, ln: " ".join(_fields(ln)[:5] + ["0", "0", "1", "1", "1"] + _fields(ln)[10:])
                        if k == 2 else ln), [], 0,
        "train.txt:3 reads as 9 labels + 1 box, unlike the 5 lines read as 4 labels + 2 boxes"),
    "a missing image on line 4": (
        lambda L: _edit(L, lambda k, ln: ln.replace("train/", "gone/") if k == 3 else ln), ["--num-classes", "4"], 2,
        "train.txt:4: image file not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_list(case, data, tmp_path, capsys):
    root, files, lines = data
    make, extra, status, fragment = CASES[case]
    src = tmp_path / "train.txt"
    src.write_text(make(lines))
    code = tool_main("train")(["--stage", "wsddn", "--datalist", str(src), "--root-folder", files["root_folder"],
                           "--out", str(tmp_path / "run"), *NET, *extra])
    err = capsys.readouterr().err
    assert code == status, err[-2000:]
    assert fragment in err, err[-2000:]
    if status == 2:
        assert "Traceback" not in err and err.count("error:") == 1


@pytest.mark.parametrize("case,status,fragment", [
    ("missing", 2, "cannot read the datalist"),
    ("binary", 2, "train.txt:2: line is not valid UTF-8 text"),
])
def test_unreadable_training_list(case, status, fragment, data, tmp_path, capsys):
    root, files, lines = data
    src = tmp_path / "train.txt"
    if case == "binary":
        src.write_bytes(lines[0].encode() + b"\n" + b"\xff\xfe" + lines[1].encode() + b"\n")
    code = tool_main("train")(["--stage", "wsddn", "--datalist", str(src), "--root-folder", files["root_folder"],
                           "--out", str(tmp_path / "run"), *NET])
    err = capsys.readouterr().err
    assert code == status and fragment in err, err[-2000:]


def test_a_test_list_with_another_label_count(data, tmp_path, capsys):
    root, files, lines = data
    test = tmp_path / "test.txt"
    test.write_text(_edit(lines, lambda k, ln: " ".join(_fields(ln)[:5] + ["0"] + _fields(ln)[5:])))
    code = tool_main("train")(["--stage", "wsddn", "--datalist", files["train"], "--root-folder", files["root_folder"],
                           "--test-datalist", str(test), "--out", str(tmp_path / "run"), *NET])
    err = capsys.readouterr().err
    assert code == 2 and "test.txt:1: wrong number of fields: 16, expected 15" in err, err[-2000:]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    root, files, _ = data
    out = tmp_path_factory.mktemp("robust_run")
    assert tool_main("train")(["--stage", "wsddn", "--datalist", files["train"], "--root-folder",
                           files["root_folder"], "--out", str(out), *NET]) == 0
    return out / "final.pt"


def _coco_gt(tmp_path, files, drop_last=False):
    g = json.loads(Path(files["gt_test"]).read_text())
    images = [{"id": k + 1, "file_name": Path(im["path"]).name, "width": im["width"], "height": im["height"]}
              for k, im in enumerate(g["images"])]
    if drop_last:
        images = images[:-1]
    p = tmp_path / "instances.json"
    p.write_text(json.dumps({"images": images, "annotations": [],
                             "categories": [{"id": 10 + k, "name": n} for k, n in enumerate(g["classes"])]}))
    return p


@pytest.mark.parametrize("case,status,fragment", [
    ("five labels per line", 2, "test.txt:1: wrong number of fields: 16, expected 15"),
    ("coco gt without the last image", 2, ("instances.json: no annotation for 'test/000003.png' (", "test.txt:4)")),
    ("gt in an unknown format", 2, "unknown ground truth format: expected COCO instances JSON"),
    ("coco gt with 80 categories", 2, "80 classes, but the network has 4"),
    ("coco gt", 0, "CorLoc"),
    ("the training split's gt", 2, ("gt_train.json: names another split ('train'): 4 of the 4 listed images matched "
                                    "only by file name", "('train/000000.png' for 'test/000000.png', ",
                                    "test.txt:1); ", " boxes fall outside the listed images and ")),
])
def test_test_tool_inputs(case, status, fragment, data, trained, tmp_path, capsys):
    root, files, lines = data
    test = tmp_path / "test.txt"
    test_lines = Path(files["test"]).read_text().splitlines()
    test.write_text(_edit(test_lines, lambda k, ln: ln))
    args = ["--weights", str(trained), "--datalist", str(test), "--root-folder", files["root_folder"]]
    if case == "five labels per line":
        test.write_text(_edit(test_lines, lambda k, ln: " ".join(_fields(ln)[:5] + ["0"] + _fields(ln)[5:])))
    elif case == "coco gt without the last image":
        args += ["--gt", str(_coco_gt(tmp_path, files, drop_last=True))]
    elif case == "gt in an unknown format":
        (tmp_path / "gt.json").write_text(json.dumps({"boxes": []}))
        args += ["--gt", str(tmp_path / "gt.json")]
    elif case == "coco gt with 80 categories":
        p = _coco_gt(tmp_path, files)
        d = json.loads(p.read_text())
        d["categories"] = [{"id": k + 1, "name": f"c{k}"} for k in range(80)]
        p.write_text(json.dumps(d))
        args += ["--gt", str(p)]
    elif case == "the training split's gt":
        args += ["--gt", files["gt_train"]]
    else:
        args += ["--gt", str(_coco_gt(tmp_path, files))]
    code = tool_main("test")(args)
    out, err = capsys.readouterr()
    assert code == status, err[-2000:]
    for frag in (fragment,) if isinstance(fragment, str) else fragment:
        assert frag in (err if status else out), (out + err)[-2000:]


@pytest.mark.parametrize("case,status,fragment", [
    ("instances without categories", 2, "missing 'categories' or 'images'"),
    ("instances not found", 2, "COCO instances file not found"),
    ("edge boxes model missing", 2, "opencv_extra repository, testdata/cv/ximgproc/model.yml.gz"),
    ("proposal file missing", 2, "proposal file not found"),
    ("no proposals for an image", 2, "no proposals for image 'a.jpg'"),
    ("bad shard", 2, "expected i/n with 1 <= i <= n"),
])
def test_make_datalist_inputs(case, status, fragment, tmp_path, capsys):
    import numpy as np

    from mlic.data.proposals import save_proposals_npz

    inst = tmp_path / "instances.json"
    inst.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                                "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    save_proposals_npz(str(tmp_path / "p.npz"), ["b.jpg"], [np.array([[0, 0, 5, 5]])], [np.array([0.5])])
    args = ["coco", "--instances", str(inst), "--out", str(tmp_path / "out.txt"), "--workers", "1"]
    src = ["--proposals", str(tmp_path / "p.npz")]
    if case == "instances without categories":
        inst.write_text(json.dumps({"images": [], "annotations": []}))
    elif case == "instances not found":
        args[2] = str(tmp_path / "nope.json")
    elif case == "edge boxes model missing":
        src = ["--edgeboxes-model", str(tmp_path / "model.yml.gz")]
    elif case == "proposal file missing":
        src = ["--proposals", str(tmp_path / "none.npz")]
    elif case == "bad shard":
        src += ["--shard", "5/4"]
    try:
        code = tool_main("make_datalist")(args + src)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == status and fragment in err, err[-2000:]
    assert "Traceback" not in err


def test_one_case_in_its_own_process(data, tmp_path):
    root, files, lines = data
    src = tmp_path / "train.txt"
    src.write_text(CASES["a label 2 on line 3"][0](lines))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--stage", "wsddn", "--datalist", str(src),
                        "--root-folder", files["root_folder"], "--out", str(tmp_path / "run"), *NET],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    assert "train.txt:3: field 4 (label 3) must be 0 or 1, got '2'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("tool", ["test", "convert_caffemodel"])
def test_weights_without_their_hash_are_read_with_a_warning(tool, data, trained, tmp_path, capsys):
    import shutil

    root, files, _ = data
    copy = tmp_path / "final.pt"
    shutil.copy(trained, copy)  # without final.pt.sha256
    args = (["--weights", str(copy), "--datalist", files["test"], "--root-folder", files["root_folder"]]
            if tool == "test" else [str(copy), str(tmp_path / "params.pt")])
    code = tool_main(tool)(args)
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert f"{copy} has no SHA-256 beside it (final.pt.sha256): it is read unverified" in err, err[-2000:]
