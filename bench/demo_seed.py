"""What one seed of the demo costs, whole: `tools/demo.py --preset <p> --seeds <k>` run from
each given checkout in turn, alternating the order every round so that the checkouts see
the same stretch of a shared machine's speed. Per run: wall time and the CPU time of the
demo and every process it started (user and system), and the results table's numbers, so
that a checkout that trains other bits is seen as such.

    python bench/demo_seed.py --checkout before=/path/old --checkout after=. --rounds 2

Each checkout needs its compiled extension in place (`make build` there). Writes JSON
(machine, versions, commits, command, runs, medians and spread) to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import record  # noqa: E402  (bench/record.py, beside this file)

REPO = Path(__file__).resolve().parents[1]


def run_once(path: Path, preset: str, seed: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="demo-seed-") as out:
        env = dict(os.environ, PYTHONPATH=str(path))
        cmd = [sys.executable, str(path / "tools" / "demo.py"), "--preset", preset, "--seeds", str(seed),
               "--workers", str(workers), "--out", out]
        t = record.timed(cmd, path, Path(out) / "console.log", env)
        if t["exit"] != 0:
            tail = (Path(out) / "console.log").read_text()[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} exited with {t['exit']}:\n{tail}")
        results = Path(out) / preset / f"seed{seed}" / "results.json"
        table = json.loads(results.read_text()) if results.exists() else None
        steps = [ln for ln in (Path(out) / "console.log").read_text().splitlines() if " done " in ln]
    return {**{k: t[k] for k in ("wall_s", "user_s", "sys_s", "cpu_s")}, "steps": steps, "results": table}


def _spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkout", action="append", required=True, metavar="NAME=PATH",
                   help="a checkout to time (twice or more: the first is the one the ratios are against)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    checkouts = []
    for item in args.checkout:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "tools" / "demo.py").is_file():
            print(f"demo_seed: --checkout {item!r} is not NAME=PATH of a checkout with tools/demo.py", file=sys.stderr)
            return 2
        checkouts.append((name, Path(path).resolve()))
    runs = []
    for r in range(args.rounds):
        order = checkouts if r % 2 == 0 else checkouts[::-1]
        for name, path in order:
            row = dict(checkout=name, round=r, **run_once(path, args.preset, args.seed, args.workers))
            runs.append(row)
            print(f"round {r} {name:10s} wall {row['wall_s'] / 60:5.2f} min, CPU {row['cpu_s'] / 60:5.2f} min "
                  f"(user {row['user_s']:.0f} s, sys {row['sys_s']:.0f} s)", flush=True)
    summary = {}
    for name, _ in checkouts:
        mine = [x for x in runs if x["checkout"] == name]
        summary[name] = {k: _spread([x[k] for x in mine]) for k in ("wall_s", "cpu_s", "user_s", "sys_s")}
    base = checkouts[0][0]
    for name, _ in checkouts[1:]:
        for k in ("wall_s", "cpu_s"):
            ratios = [a[k] / b[k] for a, b in zip([x for x in runs if x["checkout"] == base],
                                                  [x for x in runs if x["checkout"] == name])]
            summary[name][f"speed-up_{k[:-2]}_vs_{base}"] = _spread(ratios)
            print(f"{name} vs {base}: {k[:-2]} {statistics.median(ratios):.2f}x "
                  f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} rounds)")
    res = {"preset": args.preset, "seed": args.seed, "workers": args.workers,
           "commits": {name: record.commit(path) for name, path in checkouts}, "summary": summary, "runs": runs}
    record.write(res, args.out or record.RESULTS / f"demo_seed_{args.preset}_cpu.json", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
