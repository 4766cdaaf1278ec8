"""KD checkpoints refer to the teacher file (path and SHA-256) instead of copying its
weights, unless --embed-teacher; loading one finds the teacher by path and checks it."""
import shutil

import pytest
import torch

from mlic import _ext
from tests.training.helpers import final_state, train_args

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    from mlic.cli.train import main

    out = tmp_path_factory.mktemp("teacher")
    assert main(train_args(tiny_data, out, iters=2)) == 0
    return out / "final.pt"


def kd(tiny_data, out, teacher, stage="stage1", iters=3, extra=()):
    return train_args(tiny_data, out, stage=stage, iters=iters, extra=["--teacher", str(teacher), *extra])


def test_kd_final_refers_to_the_teacher_unless_embedded(tiny_data, teacher, tmp_path):
    from mlic.engine.checkpoint import file_sha256
    from mlic.cli.train import main

    assert main(kd(tiny_data, tmp_path / "ref", teacher)) == 0
    assert main(kd(tiny_data, tmp_path / "emb", teacher, extra=["--embed-teacher"])) == 0
    ref = torch.load(tmp_path / "ref" / "final.pt", weights_only=False)
    emb = torch.load(tmp_path / "emb" / "final.pt", weights_only=False)
    assert not [k for k in ref["model"] if k.startswith("teacher.")]
    assert [k for k in emb["model"] if k.startswith("teacher.")]
    assert {k: v for k, v in emb["model"].items() if not k.startswith("teacher.")}.keys() == ref["model"].keys()
    assert ref["meta"]["teacher"]["path"] == str(teacher.resolve())
    assert ref["meta"]["teacher"]["sha256"] == file_sha256(teacher) and not ref["meta"]["teacher"]["embedded"]
    # under caffe-decay the teacher decays, so the checkpoints carry it (for an exact resume)
    ck = torch.load(tmp_path / "ref" / "checkpoints" / "iter_00000002.pt", weights_only=False)
    assert [k for k in ck["model"] if k.startswith("teacher.")]


def test_frozen_teacher_checkpoints_refer_and_resume_exactly(tiny_data, teacher, tmp_path, capsys):
    from mlic.cli.train import main

    frozen = ["--teacher-mode", "frozen"]
    assert main(kd(tiny_data, tmp_path / "straight", teacher, iters=4, extra=frozen)) == 0
    assert main(kd(tiny_data, tmp_path / "cut", teacher, iters=3, extra=frozen)) == 0
    ck = torch.load(tmp_path / "cut" / "checkpoints" / "iter_00000002.pt", weights_only=False)
    assert not [k for k in ck["model"] if k.startswith("teacher.")]
    assert main(kd(tiny_data, tmp_path / "cut", teacher, iters=4, extra=frozen + ["--resume"])) == 0
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    other = tmp_path / "other_teacher.pt"
    state = torch.load(teacher, weights_only=False)
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    torch.save(state, other)
    capsys.readouterr()
    rc = main(kd(tiny_data, tmp_path / "cut", other, iters=5, extra=frozen + ["--resume"]))
    err = capsys.readouterr().err
    assert rc == 2 and "was trained with the teacher" in err and "is a different file" in err


def test_testing_a_kd_student_finds_the_teacher_by_path_and_hash(tiny_data, teacher, tmp_path, caplog):
    from mlic.training.test import load_trained
    from mlic.cli.train import main
    from mlic.caffe.weights import load_referenced_teacher

    t = tmp_path / "teacher.pt"
    shutil.copy(teacher, t)
    assert main(kd(tiny_data, tmp_path / "s2", t, stage="stage2", iters=2)) == 0
    task, meta = load_trained(str(tmp_path / "s2" / "final.pt"))
    want = torch.load(t, weights_only=False)["model"]
    assert torch.equal(task.model.teacher.conv_wsd_1_1.weight, want["conv1_1.weight"])

    t.write_bytes(t.read_bytes()[:-10] + b"0123456789")  # the teacher file changed since
    with pytest.raises(ValueError, match="which has changed since"):
        load_referenced_teacher(task.model, meta["teacher"], "final.pt")
    with caplog.at_level("WARNING", logger="mlic"):
        task, _ = load_trained(str(tmp_path / "s2" / "final.pt"))  # testing needs only the student
    assert "only the student is loaded" in caplog.text
    t.unlink()
    with pytest.raises(ValueError, match="which does not exist"):
        load_referenced_teacher(task.model, meta["teacher"], "final.pt")
