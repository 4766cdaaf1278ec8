"""Weight files across tools/train.py: a trained WSDDN as the teacher of the released KD
prototxts, several --weights files, and the untrained-teacher guard."""
import pytest
import torch

from mlic import _ext
from mlic.caffe.weight_files import read_weight_file
from prototxt_ports import wsddn_to_kd_name
from tests.caffe.helpers import PORT_NET, released_prototxt, train

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
RUN = ["--max-iter", "1", "--base-lr", "0", "--seed", "3", "--no-tensorboard", "--quiet", "--checkpoint-period", "100"]


def _run_prototxt(proto, kd_data, out, *extra):
    from mlic.cli.train import main

    return main(["--prototxt", str(proto), "--datalist", kd_data["train"], "--root-folder", kd_data["root_folder"],
                 "--out", str(out), *RUN, *extra])


def _train_prototxt(proto, kd_data, out, *extra):
    assert _run_prototxt(proto, kd_data, out, *extra) == 0
    return read_weight_file(out / "final.pt")


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_released_kd_prototxt_takes_the_teacher(kd_data, kd_teacher, tmp_path, stage):
    proto = released_prototxt(tmp_path, f"train_{stage}")
    out = tmp_path / "kd"
    trained = _train_prototxt(proto, kd_data, out, "--teacher", str(kd_teacher))
    t = read_weight_file(kd_teacher).params
    wsd = [k for k in trained.params if "_wsd_" in k]
    assert len(wsd) == (30 if stage == "stage1" else 34)
    for k in wsd:  # base_lr 0: the teacher comes out as it went in
        layer, _, i = k.rpartition("/")
        src = [s for s in t if wsddn_to_kd_name(s.rpartition("/")[0]) == layer and s.endswith("/" + i)]
        assert len(src) == 1 and torch.equal(trained.params[k], t[src[0]]), k
    log = (out / "train.log").read_text()
    assert f"teacher {kd_teacher} (checkpoint, stage wsddn): " in log and "conv1_1 -> conv_wsd_1_1" in log


def test_kd_prototxt_without_teacher_is_refused_unless_asked(kd_data, tmp_path, capsys):
    from mlic.cli.train import main

    proto = released_prototxt(tmp_path, "train_stage1")
    capsys.readouterr()
    assert _run_prototxt(proto, kd_data, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert ("train.py: error: the teacher layers of this KD net would keep their initial values (conv_wsd_1_1, "
            in err and "--allow-untrained-teacher" in err and "Traceback" not in err), err
    trained = _train_prototxt(proto, kd_data, tmp_path / "b", "--allow-untrained-teacher")
    assert "conv_wsd_1_1/0" in trained.params
    assert "conv_wsd_1_1" in (tmp_path / "b" / "train.log").read_text().split("kept their initial values")[1]
    stage2 = ["--stage", "stage2", "--datalist", kd_data["train"], "--root-folder", kd_data["root_folder"], *RUN,
              *PORT_NET]
    capsys.readouterr()
    assert main([*stage2, "--out", str(tmp_path / "c")]) == 2
    assert "needs --teacher (the trained WSDDN), or --allow-untrained-teacher" in capsys.readouterr().err
    assert main([*stage2, "--out", str(tmp_path / "d"), "--allow-untrained-teacher"]) == 0


def test_several_weight_files_and_a_caffemodel_teacher(kd_data, kd_teacher, tmp_path):
    """Stage 2 through the released prototxt from stage 1's final.pt and a student's, the
    teacher as a caffemodel exported from our checkpoint: later --weights files win, the
    teacher is loaded last, and the log says which layer came from which file."""
    from mlic.cli.convert import main as convert

    s1_final = tmp_path / "s1" / "final.pt"
    s1 = _train_prototxt(released_prototxt(tmp_path, "train_stage1"), kd_data, tmp_path / "s1", "--teacher",
                         str(kd_teacher))
    student_final = train(kd_data, tmp_path / "student", "--stage", "student", *PORT_NET, iters=1, seed=4)
    student = read_weight_file(student_final).params
    t_model = tmp_path / "teacher.caffemodel"
    assert convert([str(kd_teacher), str(t_model), "--prototxt", str(released_prototxt(tmp_path, "wsddn_train"))]) == 0
    out = tmp_path / "s2"
    s2 = _train_prototxt(released_prototxt(tmp_path, "train_stage2"), kd_data, out, "--weights",
                         f"{s1_final},{student_final}", "--teacher", str(t_model))
    t = read_weight_file(kd_teacher).params
    for k in ("conv1_1/0", "conv5_3/1", "fc8_mscoco/0"):  # the student's file came last
        assert torch.equal(s2.params[k], student[k]), k
    for k in ("conv_wsd_1_1/0", "fc_wsd_7/1"):  # stage 1 had the teacher too, the teacher file won
        assert torch.equal(s2.params[k], s1.params[k]) and torch.equal(s2.params[k], t[k.replace("_wsd_", "")]), k
    assert torch.equal(s2.params["fc_wsd_8_c/0"], t["fc8_c/0"])
    log = (out / "train.log").read_text()
    assert f"weights {s1_final} (checkpoint, stage prototxt, teacher from {kd_teacher}): 0 layer(s): -" in log
    assert f"weights {student_final} (checkpoint, stage student): 16 layer(s): conv1_1" in log
    assert f"teacher {t_model} (caffemodel): " in log
