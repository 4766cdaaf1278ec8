"""tools/demo.py: mlic.demo's embedded demo (the whole method on the synthetic benchmark)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from mlic import demo
from mlic.cli.study import parse_seeds
from mlic.demo import format_seeds, kernels_demo, run_demo
from mlic.study.presets import PRESETS


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder; each preset writes out/<preset>/seed<k>")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="sizes (default: demo)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds or ranges, e.g. 0-4 (default 0)")
    p.add_argument("--workers", type=int, default=2, help="stages run at once, one process each (default 2)")
    p.add_argument("--kernels", action="store_true", help="only check the ops against the reference")
    args = p.parse_args(argv)
    if args.kernels:
        return kernels_demo()
    try:
        seeds = parse_seeds(args.seeds)
        if args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        summaries = {s: run_demo(args.out, args.preset, s, args.workers) for s in seeds}
    except ValueError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    if len(summaries) > 1:
        text = format_seeds(summaries)
        print(text)
        (Path(args.out) / args.preset / "results_seeds.md").write_text(text + "\n")
    return 0
