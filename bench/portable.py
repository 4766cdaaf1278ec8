#!/usr/bin/env python
"""What portable mode (MLIC_PORTABLE=1) costs: the demo's teacher and no-KD student
trained through tools/train.py natively and in portable mode, interleaved, a few
rounds each; medians of the wall time per run and their ratio.

It trains on a finished demo seed (`make demo` writes demo_out/demo/seed0: its data
and its ImageNet stand-in; --seed-folder to use another, e.g. a study's seed folder)
and writes a JSON report (machine, versions, command, every time) to
bench/results/portable_cpu.json (``--out`` to change).

    python bench/portable.py                    # 3 rounds, 300 iterations a run
    python bench/portable.py --rounds 5 --iters 1000
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mlic import portable  # noqa: E402
from mlic.study.presets import get_preset  # noqa: E402

import record  # noqa: E402  (bench/record.py, beside this file)


def _command(stage: str, seed_folder: Path, out: Path, iters: int):
    p = get_preset("demo")
    data = seed_folder / "data"
    return [sys.executable, str(REPO / "tools" / "train.py"), "--stage", stage, "--weights",
            str(seed_folder / "pretrain" / "body.pt"), "--datalist", str(data / "train.txt"),
            "--root-folder", str(data) + "/", "--out", str(out), "--max-iter", str(iters), "--batch-size",
            str(p.batch), "--base-lr", "0.003", "--seed", "0", "--input-size", str(p.teacher_size),
            "--student-size", str(p.student_size), "--pooled-size", str(p.pooled), "--fc-dim", str(p.fc_dim),
            "--body", p.body, "--num-classes", str(p.classes), "--dropout", "0", "--lr-mult", "head=1",
            "--input-scale", str(p.input_scale), "--no-tensorboard", "--quiet"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seed-folder", default="demo_out/demo/seed0", help="a finished demo seed: data/ and "
                    "pretrain/body.pt (default demo_out/demo/seed0)")
    ap.add_argument("--out", default=str(record.RESULTS / "portable_cpu.json"))
    args = ap.parse_args()
    seed_folder = Path(args.seed_folder)
    if not (seed_folder / "pretrain" / "body.pt").is_file() or not (seed_folder / "data" / "train.txt").is_file():
        print(f"portable: {seed_folder} has no data/train.txt and pretrain/body.pt; run `make demo` first or pass "
              "--seed-folder", file=sys.stderr)
        return 2
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            for stage in ("wsddn", "student"):
                for mode in ("native", "portable"):
                    env = dict(os.environ, PYTHONPATH=str(REPO))
                    env.pop(portable.FLAG, None)
                    if mode == "portable":
                        env[portable.FLAG] = "1"
                    cmd = _command(stage, seed_folder, tmp / f"run_{stage}_{mode}_{r}", args.iters)
                    t0 = time.perf_counter()
                    r_ = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if r_.returncode:
                        print(r_.stderr[-2000:], file=sys.stderr)
                        return 1
                    times.setdefault(f"{stage}/{mode}", []).append(time.perf_counter() - t0)
                    print(f"round {r} {stage:<8} {mode:<9} {times[f'{stage}/{mode}'][-1]:.1f} s", flush=True)
    report = {"iters": args.iters, "times_s": times, "ratio_portable_to_native": {}}
    for stage in ("wsddn", "student"):
        ratios = [p / n for n, p in zip(times[f"{stage}/native"], times[f"{stage}/portable"])]
        report["ratio_portable_to_native"][stage] = {"median": statistics.median(ratios), "min": min(ratios),
                                                     "max": max(ratios)}
        print(f"{stage}: portable / native wall time, median {statistics.median(ratios):.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} interleaved pairs)")
    record.write(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
