"""Real signals to tools/train.py running in its own process: a scheduler's SIGTERM (to the
process, or to its whole group with DataLoader workers) and Ctrl-C, during the setup and
mid-run -> the exit status (128 + the signal), the one line that says where the run stopped
and how to continue, and a resume that ends bit-identical to an uninterrupted run."""
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from mlic import _ext
from tests.process_group import process_group
from tests.robustness.conftest import NET, REPO

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
ITERS = 12


def argv(datalist, root, out, *extra):
    return ["--stage", "wsddn", "--datalist", datalist, "--root-folder", root, "--out", str(out), "--max-iter",
            str(ITERS), "--batch-size", "4", "--base-lr", "0.01", "--seed", "5", "--no-tensorboard", "--quiet",
            "--num-classes", "4", *NET, *extra]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted run, in a process like the others (the same threads)."""
    out = tmp_path_factory.mktemp("straight")
    with _tool(argv(data["train"], data["root_folder"], out)) as proc:
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return torch.load(out / "final.pt", weights_only=False)["model"]


def _rows(out: Path) -> int:
    p = out / "log.csv"
    return p.read_text().count("\n") - 1 if p.exists() else 0


def _tool(args):
    return process_group([sys.executable, str(REPO / "tools" / "train.py"), *args], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))


# case: (signal, to the whole group, extra flags, exit status, the last line's pattern;
#        {out} is the run's folder, (\d+) the iteration)
MID_RUN = {
    "SIGTERM to the process": (
        signal.SIGTERM, False, ["--checkpoint-period", "1000"], 143,
        r"train.py: stopped by SIGTERM after iteration (\d+) of 12; checkpoint written: "
        r"{out}/checkpoints/iter_0*\1\.pt; the same command with --resume continues from it"),
    "SIGTERM to the process group, with a DataLoader worker": (
        signal.SIGTERM, True, ["--checkpoint-period", "1000", "--workers", "1"], 143,
        r"train.py: stopped by SIGTERM after iteration (\d+) of 12.*; checkpoint written: "
        r"{out}/checkpoints/iter_0*\1\.pt; the same command with --resume continues from it"),
    "Ctrl-C": (
        signal.SIGINT, True, ["--checkpoint-period", "1"], 130,
        r"train.py: interrupted by Ctrl-C during iteration (\d+) of 12; the same command with --resume continues "
        r"from the last checkpoint, {out}/checkpoints/iter_\d+\.pt"),
}


@pytest.mark.parametrize("case", list(MID_RUN))
def test_a_signal_mid_run(case, data, straight, tmp_path):
    signum, group, extra, status, pattern = MID_RUN[case]
    out = tmp_path / "run"
    args = argv(data["train"], data["root_folder"], out, *extra)
    with _tool(args) as proc:
        t0 = time.monotonic()
        while _rows(out) < 2:  # two iterations done
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() - t0 < 300
            time.sleep(0.05)
        (os.killpg if group else os.kill)(proc.pid, signum)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err[-3000:]
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(pattern.format(out=re.escape(str(out))), last), last
    assert _rows(out) < ITERS and not (out / "final.pt").exists()
    with _tool(args + ["--resume"]) as proc:
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    resumed = torch.load(out / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("signum,status,fragment", [
    (signal.SIGTERM, 143, "train.py: stopped by SIGTERM while the run was being set up; no iteration ran"),
    (signal.SIGINT, 130, "train.py: interrupted by Ctrl-C while the run was being set up; no iteration ran"),
])
def test_a_signal_during_the_setup(signum, status, fragment, data, tmp_path):
    """The datalist is a FIFO that is opened but never written: reading it blocks, so the
    signal lands there."""
    fifo = tmp_path / "train.txt"
    os.mkfifo(fifo)
    with _tool(argv(str(fifo), data["root_folder"], tmp_path / "run")) as proc:
        t0 = time.monotonic()
        while True:  # a writer opens without blocking only once the reader is there
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                assert time.monotonic() - t0 < 300
                time.sleep(0.05)
        try:
            time.sleep(0.5)  # from open() to read()
            os.kill(proc.pid, signum)
            _, err = proc.communicate(timeout=120)
        finally:
            os.close(writer)
    assert proc.returncode == status, err[-3000:]
    assert err.strip().splitlines() == [fragment], err[-3000:]
