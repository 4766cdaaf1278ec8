"""What one seed of the study's whole grid costs from a fresh clone: `git clone` of this
repository's HEAD into a temporary folder, then `make study STUDY_ARGS="--preset <p>
--seeds <k> --arms all --out <clone>/study_out"` there — set-up (packages from pip's cache),
build, the synthetic data, the rate choices on the validation split and every job — timed
whole: wall time and the CPU time of make and every process under it.

    python bench/study_seed.py --preset large --seed 0

Run it with nothing else on the machine: the seconds are the result. Writes JSON (machine,
versions, commit, command, the build's and every job's seconds) to bench/results/.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record  # noqa: E402  (bench/record.py, beside this file)

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="large")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="all", help="the study's --arms (default all: the whole grid)")
    p.add_argument("--keep", action="store_true", help="keep the clone and its study_out")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="study-seed-"))
    clone = folder / "mlic"
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        measured = record.commit(clone)  # the code timed, whatever this checkout holds by the end
        study_args = f"--preset {args.preset} --seeds {args.seed} --arms {args.arms} --out {clone / 'study_out'}"
        console = folder / "console.log"
        start = time.time()
        t = record.timed(["make", "study", f"STUDY_ARGS={study_args}"], clone, console)
        text = console.read_text()
        if t["exit"] != 0:
            print(f"study_seed: make study exited with {t['exit']}:\n{text[-3000:]}", file=sys.stderr)
            return 1
        build = re.search(r"^\[build\] done in (\d+) s", text, re.M)
        stamp = clone / ".venv" / ".mlic-installed"  # touched by make when the set-up ends
        setup = stamp.stat().st_mtime - start if stamp.is_file() else None
        jobs = [{"job": m.group(1), "s": float(m.group(2))}
                for m in re.finditer(r"^\[study\] done .*\[(\S+)\] in (\d+) s", text, re.M)]
        print(f"{args.preset} seed {args.seed}, --arms {args.arms}, from a fresh clone: wall "
              f"{t['wall_s'] / 60:.1f} min, CPU {t['cpu_s'] / 60:.1f} min (user {t['user_s']:.0f} s, "
              f"sys {t['sys_s']:.0f} s); set-up {setup or 0:.0f} s, build {build.group(1) if build else '?'} s; "
              f"{len(jobs)} jobs")
        res = {"commit": measured, "preset": args.preset, "seed": args.seed, "arms": args.arms, "study_args": study_args,
               **{k: t[k] for k in ("wall_s", "cpu_s", "user_s", "sys_s")},
               "setup_s": setup, "build_s": int(build.group(1)) if build else None, "jobs": jobs,
               "console_tail": text[-4000:]}
        record.write(res, args.out or record.RESULTS / f"study_seed_{args.preset}_cpu.json", argv)
    finally:
        if args.keep:
            print(f"kept {clone}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
