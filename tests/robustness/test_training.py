"""Fault injection into training: each bad flag, solver file, checkpoint or run-time
fault -> the tool's exit status and a fragment of its one-sentence message; and the
kill-during-write loop (kill -9 at random moments and while a checkpoint is being
written, resume, and end bit-identical to an uninterrupted run)."""
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlic import _ext
from tests.robustness.conftest import NET

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
ROOT = Path(__file__).resolve().parents[2]


def base(data, out, iters=3):
    return ["--stage", "wsddn", "--datalist", data["train"], "--root-folder", data["root_folder"], "--out", str(out),
            "--max-iter", str(iters), "--batch-size", "4", "--base-lr", "0.01", "--seed", "5", "--no-tensorboard",
            "--quiet", "--checkpoint-period", "1", *NET]


def run(argv, capsys):
    from mlic.cli.train import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# (case, extra flags (a callable of tmp_path for files), exit status, fragment of stderr)
FLAG_CASES = [
    ("max-iter 0", ["--max-iter", "0"], 2, "--max-iter must be at least 1, got 0"),
    ("batch-size -1", ["--batch-size", "-1"], 2, "--batch-size must be at least 1"),
    ("iter-size 0", ["--iter-size", "0"], 2, "--iter-size must be at least 1"),
    ("base-lr nan", ["--base-lr", "nan"], 2, "--base-lr must be a finite number >= 0, got nan"),
    ("base-lr inf", ["--base-lr", "inf"], 2, "--base-lr must be a finite number >= 0, got inf"),
    ("base-lr negative", ["--base-lr", "-0.1"], 2, "--base-lr must be a finite number >= 0"),
    ("momentum nan", ["--momentum", "nan"], 2, "--momentum must be a finite number >= 0, got nan"),
    ("momentum inf", ["--momentum", "inf"], 2, "--momentum must be a finite number >= 0, got inf"),
    ("momentum negative", ["--momentum", "-0.9"], 2, "--momentum must be a finite number >= 0"),
    ("weight-decay nan", ["--weight-decay", "nan"], 2, "--weight-decay must be a finite number >= 0, got nan"),
    ("weight-decay inf", ["--weight-decay", "inf"], 2, "--weight-decay must be a finite number >= 0, got inf"),
    ("weight-decay negative", ["--weight-decay=-1e-4"], 2, "--weight-decay must be a finite number >= 0"),
    ("scales not numbers", ["--scales", "1.0,abc"], 2, "--scales: expected 'released', 'none' or comma-separated"),
    ("scales negative", ["--scales", "1.0,-2"], 2, "--scales: every factor must be a positive number"),
    ("lr-mult unknown kind", ["--lr-mult", "nope=1"], 2, "--lr-mult 'nope=1': expected KIND=LR[,DECAY]"),
    ("step policy without stepsize", ["--lr-policy", "step", "--gamma", "0.1"], 2, "lr_policy 'step' needs stepsize"),
    ("gamma negative", ["--lr-policy", "step", "--gamma", "-1", "--stepsize", "2"], 2,
     "gamma must be a finite number >= 0 for lr_policy 'step', got -1.0"),
    ("power nan", ["--lr-policy", "poly", "--power", "nan"], 2,
     "power must be a finite number >= 0 for lr_policy 'poly', got nan"),
    ("stepvalue not numbers", ["--stepvalue", "10,x"], 2, "--stepvalue: expected comma-separated iterations"),
    ("keep-checkpoints negative", ["--keep-checkpoints", "-1"], 2, "--keep-checkpoints must be 0 or more"),
    ("checkpoint-period negative", ["--checkpoint-period", "-5"], 2, "--checkpoint-period must be 0 or more"),
    ("missing weights", lambda t: ["--weights", str(t / "nope.caffemodel")], 2, "nope.caffemodel: no such weights file"),
    ("missing datalist", lambda t: ["--datalist", str(t / "nope.txt")], 2, "nope.txt: cannot read the datalist"),
    ("body not a layer list", ["--body", "conv1_1:8,bogus"], 2, "body entry 1 is 'bogus'"),
]


@pytest.mark.parametrize("case,extra,status,fragment", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_bad_flags(data, tmp_path, capsys, case, extra, status, fragment):
    extra = extra(tmp_path) if callable(extra) else extra
    rc, err = run(base(data, tmp_path / "run") + extra, capsys)
    assert rc == status, err
    assert fragment in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "final.pt").exists()


STAGE_CASES = [
    ("KD stage without teacher", ["--stage", "stage2"], 2, "--stage stage2 needs --teacher"),
    ("stage and prototxt", ["--prototxt", "x.prototxt"], 2, "--stage and --prototxt exclude each other"),
]


@pytest.mark.parametrize("case,extra,status,fragment", STAGE_CASES, ids=[c[0] for c in STAGE_CASES])
def test_bad_stage_flags(data, tmp_path, capsys, case, extra, status, fragment):
    rc, err = run(base(data, tmp_path / "run") + extra, capsys)
    assert rc == status and fragment in err, err


SOLVER_CASES = [
    ("missing solver file", None, 2, "cannot read solver definition: No such file"),
    ("unparsable solver file", 'base_lr: 0.1\nlr_polcy: "fixed"\n', 2, "lr_polcy"),
    ("another solver type", 'base_lr: 0.1\nlr_policy: "fixed"\ntype: "Adam"\nmax_iter: 2\n', 2,
     "only the SGD solver is supported"),
    ("no base_lr", 'lr_policy: "fixed"\nmax_iter: 2\n', 2, "base_lr is required"),
    ("negative momentum", 'base_lr: 0.1\nlr_policy: "fixed"\nmomentum: -0.5\nmax_iter: 2\n', 2,
     "momentum must be a finite non-negative number, got -0.5"),
    ("nan weight decay", 'base_lr: 0.1\nlr_policy: "fixed"\nweight_decay: nan\nmax_iter: 2\n', 2,
     "weight_decay must be a finite non-negative number, got nan"),
    ("inf rate", 'base_lr: inf\nlr_policy: "fixed"\nmax_iter: 2\n', 2,
     "base_lr must be a finite non-negative number, got inf"),
    ("negative rate", 'base_lr: -0.1\nlr_policy: "fixed"\nmax_iter: 2\n', 2,
     "base_lr must be a finite non-negative number, got -0.1"),
    ("negative gamma", 'base_lr: 0.01\nlr_policy: "step"\ngamma: -1\nstepsize: 1\nmax_iter: 4\n', 2,
     "gamma must be a finite number >= 0 for lr_policy 'step', got -1.0"),
    ("nan gamma, multistep", 'base_lr: 0.01\nlr_policy: "multistep"\ngamma: nan\nstepvalue: 1\nmax_iter: 2\n', 2,
     "gamma must be a finite number >= 0 for lr_policy 'multistep', got nan"),
    ("negative power, inv", 'base_lr: 0.01\nlr_policy: "inv"\ngamma: 0.1\npower: -2\nmax_iter: 2\n', 2,
     "power must be a finite number >= 0 for lr_policy 'inv', got -2.0"),
    ("zero stepsize", 'base_lr: 0.01\nlr_policy: "step"\ngamma: 0.1\nstepsize: 0\nmax_iter: 2\n', 2,
     "lr_policy 'step' needs a positive stepsize, got 0"),
    ("negative sigmoid stepsize", 'base_lr: 0.01\nlr_policy: "sigmoid"\ngamma: -0.5\nstepsize: -3\nmax_iter: 2\n',
     2, "lr_policy 'sigmoid' needs a stepsize >= 0, got -3"),
    ("negative max_iter", 'base_lr: 0.01\nlr_policy: "fixed"\nmax_iter: -5\n', 2, "max_iter must be >= 0, got -5"),
    ("iter_size 0", 'base_lr: 0.01\nlr_policy: "fixed"\niter_size: 0\nmax_iter: 2\n', 2,
     "iter_size must be >= 1, got 0"),
]


@pytest.mark.parametrize("case,text,status,fragment", SOLVER_CASES, ids=[c[0] for c in SOLVER_CASES])
def test_bad_solver_files(data, tmp_path, capsys, case, text, status, fragment):
    path = str(tmp_path / "solver.prototxt") if text is None else write(tmp_path, "solver.prototxt", text)
    argv = [a for a in base(data, tmp_path / "run") if a not in ("--max-iter", "3")] + ["--solver", path]
    rc, err = run(argv, capsys)
    assert rc == status and fragment in err, err
    assert "solver.prototxt" in err


def test_step_values_that_do_not_increase_are_explained_and_logged_as_applied(data, tmp_path, capsys):
    """stepvalue 3 then 1: Caffe's counter takes one step per iteration, at 3 and at 4; the
    warning says so, and log.csv's rate is the rate those steps give."""
    path = write(tmp_path, "solver.prototxt", 'base_lr: 0.01\nlr_policy: "multistep"\ngamma: 0.1\nstepvalue: 3\n'
                                              'stepvalue: 1\nmax_iter: 5\n')
    argv = [a for a in base(data, tmp_path / "run") if a not in ("--max-iter", "3")] + ["--solver", path]
    rc, err = run(argv, capsys)
    assert rc == 0, err
    assert (f"--solver {path}: stepvalue 1 follows 3 and does not increase: Caffe takes the steps in the order given, "
            "at most one per iteration, so the rate drops at iterations 3, 4") in err
    with open(tmp_path / "run" / "log.csv") as f:
        lr = {int(r["iter"]): float(r["lr"]) for r in csv.DictReader(f)}
    # row k: the step from iteration k - 1, whose rate is 0.01 before iteration 3, then 0.001, then 0.0001
    assert lr[3] == pytest.approx(0.01, rel=1e-6) and lr[4] == pytest.approx(1e-3, rel=1e-6)
    assert lr[5] == pytest.approx(1e-4, rel=1e-6)


def test_solver_file_without_max_iter_warns(data, tmp_path, capsys):
    path = write(tmp_path, "solver.prototxt", 'base_lr: 0.01\nlr_policy: "fixed"\n')
    argv = [a for a in base(data, tmp_path / "run") if a not in ("--max-iter", "3")] + ["--solver", path]
    rc, err = run(argv, capsys)
    assert rc == 0
    assert "sets no max_iter and --max-iter is not given: 0 iterations will run" in err


def _checkpoints(out):
    return sorted((Path(out) / "checkpoints").glob("iter_*.pt"))


def _corrupt(kind, path):
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif kind == "64 bytes flipped":
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
        path.write_bytes(bytes(data))
    elif kind == "emptied":
        path.write_bytes(b"")
    elif kind == "64 bytes flipped, its hash removed":
        _corrupt("64 bytes flipped", path)
        Path(str(path) + ".sha256").unlink()


@pytest.mark.parametrize("kind", ["truncated", "64 bytes flipped", "emptied", "64 bytes flipped, its hash removed"])
def test_resume_skips_a_corrupt_latest_checkpoint(data, tmp_path, capsys, kind):
    out = tmp_path / "run"
    assert run(base(data, out, iters=4), capsys)[0] == 0  # checkpoints at 1, 2, 3 (keep 2: 2, 3)
    straight = torch.load(out / "final.pt", weights_only=False)["model"]
    (out / "final.pt").unlink()
    latest = _checkpoints(out)[-1]
    assert latest.name == "iter_00000003.pt"
    _corrupt(kind, latest)
    rc, err = run(base(data, out, iters=4) + ["--resume"], capsys)
    assert rc == 0, err
    assert f"skipping checkpoint {latest}" in err and "resumed from" in err and "iter_00000002.pt" in err
    resumed = torch.load(out / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_from_checkpoints_without_hashes_warns(data, tmp_path, capsys):
    """No checkpoint can be verified: the newest is taken, with a warning naming it."""
    out = tmp_path / "run"
    assert run(base(data, out, iters=4), capsys)[0] == 0
    straight = torch.load(out / "final.pt", weights_only=False)["model"]
    (out / "final.pt").unlink()
    for p in _checkpoints(out):
        Path(str(p) + ".sha256").unlink()
    rc, err = run(base(data, out, iters=4) + ["--resume"], capsys)
    assert rc == 0, err
    latest = _checkpoints(out)[-1]
    assert f"{latest} has no SHA-256 beside it (iter_00000003.pt.sha256): it is read unverified" in err
    assert f"resumed from {latest} at iteration 3" in err
    resumed = torch.load(out / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_with_no_intact_checkpoint_stops(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(base(data, out, iters=3), capsys)[0] == 0
    for p in _checkpoints(out):
        _corrupt("truncated", p)
    rc, err = run(base(data, out, iters=3) + ["--resume"], capsys)
    assert rc == 2 and "no intact checkpoint in" in err and "remove the folder to start afresh" in err


def test_stale_partial_checkpoint_files_are_removed_at_start(data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / "checkpoints" / ".iter_00000007.pt.k2j3h4_q.tmp", out / ".final.pt.x8y7z6_w.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 4096)
    rc, err = run(base(data, out, iters=2), capsys)
    assert rc == 0 and "removed partial files of an interrupted checkpoint write" in err
    assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("rate,period", [("10", "2"), ("1e38", "1"), ("1e30", "1")])
def test_a_too_high_rate_stops_instead_of_reporting_a_plausible_map(data, tmp_path, capsys, rate, period):
    """A small WSDDN with a rate far too high: training stops naming the iteration and the
    checkpoint to continue from, one whose weights are sane (at 1e30 the first update
    already takes them to ~1e31: none is), or saying there is none; no final weights, no
    metrics, no checkpoint with inf/nan."""
    out = tmp_path / "run"
    argv = base(data, out, iters=30) + ["--base-lr", rate, "--checkpoint-period", period, "--test-datalist",
                                        data["test"]]
    rc, err = run(argv, capsys)
    assert rc == 1, err
    msg = err.strip().splitlines()[-1]
    assert msg.startswith("train.py: error: training diverged at iteration "), msg
    assert not (out / "final.pt").exists() and not (out / "eval.csv").exists()
    peaks = {}
    for p in _checkpoints(out):
        st = torch.load(p, weights_only=False)
        assert all(torch.isfinite(v).all() for v in st["model"].values())
        peaks[p] = max(float(v.abs().max()) for v in st["model"].values() if v.is_floating_point())
    named = [p for p in peaks if f"the last checkpoint, {p}, is intact: lower the rate and continue from it" in msg]
    if named:
        assert peaks[named[0]] < 1e3, (named, peaks)  # sane by any measure
    elif peaks:
        assert max(peaks.values()) > 1e20, peaks
        assert "so none is a point to continue from: start afresh (without --resume) with a lower rate" in msg
    else:
        assert "no checkpoint was written before it, so there is nothing to resume from" in msg
    if rate == "1e30":
        assert peaks and "none is a point to continue from" in msg, msg


def _unshare_tmpfs_ok():
    if sys.platform != "linux" or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_tmpfs_ok(), reason="no user namespace to mount a small tmpfs in")
def test_a_full_disk_before_the_first_checkpoint(data, tmp_path):
    """--out on a 96 KiB file system: one sentence naming the file, exit status 1."""
    out = tmp_path / "small"
    out.mkdir()
    argv = " ".join(f"'{a}'" for a in base(data, out, iters=3))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=96k tmpfs {out} && "
                        f"{sys.executable} {ROOT / 'tools' / 'train.py'} {argv}"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1, r.stderr[-2000:]
    assert last == f"train.py: error: no space left on device writing {out}/checkpoints/iter_00000001.pt", last


def test_the_tool_exits_with_the_status(data, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *base(data, tmp_path), "--momentum", "nan"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert r.returncode == 2 and r.stderr.strip().endswith("--momentum must be a finite number >= 0, got nan")


# ---------------------------------------------------------------------------- kill -9 during writes
def _kill_loop(data, tmp_path, kills: int, seed: int):
    iters = 8
    argv = base(data, tmp_path / "straight", iters=iters)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    tool = [sys.executable, str(ROOT / "tools" / "train.py")]
    subprocess.run(tool + argv, check=True, env=env, capture_output=True, timeout=600)
    straight = torch.load(tmp_path / "straight" / "final.pt", weights_only=False)["model"]

    out = tmp_path / "killed"
    argv = base(data, out, iters=iters) + ["--resume"]
    rng = random.Random(seed)
    killed_in_write = 0
    for k in range(kills):
        p = subprocess.Popen(tool + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        on_write = k % 2 == 0  # alternately: as soon as a partial file shows, or at a random moment
        deadline = time.monotonic() + rng.uniform(2.0, 8.0)
        while p.poll() is None:
            partial = list((out / "checkpoints").glob(".*.tmp")) if (out / "checkpoints").is_dir() else []
            if (on_write and partial) or (not on_write and time.monotonic() > deadline):
                killed_in_write += bool(partial)
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        p.wait(timeout=600)
        if (out / "final.pt").exists():
            break
    r = subprocess.run(tool + argv, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = torch.load(out / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not list(out.rglob(".*.tmp")), "partial files survived the final run"
    return killed_in_write


def test_kill_during_checkpoint_writes_then_resume_is_bit_identical(data, tmp_path):
    _kill_loop(data, tmp_path, kills=3, seed=0)


@pytest.mark.stress
def test_kill_during_checkpoint_writes_many_times(data, tmp_path):
    assert _kill_loop(data, tmp_path, kills=25, seed=1) > 0
