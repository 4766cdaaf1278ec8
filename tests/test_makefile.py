"""make's set-up and build: a line per step on the console, pip's and the compiler's output
in logs it names, their end shown when a step fails. Python, pip and setup.py are stand-ins
that print as much as the real ones."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a venv's python: 200 lines for any command, like pip and the compiler; fails when its
# arguments hold $FAIL_ON
NOISY = """#!/bin/sh
i=0
while [ $i -lt 200 ]; do echo "output line $i of: $*"; i=$((i+1)); done
if [ -n "$FAIL_ON" ]; then case "$*" in *"$FAIL_ON"*) echo "ERROR: no matching distribution"; exit 1;; esac; fi
case "$*" in *build_ext*) echo "mlic: building CPU-only kernels (MLIC_CPU_ONLY is set)";; esac
exit 0
"""
# the system's python: makes the venv with the noisy one inside
SYSTEM = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$NOISY" "$3/bin/python"; exit 0; fi
exit 3
"""


def _checkout(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    ws = tmp_path / "clone"
    ws.mkdir()
    shutil.copy(REPO / "Makefile", ws / "Makefile")
    (ws / "requirements.txt").write_text("numpy\n")
    (ws / "setup.py").write_text("")
    for name, text in (("noisy", NOISY), ("python3", SYSTEM)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    return ws


def _make(ws, tmp_path, target, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    full.update(NOISY=str(tmp_path / "noisy"), **env)
    return subprocess.run(["make", "-s", target, f"PYTHON={tmp_path / 'python3'}"], cwd=ws, env=full,
                          capture_output=True, text=True, timeout=120)


def test_setup_and_build_print_a_line_per_step_and_keep_the_output_in_logs(tmp_path):
    ws = _checkout(tmp_path)
    r = _make(ws, tmp_path, "build")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert len(out) <= 8 and not r.stderr, r.stdout + r.stderr
    assert "build/setup.log" in out[0] and "6 GB" in out[0]
    assert any("build/build.log" in line and "MLIC_CPU_ONLY=1" in line for line in out)
    assert "[build] built CPU-only kernels (MLIC_CPU_ONLY is set)" in out
    assert out[-1].startswith("[build] done in ")
    setup_log = (ws / "build" / "setup.log").read_text()
    assert setup_log.count("output line 199 of: -m pip install") == 3  # pip itself, requirements, the package
    assert "output line 199 of: setup.py -q build_ext --inplace" in (ws / "build" / "build.log").read_text()
    # VERBOSE=1: everything on the console
    (ws / "requirements.txt").write_text("numpy\nscipy\n")
    r = _make(ws, tmp_path, "setup", VERBOSE="1")
    assert r.returncode == 0 and r.stdout.count("output line 199") == 3


def test_a_failing_step_shows_the_end_of_its_log_and_names_it(tmp_path):
    ws = _checkout(tmp_path)
    r = _make(ws, tmp_path, "build", FAIL_ON="requirements.txt")
    assert r.returncode != 0
    out = r.stdout
    assert "[make] failed: " in out and "pip install -r requirements.txt" in out
    assert "ERROR: no matching distribution" in out and "the whole output is in build/setup.log" in out
    assert len(out.splitlines()) < 60  # the end of the log, not all of it
    assert not (ws / ".venv" / ".mlic-installed").exists()  # the next make starts the set-up again
