"""Portable mode: the same bits whatever instruction set the libraries find."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlic import _ext, portable

REPO = Path(__file__).resolve().parents[1]

# Trains a tiny WSDDN for a few iterations through tools/train.py and prints a hash of its weights.
SCRIPT = r"""
import hashlib, subprocess, sys, torch
out, data = sys.argv[1], sys.argv[2]
cmd = [sys.executable, "tools/train.py", "--stage", "wsddn", "--datalist", data + "/train.txt", "--root-folder",
       data + "/", "--out", out, "--max-iter", "6", "--batch-size", "4", "--base-lr", "0.01", "--seed", "1",
       "--input-size", "64", "--student-size", "32", "--pooled-size", "1", "--width", "0.125", "--fc-dim", "16",
       "--no-tensorboard", "--quiet"]
subprocess.run(cmd, check=True, capture_output=True)
st = torch.load(out + "/final.pt", map_location="cpu", weights_only=False)["model"]
h = hashlib.sha256()
for k in sorted(st):
    h.update(st[k].contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def test_environment_and_flag():
    env = portable.environment({"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE"
    assert portable.requested({"MLIC_PORTABLE": "1"}) and not portable.requested({})
    with pytest.raises(ValueError, match="MLIC_PORTABLE"):
        portable.requested({"MLIC_PORTABLE": "yes"})


@pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
def test_portable_runs_agree_across_instruction_sets(tmp_path):
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    data = tmp_path / "data"
    generate_dataset(str(data), SyntheticConfig(num_train=8, num_test=2, bbox_num=4, image_size=64, num_classes=3,
                                                seed=2))

    def run(name, **extra):
        env = dict(os.environ, PYTHONPATH=str(REPO), MLIC_NO_PROGRESS="1", **extra)
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / name), str(data)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()[-1]

    # the tools restart themselves under the portable settings, whatever the caller set:
    # a second run asks ATen and oneDNN for AVX2 and holds MKL to SSE
    first = run("a", MLIC_PORTABLE="1")
    second = run("b", MLIC_PORTABLE="1", ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                 MKL_ENABLE_INSTRUCTIONS="SSE4_2", OMP_NUM_THREADS="1")
    assert first == second
