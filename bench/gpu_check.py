#!/usr/bin/env python3
"""The GPU check in one command (`make gpu-check`), for a machine with a GPU, nvcc and a
CUDA build of torch (its own Python, e.g. `python3`; no network needed):

  1. build the extension from source, in place, with the CUDA kernels for the visible GPU;
  2. the CUDA kernel tests on the compiled back end and on the NVRTC back end (CuPy);
  3. compute-sanitizer memcheck over the op robustness cases, where the toolkit has it;
  4. bench/kernels.py at the released sizes;
  5. bench/train_step.py at the released sizes (fp32 and TF32, with and without the loader);
  6. bench/data.py on all the machine's cores.

Each step's output goes to <out>/gpu_check_<step>.log and a summary (status, seconds, the
last lines) to <out>/gpu_check.json; the benchmarks write their own JSON there. Sized to
finish within about 8 minutes on one H100/H200 (16 cores); --budget-s bounds the whole.
Exit status: 0 when every step passed, 1 when one failed, 2 when no GPU is present.

    python3 bench/gpu_check.py [--out bench/results] [--skip-build] [--steps tests,bench_kernels]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import record  # noqa: E402  (bench/record.py, beside this file)

REPO = Path(__file__).resolve().parents[1]
STEPS = ("build", "tests_compiled", "tests_nvrtc", "memcheck", "bench_kernels", "bench_train_step", "bench_data")
# Share of the remaining budget a step may take at most (the rest is kept for the later steps).
SHARE = {"build": 0.45, "tests_compiled": 0.3, "tests_nvrtc": 0.35, "memcheck": 0.3, "bench_kernels": 0.35,
         "bench_train_step": 0.7, "bench_data": 1.0}


def gpu_present() -> tuple[bool, str]:
    """(present, what was found): torch must see a CUDA device."""
    probe = ("import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), "
             "torch.cuda.device_count() and torch.cuda.get_device_name(0))")
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"could not run {sys.executable} to ask torch ({exc})"
    if r.returncode != 0:
        return False, f"{sys.executable} cannot import torch: {r.stderr.strip().splitlines()[-1:]}"
    version, cuda, available, name = (r.stdout.split(" ", 3) + ["", "", "", ""])[:4]
    if available != "True":
        smi = shutil.which("nvidia-smi")
        return False, (f"torch {version} (CUDA {cuda}) sees no CUDA device"
                       + ("" if smi else "; no nvidia-smi on PATH either"))
    return True, f"{name.strip()} (torch {version}, CUDA {cuda})"


def step_commands(out: Path, cores: int) -> dict:
    py = sys.executable
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
            cand = Path(home or "/nonexistent") / "bin" / "compute-sanitizer"
            if cand.exists():
                sanitizer = str(cand)
                break
    return {
        "build": [py, "setup.py", "build_ext", "--inplace"],
        "tests_compiled": pytest + ["tests/ops", "tests/robustness/test_ops.py", "-k",
                                    "(cuda or robustness) and not emulated and not nvrtc"],
        "tests_nvrtc": pytest + ["tests/ops", "tests/robustness/test_ops.py", "-k", "nvrtc"],
        "memcheck": None if sanitizer is None else [
            sanitizer, "--tool", "memcheck", "--target-processes", "all", "--error-exitcode", "99",
            *pytest, "tests/robustness/test_ops.py", "-k", "(cuda or nvrtc) and not emulated"],
        "bench_kernels": [py, "bench/kernels.py", "--device", "cuda", "--out", str(out / "kernels_gpu.json")],
        "bench_train_step": [py, "bench/train_step.py", "--device", "cuda", "--steps", "10",
                             "--workers", str(max(1, cores - 2)), "--out", str(out / "train_step_gpu.json")],
        "bench_data": [py, "bench/data.py", "--workers", ",".join(str(w) for w in _worker_counts(cores)),
                       "--consume", "cuda", "--batches", "20", "--repeat", "1", "--out", str(out / "data_gpu.json")],
    }


def _worker_counts(cores: int) -> list:
    counts = [0, 1, 2, 4, 8, 16, 32, 64]
    return [c for c in counts if c < cores] + [cores]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for the logs and JSON")
    ap.add_argument("--budget-s", type=float, default=480.0, help="time for the whole check")
    ap.add_argument("--skip-build", action="store_true", help="use the extension already built in place")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        print(f"gpu-check: unknown step(s) {unknown}; choose from {', '.join(STEPS)}", file=sys.stderr)
        return 2
    ok, found = gpu_present()
    if not ok:
        print(f"gpu-check: no GPU is present: {found}. Nothing was checked; run this on a machine with a GPU.",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    commands = step_commands(out, cores)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MAX_JOBS=os.environ.get("MAX_JOBS", str(cores)), PYTHONUNBUFFERED="1")
    print(f"gpu-check on {found}, {cores} cores; budget {args.budget_s:.0f} s")
    start = time.monotonic()
    summary = {"device": found, "python": sys.executable, "steps": []}  # the cores: in the machine block
    failed = False
    for step in steps:
        cmd = commands[step]
        if step == "build" and args.skip_build:
            cmd = None
        left = args.budget_s - (time.monotonic() - start)
        rec = {"step": step, "command": cmd and " ".join(cmd)}
        if cmd is None:
            rec["status"] = "skipped (" + ("--skip-build" if step == "build" else "compute-sanitizer not found") + ")"
        elif left < 20:
            rec["status"] = "not run (the time budget is spent)"
            failed = True
        else:
            limit = max(20.0, left * SHARE[step])
            t0 = time.monotonic()
            log = out / f"gpu_check_{step}.log"
            with open(log, "w") as f:
                try:
                    r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=limit)
                    code = r.returncode
                except subprocess.TimeoutExpired:
                    code = None
            rec["seconds"] = round(time.monotonic() - t0, 1)
            rec["status"] = "passed" if code == 0 else ("timed out" if code is None else f"failed (status {code})")
            rec["tail"] = log.read_text(errors="replace").splitlines()[-15:]
            failed |= code != 0
        summary["steps"].append(rec)
        print(f"{rec['status']:>40s}  {step}" + (f" ({rec['seconds']} s)" if "seconds" in rec else ""), flush=True)
        if step == "build" and not rec["status"].startswith(("passed", "skipped")):
            break  # nothing else can run
    summary["seconds"] = round(time.monotonic() - start, 1)
    record.write(summary, out / "gpu_check.json", argv)
    print(f"gpu-check: {'FAILED' if failed else 'passed'} in {summary['seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
