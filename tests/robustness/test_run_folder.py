"""A run's folder (--out): each case -> the tool's exit status and a fragment of its one
sentence, and nothing of the earlier run lost: a folder that is a file or read-only, a
second run on a folder in use (and none stuck after a kill -9), a resume onto another
configuration's checkpoints or below the iteration already reached."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlic import _ext
from tests.process_group import process_group
from tests.robustness.conftest import NET, REPO

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")


def argv(data, out, iters=3, stage="wsddn", *extra):
    return ["--stage", stage, "--datalist", data["train"], "--root-folder", data["root_folder"], "--out", str(out),
            "--max-iter", str(iters), "--batch-size", "4", "--base-lr", "0.01", "--seed", "5", "--no-tensorboard",
            "--quiet", "--checkpoint-period", "1", *NET, *extra]


def run(args, capsys):
    from mlic.cli.train import main

    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def _finished(data, out, capsys, iters=6):
    assert run(argv(data, out, iters), capsys)[0] == 0
    return (out / "final.pt").read_bytes()


# case: (set-up of the folder -> the arguments of the second command, exit status, fragment;
#        "{out}" is the folder)
CASES = {
    "--out names a file": (
        lambda data, out, capsys: (out.write_text("not a folder"), argv(data, out))[1], 2,
        "--out {out} is a file, not a folder"),
    "--resume with --max-iter below the iteration reached": (
        lambda data, out, capsys: (_finished(data, out, capsys), argv(data, out, 4, "wsddn", "--resume"))[1], 2,
        "--resume: {out}/final.pt holds iteration 6, beyond --max-iter 4; give --max-iter 6 or more"),
    "--resume into another stage's folder": (
        lambda data, out, capsys: (_finished(data, out, capsys), argv(data, out, 6, "student", "--resume"))[1], 2,
        "--resume: {out}/checkpoints/iter_00000005.pt was written by a run of another configuration (stage is "
        "wsddn in the checkpoint, student now"),
    "--resume onto another configuration's checkpoint": (
        lambda data, out, capsys: (_finished(data, out, capsys),
                                   argv(data, out, 6, "wsddn", "--resume", "--fc-dim", "32"))[1], 2,
        "was written by a run of another configuration (net.fc_dim is 16 in the checkpoint, 32 now); resume with "
        "its settings, or give another --out"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_run_folder(case, data, tmp_path, capsys):
    setup, status, fragment = CASES[case]
    out = tmp_path / "run"
    args = setup(data, out, capsys)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} if out.is_dir() else {}
    rc, err = run(args, capsys)
    assert rc == status, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("train.py: error: ") and fragment.format(out=out) in last, last
    assert "Traceback" not in err
    for p, b in before.items():  # nothing of the earlier run changed (the log and the lock aside)
        assert p.name in ("train.log", "run.lock") or p.read_bytes() == b, p


def _unshare_ok():
    import shutil

    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"],
                                                                  capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="no user namespace to mount a read-only file system in")
@pytest.mark.parametrize("case", ["an empty folder", "a finished run, resumed"])
def test_a_read_only_out(case, data, tmp_path, capsys):
    """A read-only --out: one sentence naming it and the cause, exit status 2."""
    out = tmp_path / "run"
    out.mkdir()
    extra = []
    if case == "a finished run, resumed":
        _finished(data, out, capsys, iters=3)
        extra = ["--resume"]
    args = " ".join(f"'{a}'" for a in argv(data, out, 3, "wsddn", *extra))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind {out} {out} && mount -o remount,ro,bind {out} "
                        f"&& {sys.executable} {REPO / 'tools' / 'train.py'} {args}"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [f"train.py: error: --out {out}: cannot write there (Read-only file "
                                             "system)"], r.stderr


def _wait_for(path: Path, proc, timeout=300):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.1)


def test_one_run_per_folder_and_none_stuck_after_a_kill(data, tmp_path, capsys):
    """A second run on a folder in use is refused, naming the first one's process; once
    that is killed with SIGKILL, the folder is free."""
    out = tmp_path / "run"
    tool = [sys.executable, str(REPO / "tools" / "train.py")]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with process_group(tool + argv(data, out, 100000, "wsddn", "--checkpoint-period", "0"), env=env) as first:
        _wait_for(out / "log.csv", first)
        rc, err = run(argv(data, out, 2), capsys)
        assert rc == 2, err[-3000:]
        assert (f"train.py: error: --out {out} is in use by another run (process {first.pid} on "
                in err.strip().splitlines()[-1]), err
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    rc, err = run(argv(data, out, 2), capsys)
    assert rc == 0, err[-3000:]
    assert torch.load(out / "final.pt", weights_only=False)["iter"] == 2
