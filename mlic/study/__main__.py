"""`python -m mlic.study job SPEC.json`: one job of a study, in its own process."""
import json
import sys

from mlic.study.jobs import Job, run_job

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "job":
        # internal entry point of the study's scheduler: library code raises, it never exits
        raise ValueError("usage: python -m mlic.study job SPEC.json (run by tools/study.py)")
    with open(sys.argv[2]) as f:
        run_job(Job(**json.load(f)))
