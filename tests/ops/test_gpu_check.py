"""`make gpu-check` (bench/gpu_check.py) on a machine without a GPU: it must say so and
exit non-zero without running anything."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would run for real")
def test_gpu_check_without_a_gpu_says_so_and_fails(tmp_path):
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert "gpu-check: no GPU is present" in r.stderr and "Nothing was checked" in r.stderr
    assert not any(tmp_path.iterdir())  # no step ran, no report pretends otherwise


def test_gpu_check_refuses_unknown_steps(tmp_path):
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--steps", "build,bench_nope", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown step(s) ['bench_nope']" in r.stderr
