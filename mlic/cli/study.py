"""tools/study.py: the distillation study (mlic.study) over seeds."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from mlic.study.driver import StudyError, run_study
from mlic.study.pipeline import ARM_SETS, GRID, Arm
from mlic.study.presets import PRESETS, get_preset


def parse_seeds(text: str) -> List[int]:
    """'0-4' or '0,2,5' (or a mix) -> sorted unique seeds."""
    seeds = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.update(range(a, b + 1))
            elif part:
                seeds.add(int(part))
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not a seed or a range like 0-4") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds: expected non-negative seeds, got {text!r}")
    return sorted(seeds)


def parse_budgets(text: str, option: str = "--budgets") -> List[int]:
    """'1000,1400,2000' -> [1000, 1400, 2000] (positive iteration counts)."""
    out = []
    for part in filter(None, (x.strip() for x in text.split(","))):
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{option}: {part!r} is not a positive number of iterations")
        out.append(value)
    return sorted(set(out))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Run the distillation study: every arm of the SPEC's paper-vs-code "
                                "switches against the student without KD, over seeds. Rerun the same command to "
                                "resume; finished jobs are kept.")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="sizes (default: demo)")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,1,2 (default 0-4)")
    p.add_argument("--out", default="study_out", help="output folder (default study_out)")
    p.add_argument("--arms", default="main", help="a named set: 'core' (the released arm and four single "
                   "switches: L2, frozen teacher, no stage 1, top-k regions), 'main' (default: core, stage 1 on "
                   "the convs, and every paper switch at once), 'all' (the 20 arms of the grid and the released "
                   "arm at the released soft-scale lr_mult), 'decide' (the released recipe at soft-scale lr_mult 10 "
                   "and 1, L2 over all and top-k regions, soft-CE over top-k regions with either teacher, no "
                   "stage 1); or comma-separated arm keys, e.g. " + GRID[0].key)
    p.add_argument("--workers", type=int, default=2, help="jobs run at once, one process each (default 2)")
    p.add_argument("--rate", type=float, action="append", default=[], help="also train, on every seed, the "
                   "released arm (soft-scale lr_mult 10 and 1) and the student alone at this base rate instead of "
                   "the tuned one (repeatable; a table each)")
    p.add_argument("--budgets", default="", help="the budget sweep: total training iterations (e.g. "
                   "1000,1400,2000,3000,4000) at which the student alone and --budget-arm also train on every seed")
    p.add_argument("--alone-budgets", default="", help="totals at which only the student alone also trains, e.g. "
                   "as long as the arm took at its longest budget (the sweep's equal-compute comparison)")
    p.add_argument("--budget-arm", default=None, help="the arm of the budget sweep (an arm key); its stage 2 trains "
                   "each total less its stage 1")
    p.add_argument("--tune-seeds", default="", help="also make the validation choices on these seeds' splits "
                   "(e.g. 1,2) to see whether they depend on the seed; the jobs use the first seed's")
    p.add_argument("--diagnose", action="store_true", help="instead of training: measure the finished jobs (teacher "
                   "drift, soft targets, stage-2 dynamics, stage-1 feature probes, budgets) into "
                   "<out>/<preset>/diagnosis/")
    args = p.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        arms = ARM_SETS.get(args.arms) or [Arm.from_key(k.strip()) for k in args.arms.split(",")]
        if args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        if args.diagnose:
            from mlic.study.diagnose import run_diagnosis, summary_text

            print(summary_text(run_diagnosis(get_preset(args.preset), seeds, args.out, arms)))
            return 0
        if any(not r > 0 for r in args.rate):
            raise ValueError(f"--rate must be positive, got {args.rate}")
        budgets = parse_budgets(args.budgets)
        alone_budgets = parse_budgets(args.alone_budgets, "--alone-budgets")
        if (budgets or alone_budgets) and not args.budget_arm:
            raise ValueError(f"{'--budgets' if budgets else '--alone-budgets'} needs --budget-arm (the arm whose "
                             "stage 2 the sweep trains longer)")
        budget_arm = Arm.from_key(args.budget_arm) if args.budget_arm else None
        summary = run_study(get_preset(args.preset), seeds, args.out, arms, args.workers, rates=args.rate,
                            budgets=budgets, budget_arm=budget_arm, alone_budgets=alone_budgets,
                            tune_seeds=parse_seeds(args.tune_seeds) if args.tune_seeds else ())
    except (ValueError, StudyError) as e:
        print(f"study: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    return 0
