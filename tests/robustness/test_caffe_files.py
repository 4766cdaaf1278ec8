"""Malformed prototxts, caffemodels and weight files through the tools: each case -> the
exit status and a fragment of the one sentence it must print, which names the file. The
tools' main() runs in this process (one case also as its own process, for the real exit
status); nothing here may end in a traceback."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlic import _ext
from tests.conftest import PROTOTXT_REF
from tests.ports.helpers import SMALL, small_cfg, small_prototxt
from tests.robustness.conftest import REPO, tool_main
from mlic.caffe.weight_files import save_port_caffemodel

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
RUN = ["--no-tensorboard", "--quiet", "--max-iter", "1", "--checkpoint-period", "0"]


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Good and broken files, by name."""
    from mlic.data.synthetic import SyntheticConfig, generate_dataset
    from prototxt_ports import WSDDN

    root = tmp_path_factory.mktemp("robust_caffe")
    data = generate_dataset(str(root / "d"), SyntheticConfig(num_train=4, num_test=2, bbox_num=SMALL["rois"],
                                                             image_size=SMALL["input_size"],
                                                             num_classes=SMALL["classes"], seed=4))
    out = {"root": root, "train": data["train"], "test": data["test"], "images": data["root_folder"]}
    for name in ("wsddn_train", "train_stage1"):
        p = root / f"{name}.prototxt"
        p.write_text(small_prototxt((PROTOTXT_REF / f"{name}.prototxt").read_text()))
        out[name] = p
    torch.manual_seed(0)
    port = WSDDN(small_cfg())
    out["good.caffemodel"] = root / "good.caffemodel"
    save_port_caffemodel(port, out["good.caffemodel"])
    ckpt = root / "final.pt"
    torch.save({"model": port.state_dict(), "meta": {"stage": "wsddn"}}, ckpt)
    out["final.pt"] = ckpt
    blobs = {
        "truncated.pt": ckpt.read_bytes()[:4000],
        "truncated.caffemodel": out["good.caffemodel"].read_bytes()[:-9],
        "empty.caffemodel": b"",
        "text.caffemodel": b'name: "net"\nlayer { name: "a" type: "ReLU" }\n',
        "binary.prototxt": out["good.caffemodel"].read_bytes()[:600],
        "syntax.prototxt": b'name: "n"\nlayer { name: "a" type: "ReLU" bottom: "x" top: "x" \n',
        "unknown_type.prototxt": b'name: "n"\nlayer { name: "a" type: "Input" top: "x" input_param { shape { '
                                 b'dim: 1 } } }\nlayer { name: "b" type: "Frobnicate" bottom: "x" top: "y" }\n',
        "unknown_bottom.prototxt": b'name: "n"\nlayer { name: "b" type: "ReLU" bottom: "nowhere" top: "y" }\n',
        "not_a_case.npz": b"hello",
    }
    for name, b in blobs.items():
        (root / name).write_bytes(b)
        out[name] = root / name
    torch.save([1, 2, 3], root / "list.pt")
    out["list.pt"] = root / "list.pt"
    text = out["wsddn_train"].read_text()
    for field in ("att_num", "bbox_num"):
        p = root / f"no_{field}.prototxt"
        p.write_text("\n".join(l for l in text.splitlines() if field not in l) + "\n")
        out[f"no_{field}.prototxt"] = p
    from mlic.caffe import CaffeNet

    other = CaffeNet('name: "o" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
                     'layer { name: "ip_other" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 2 } }')
    from mlic.caffe.weight_files import save_caffemodel

    save_caffemodel(other, root / "other.caffemodel")
    out["other.caffemodel"] = root / "other.caffemodel"
    wide = WSDDN(small_cfg(fc_dim=SMALL["fc"] * 2))
    save_port_caffemodel(wide, root / "wide.caffemodel")
    out["wide.caffemodel"] = root / "wide.caffemodel"
    # non-finite and miscounted blobs
    from mlic.caffe.io import parse_caffemodel_bytes, write_binary
    from mlic.caffe.weight_files import caffemodel_to_param_dict

    for name, edit in (("nan.caffemodel", lambda b: b.data.__setitem__(3, float("nan"))),
                       ("short_blob.caffemodel", lambda b: b.data.__delitem__(-1))):
        msg = parse_caffemodel_bytes(out["good.caffemodel"].read_bytes())
        edit(next(l for l in msg.layer if l.name == "fc6").blobs[0])
        write_binary(msg, root / name)
        out[name] = root / name
    params = caffemodel_to_param_dict(out["good.caffemodel"])
    params["fc7/1"][0] = float("inf")
    torch.save(params, root / "inf.pt")
    out["inf.pt"] = root / "inf.pt"
    # files with their SHA-256 beside them: one altered after it was written, one moved without it
    from mlic.engine.checkpoint import atomic_save

    for name in ("hashed.pt", "flipped.pt"):
        out[name] = atomic_save({"model": port.state_dict(), "meta": {"stage": "wsddn"}}, root / name)
    data = bytearray(out["flipped.pt"].read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
    out["flipped.pt"].write_bytes(bytes(data))
    (root / "link.pt").symlink_to(out["hashed.pt"])
    out["link.pt"] = root / "link.pt"
    (root / "overwrite.prototxt").write_text(
        'name: "n"\nlayer {\n  name: "in" type: "Input" top: "x"\n  input_param { shape { dim: 1 dim: 3 } }\n}\n'
        'layer {\n  name: "a" type: "ReLU" bottom: "x" top: "y"\n}\n'
        'layer { name: "s" type: "Sigmoid" bottom: "x" top: "s" }\n'
        'layer {\n  name: "b" type: "ReLU" bottom: "s" top: "y"\n}\n'
        'layer { name: "c" type: "ReLU" bottom: "y2" top: "z" }\n')
    out["overwrite.prototxt"] = root / "overwrite.prototxt"
    return out


def _train(f, *extra, prototxt="wsddn_train"):
    return ["--prototxt", str(f[prototxt]), "--datalist", f["train"], "--root-folder", f["images"],
            "--out", str(f["root"] / "run"), *RUN, *extra]


def _convert(src, *extra, dst="out.caffemodel", prototxt="wsddn_train"):
    return lambda f: [str(f[src] if src in f else src), str(f["root"] / dst),
                      *(["--prototxt", str(f.get(prototxt, f["root"] / prototxt))] if prototxt else []), *extra]


# case: (tool, argv from the files, exit status, fragment; "{name}" is that file's path)
CASES = {
    # prototxts
    "binary file as compare --prototxt": (
        "compare_caffe", lambda f: [str(PROTOTXT_REF.parent / "caffe" / "scale.npz"), "--prototxt",
                                    str(f["binary.prototxt"])], 2,
        "{binary.prototxt}: not a text network definition (prototxt) (byte"),
    "prototxt with a syntax error": (
        "convert_caffemodel", _convert("good.caffemodel", prototxt="syntax.prototxt"), 2, "{syntax.prototxt}:2:49: Expected \"}\""),
    "unknown layer type": (
        "convert_caffemodel", _convert("good.caffemodel", prototxt="unknown_type.prototxt"), 2,
        "{unknown_type.prototxt}:3: layer 'b': unknown layer type 'Frobnicate'"),
    "a bottom no layer produces": (
        "convert_caffemodel", _convert("good.caffemodel", prototxt="unknown_bottom.prototxt"), 2,
        "{unknown_bottom.prototxt}:2: layer 'b' (type ReLU): unknown bottom blob 'nowhere'"),
    "HumanAttData without att_num": (
        "train", lambda f: _train(f, prototxt="no_att_num.prototxt"), 2,
        "{no_att_num.prototxt}:3: layer 'data' (type HumanAttData): human_att_data_param has no att_num"),
    "HumanAttData without bbox_num": (
        "convert_caffemodel", _convert("good.caffemodel", prototxt="no_bbox_num.prototxt"), 2,
        "{no_bbox_num.prototxt}:33: layer 'data' (type HumanAttData): human_att_data_param has no bbox_num"),
    "missing prototxt": (
        "convert_caffemodel", _convert("good.caffemodel", prototxt="nowhere.prototxt"), 2,
        "cannot read network definition (prototxt)"),
    # caffemodels
    "truncated caffemodel": (
        "convert_caffemodel", _convert("truncated.caffemodel", dst="x.pt", prototxt=None), 2,
        "{truncated.caffemodel}: not a valid caffemodel (truncated or corrupt"),
    "empty caffemodel": (
        "convert_caffemodel", _convert("empty.caffemodel"), 2, "{empty.caffemodel}: empty file, not a weights file"),
    "text prototxt given as caffemodel": (
        "convert_caffemodel", _convert("text.caffemodel"), 2, "it looks like a text prototxt, not a binary caffemodel"),
    "caffemodel sharing no layer with the net": (
        "convert_caffemodel", _convert("other.caffemodel"), 2,
        "{other.caffemodel}: shares no layer name with the net (weights); the file has ip_other"),
    "caffemodel sharing no layer, in training": (
        "train", lambda f: _train(f, "--weights", str(f["other.caffemodel"])), 2,
        "{other.caffemodel}: shares no layer name with the net"),
    "caffemodel of another size": (
        "convert_caffemodel", _convert("wide.caffemodel"), 2,
        "{wide.caffemodel}: cannot copy blob 0 of layer 'fc6': shape mismatch"),
    "truncated compare --caffemodel": (
        "compare_caffe", lambda f: [str(PROTOTXT_REF.parent / "caffe" / "mini_wsddn.npz"), "--caffemodel",
                                    str(f["truncated.caffemodel"])], 2, "{truncated.caffemodel}: not a valid caffemodel"),
    # weight files
    "truncated .pt to train.py --weights": (
        "train", lambda f: _train(f, "--weights", str(f["truncated.pt"])), 2,
        "{truncated.pt}: cannot read this torch.save file; it is truncated or corrupt"),
    "truncated .pt to the converter": (
        "convert_caffemodel", _convert("truncated.pt"), 2, "{truncated.pt}: cannot read this torch.save file"),
    "truncated .pt to test.py": (
        "test", lambda f: ["--weights", str(f["truncated.pt"]), "--datalist", f["test"], "--root-folder",
                           f["images"]], 2, "--weights {truncated.pt}: cannot read this torch.save file"),
    "a torch file that holds no weights": (
        "convert_caffemodel", _convert("list.pt"), 2, "{list.pt}: a torch.save file but not weights"),
    "missing weights file": (
        "train", lambda f: _train(f, "--weights", str(f["root"] / "nowhere.caffemodel")), 2,
        "nowhere.caffemodel: no such weights file"),
    "an empty name in --weights a,,b": (
        "train", lambda f: _train(f, "--weights", f"{f['final.pt']},,{f['good.caffemodel']}"), 2,
        "an empty name in the comma-separated list"),
    "--teacher for a net without teacher layers": (
        "train", lambda f: _train(f, "--teacher", str(f["final.pt"])), 2,
        "{final.pt}: a teacher was given but this net has no teacher layers"),
    "a KD prototxt without its teacher": (
        "train", lambda f: _train(f, prototxt="train_stage1"), 2,
        "the teacher layers of this KD net would keep their initial values (conv_wsd_1_1"),
    "torchvision weights not in the cache": (
        "convert_caffemodel", _convert("torchvision:vgg16"), 2,
        "torchvision:vgg16: torchvision's VGG16 weights are not in the local cache"),
    "a teacher where a student is wanted": (
        "predict", lambda f: [str(Path(f["images"]) / _first_image(f)), "--model", str(f["final.pt"])], 2,
        "{final.pt}: a WSDDN teacher (fc8_c, fc8_d), not a student classifier"),
    "a student export without a student": (
        "convert_caffemodel", _convert("final.pt", "--student", dst="s.pt", prototxt=None), 2,
        "{final.pt}: a WSDDN teacher (fc8_c, fc8_d), not a student classifier"),
    "a NaN weight in a caffemodel, in training": (
        "train", lambda f: _train(f, "--weights", str(f["nan.caffemodel"])), 2,
        "{nan.caffemodel}: layer 'fc6' blob 0: holds 1 non-finite value(s) (nan or inf)"),
    "a NaN weight in a caffemodel, to the converter": (
        "convert_caffemodel", _convert("nan.caffemodel", dst="x.pt", prototxt=None), 2,
        "{nan.caffemodel}: layer 'fc6' blob 0: holds 1 non-finite value(s)"),
    "an inf in a param dict": (
        "train", lambda f: _train(f, "--weights", str(f["inf.pt"])), 2,
        "{inf.pt}: layer 'fc7' blob 1 holds 1 non-finite value(s) (nan or inf)"),
    "a blob with a value missing": (
        "convert_caffemodel", _convert("short_blob.caffemodel", dst="x.pt", prototxt=None), 2,
        "{short_blob.caffemodel}: layer 'fc6' blob 0: holds "),
    "a second layer writing a top again": (
        "convert_caffemodel", _convert("good.caffemodel", prototxt="overwrite.prototxt"), 2,
        "{overwrite.prototxt}:10: layer 'b': top blob 'y' is produced by multiple sources"),
    # the SHA-256 recorded beside a file
    "an altered file to test.py": (
        "test", lambda f: ["--weights", str(f["flipped.pt"]), "--datalist", f["test"], "--root-folder",
                           f["images"]], 2,
        "--weights {flipped.pt} is corrupt: its SHA-256 differs from the one recorded in flipped.pt.sha256"),
    "an altered file to train.py --weights": (
        "train", lambda f: _train(f, "--weights", str(f["flipped.pt"])), 2,
        "{flipped.pt} is corrupt: its SHA-256 differs from the one recorded in flipped.pt.sha256"),
    "an altered file to train.py --teacher": (
        "train", lambda f: _train(f, "--teacher", str(f["flipped.pt"]), prototxt="train_stage1"), 2,
        "{flipped.pt} is corrupt: its SHA-256 differs"),
    "an altered file to the converter": (
        "convert_caffemodel", _convert("flipped.pt"), 2,
        "{flipped.pt} is corrupt: its SHA-256 differs from the one recorded in flipped.pt.sha256"),
    # the converter's output
    "the converter's output is its input": (
        "convert_caffemodel", lambda f: [str(f["hashed.pt"]), str(f["hashed.pt"])], 2,
        "{hashed.pt}: this is the input file {hashed.pt}; writing it would replace the weights being converted"),
    "the converter's output is its input through a link": (
        "convert_caffemodel", lambda f: [str(f["hashed.pt"]), str(f["link.pt"])], 2,
        "{link.pt}: this is the input file {hashed.pt}"),
    "the converter's output in a missing folder": (
        "convert_caffemodel", _convert("good.caffemodel", dst="nowhere/x.caffemodel"), 2,
        "nowhere/x.caffemodel: the folder {root}/nowhere does not exist"),
    # reference cases
    "missing reference case": (
        "compare_caffe", lambda f: [str(f["root"] / "nowhere.npz")], 2, "nowhere.npz: no such reference case file"),
    "a reference case that is not an npz": (
        "compare_caffe", lambda f: [str(f["not_a_case.npz"])], 2, "{not_a_case.npz}: not a reference case (.npz)"),
}


def _first_image(f):
    return Path(f["test"]).read_text().split()[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_caffe_file(f, case, capsys, monkeypatch, tmp_path):
    tool, argv, status, fragment = CASES[case]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torchvision cache
    fragment = re.sub(r"\{([\w.]+)\}", lambda m: str(f[m.group(1)]), fragment)
    capsys.readouterr()
    rc = tool_main(tool)(argv(f))
    out, err = capsys.readouterr()
    assert rc == status, (rc, out[-2000:], err[-2000:])
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # train.py and test.py log INFO lines before it
    assert last.startswith(f"{tool}.py: error: ") and fragment in last, last


def test_exit_status_of_the_script(f):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "convert_caffemodel.py"), str(f["truncated.pt"]),
                        str(f["root"] / "x.caffemodel"), "--prototxt", str(f["wsddn_train"])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"convert_caffemodel.py: error: {f['truncated.pt']}: cannot read this torch.save file; it is truncated or "
        f"corrupt ({r.stderr.split('corrupt (', 1)[1].strip()}"]


# The library raises what the tools print: (case, call on the files, error type, fragment)
LIBRARY_CASES = {
    "CaffeNet(weights=) sharing no layer with the net": (
        lambda f: __import__("mlic.caffe", fromlist=["CaffeNet"]).CaffeNet(
            f["wsddn_train"], "TEST", weights=str(f["other.caffemodel"])),
        "CaffemodelError", "{other.caffemodel}: shares no layer name with the net (weights); the file has ip_other"),
    "CaffeNet(weights=) with a NaN weight": (
        lambda f: __import__("mlic.caffe", fromlist=["CaffeNet"]).CaffeNet(
            f["wsddn_train"], "TEST", weights=str(f["nan.caffemodel"])),
        "CaffemodelError", "{nan.caffemodel}: layer 'fc6' blob 0: holds 1 non-finite value(s)"),
    "CaffeNet(weights=) with an altered file": (
        lambda f: __import__("mlic.caffe", fromlist=["CaffeNet"]).CaffeNet(
            f["wsddn_train"], "TEST", weights=str(f["flipped.pt"])),
        "IntegrityError", "{flipped.pt} is corrupt: its SHA-256 differs"),
}


@pytest.mark.parametrize("case", list(LIBRARY_CASES))
def test_library_raises(f, case):
    call, error, fragment = LIBRARY_CASES[case]
    fragment = re.sub(r"\{([\w.]+)\}", lambda m: str(f[m.group(1)]), fragment)
    with pytest.raises(ValueError) as exc:
        call(f)
    assert type(exc.value).__name__ == error and fragment in str(exc.value), str(exc.value)


def _unshare_ok():
    import shutil

    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"],
                                                                  capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="no user namespace to mount a small tmpfs in")
@pytest.mark.parametrize("mount,fragment", [
    ("ro", "cannot write {dst}: Read-only file system"),
    ("size=12k", "no space left on device writing {dst}"),
])
@pytest.mark.parametrize("dst", ["x.pt", "x.caffemodel"])
def test_the_converter_on_a_file_system_it_cannot_write(f, tmp_path, mount, fragment, dst):
    """One sentence naming the output and the cause, exit status 2, nothing partial left."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = mnt / dst
    cmd = (f"mount -t tmpfs -o {mount} tmpfs {mnt} && {sys.executable} {REPO / 'tools' / 'convert_caffemodel.py'} "
           f"{f['good.caffemodel']} {out} --prototxt {f['wsddn_train']}; rc=$?; echo LISTING; ls -A {mnt}; exit $rc")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300,
                       env=dict(__import__("os").environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == f"convert_caffemodel.py: error: {fragment.format(dst=out)}", r.stderr
    assert r.stdout.split("LISTING")[1].strip() == "", r.stdout  # no partial file, no hash file
