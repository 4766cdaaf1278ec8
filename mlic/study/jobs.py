"""Jobs of a study: one training stage (and its evaluation) per process, run at most
`workers` at a time in dependency order, each skipped when its result already exists
(so an interrupted study resumes where it stopped, redoing only unfinished jobs)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mlic import portable
from mlic.engine.run_lock import holder

RESULT = "result.json"


@dataclass
class Job:
    """One process writing into `out`: kind "train" runs mlic.training.train on `config`
    (TrainConfig.to_dict(); its out is this job's) and then tests the final weights on
    each datalist of `evaluate`; kind "standin" pretrains the ImageNet stand-in
    (mlic.study.standin, `config` its arguments). Paths are absolute."""

    key: str                      # unique over the study, e.g. "seed3/kd-ce-decay-s1fc-all"
    out: str
    kind: str
    config: dict
    deps: List[str] = field(default_factory=list)
    evaluate: Dict[str, str] = field(default_factory=dict)  # split -> datalist; "gt_<split>" -> boxes
    root_folder: str = ""
    threads: int = 1              # torch threads; the job takes that many of the scheduler's workers
    expected_seconds: float = 0.0  # typical time of such a job (0: unknown), printed at its start

    @property
    def result_path(self) -> Path:
        return Path(self.out) / RESULT

    def done(self) -> bool:
        """Its result exists and was made with this job's settings and number of threads
        (on some CPUs the count changes the bits); a changed setting makes the job run
        again, a setting added since, at its default, does not, nor does a result written
        before the count was recorded."""
        if not self.result_path.is_file():
            return False
        try:
            result = json.loads(self.result_path.read_text())
        except ValueError:
            return False
        if result.get("threads", self.threads) != self.threads:
            return False
        return _settings(self.kind, result.get("config")) == _settings(self.kind, self.config)


def _settings(kind: str, config) -> object:
    """A job's settings as compared between runs: a training's TrainConfig with today's
    defaults filled in, anything else as stored (after a JSON round trip)."""
    config = json.loads(json.dumps(config))
    if kind == "train" and isinstance(config, dict):
        from mlic.training import TrainConfig

        try:
            return json.loads(json.dumps(TrainConfig.from_dict(config).to_dict()))
        except (TypeError, KeyError, ValueError):
            return config
    return config


def run_job(job: Job) -> dict:
    """Runs one job in this process (the worker side). Writes and returns its result."""
    import torch

    from mlic.training import EvalConfig, TrainConfig, evaluate, train

    torch.set_num_threads(max(1, job.threads))
    out = Path(job.out)
    t0 = time.perf_counter()
    metrics = {}
    if job.kind == "standin":
        from prototxt_ports import NetConfig
        from mlic.study.standin import pretrain_standin

        c = dict(job.config)
        net = c.pop("net")
        pretrain_standin(NetConfig(**dict(net, body=tuple(net["body"]))), out=out, **c)
    elif job.kind == "train":
        cfg = TrainConfig.from_dict(job.config)
        cfg.out = str(out)
        final = train(cfg)
        for split, datalist in job.evaluate.items():
            if not split.startswith("gt_"):
                metrics[split] = evaluate(EvalConfig(weights=str(final), datalist=datalist, root_folder=job.root_folder,
                                                     gt=job.evaluate.get(f"gt_{split}"), out=str(out / f"test_{split}"),
                                                     progress=False))
    else:
        raise ValueError(f"job {job.key}: unknown kind {job.kind!r}")
    result = {"key": job.key, "kind": job.kind, "seconds": time.perf_counter() - t0, "pid": os.getpid(), "metrics": metrics,
              "config": job.config, "threads": job.threads}
    tmp = job.result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    os.replace(tmp, job.result_path)
    return result


def _up_to_date(job: Job, by_key: Dict[str, Job]) -> bool:
    """Done with its settings, after everything it depends on (make's rule: a job whose
    input was made again is made again)."""
    if not job.done():
        return False
    t = job.result_path.stat().st_mtime
    return all(_up_to_date(by_key[d], by_key) and by_key[d].result_path.stat().st_mtime <= t for d in job.deps)


def expected_time(jobs: Sequence[Job], workers: int) -> str:
    """How long the jobs not done yet typically take on `workers` cores (each job's typical
    time, spread over the workers), in words."""
    by_key = {j.key: j for j in jobs}
    pending = [j for j in jobs if not _up_to_date(j, by_key)]
    if not pending:
        return "all done"
    known = [j for j in pending if j.expected_seconds]
    cpu = sum(j.expected_seconds * min(max(1, j.threads), workers) for j in known)
    text = f"{len(pending)} to run, typically {duration(cpu / max(1, workers))} on {workers} cores"
    if len(known) < len(pending):
        text += f" (for {len(known)} of them; the others' times are not known)"
    return text


def duration(seconds: float) -> str:
    """A duration in words: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _spec_path(job: Job) -> Path:
    return Path(job.out).parent / f".{Path(job.out).name}.job.json"


class TimeLeft:
    """The time left for the jobs not finished yet, plus `after` seconds of work that follows
    them: each job's typical time (Job.expected_seconds) scaled by how much longer the
    finished ones took than theirs, spread over the workers; jobs without a typical time
    count as the mean of the finished ones. What it reports never rises: a rise between
    two steps reads as a fault, while the pace it comes from is noisy with few jobs done."""

    def __init__(self, workers: int, after: float = 0.0):
        self.workers, self.after = max(1, workers), after
        self.expected = self.actual = 0.0
        self.durations: List[float] = []
        self.shown: Optional[float] = None

    def finished(self, job: Job, seconds: float) -> None:
        self.durations.append(seconds)
        if job.expected_seconds:
            self.expected += job.expected_seconds
            self.actual += seconds

    def seconds(self, pending: Sequence[Job], running: Sequence[Tuple[Job, float]] = ()) -> float:
        """`running`: each running job and the seconds it has run."""
        pace = self.actual / self.expected if self.expected else 1.0
        mean = sum(self.durations) / len(self.durations) if self.durations else 0.0

        def typical(j: Job) -> float:
            return j.expected_seconds * pace if j.expected_seconds else mean

        work = sum(typical(j) * min(max(1, j.threads), self.workers) for j in pending)
        work += sum(max(typical(j) - ran, 0.0) * min(max(1, j.threads), self.workers) for j, ran in running)
        left = work / self.workers + self.after
        self.shown = left if self.shown is None else min(self.shown, left)
        return self.shown


def run_jobs(jobs: Sequence[Job], workers: int = 2, log: Callable[[str], None] = print,
             python: Optional[str] = None, tag: str = "study", after_seconds: float = 0.0) -> List[str]:
    """Runs the jobs that are not done, in order of the list whenever their dependencies are
    done, as long as their threads fit in `workers` (a job with more threads than workers
    takes them all); a ready job that does not fit yet holds back the ones after it. Returns
    the keys of the jobs that failed (their dependants are skipped). Each line logged starts
    with [tag] and names a job by its readable name and key; the time left it gives after
    each job includes `after_seconds` (what the caller does after the jobs)."""
    from mlic.study.names import with_key

    by_key = {j.key: j for j in jobs}

    def slots(job: Job) -> int:
        return min(max(1, job.threads), workers)

    for j in jobs:
        missing = [d for d in j.deps if d not in by_key]
        if missing:
            raise ValueError(f"job {j.key} depends on unknown jobs {missing}")
    pending = [j for j in jobs if not _up_to_date(j, by_key)]
    skipped = len(jobs) - len(pending)
    if skipped:
        log(f"[{tag}] {skipped} of {len(jobs)} jobs already done (their results are kept)")
    running: Dict[str, tuple] = {}
    failed: List[str] = []
    clock = TimeLeft(workers, after_seconds)
    total = len(pending)
    waiting = {j.key for j in pending}
    finished = 0
    python = python or sys.executable
    while pending or running:
        # start what is ready
        for j in list(pending):
            if sum(slots(by_key[k]) for k in running) >= workers:
                break
            if any(d in failed for d in j.deps):  # failures propagate: skipped jobs count as failed
                pending.remove(j)
                failed.append(j.key)
                log(f"[{tag}] skip {with_key(j.key)}: a job it needs failed")
                continue
            if any(d in waiting or d in running for d in j.deps):
                continue
            if sum(slots(by_key[k]) for k in running) + slots(j) > workers:
                break
            pending.remove(j)
            waiting.discard(j.key)
            other = holder(j.out)
            if other:  # a job left running by another driver: never delete its folder under it
                failed.append(j.key)
                log(f"[{tag}] FAILED {with_key(j.key)}: {j.out} is in use by another run ({other}); "
                    "wait for it to end, then rerun")
                continue
            if Path(j.out).exists():  # an interrupted attempt: start it afresh
                shutil.rmtree(j.out)
            Path(j.out).mkdir(parents=True)
            spec = _spec_path(j)
            spec.write_text(json.dumps(asdict(j)))
            logf = open(Path(j.out) / "job.log", "w")
            env = dict(os.environ, OMP_NUM_THREADS=str(j.threads), MLIC_NO_PROGRESS="1")
            if not portable.requested():  # portable mode holds MKL to one thread
                env["MKL_NUM_THREADS"] = str(j.threads)
            proc = subprocess.Popen([python, "-m", "mlic.study", "job", str(spec)], stdout=logf,
                                    stderr=subprocess.STDOUT, env=env)
            running[j.key] = (proc, time.perf_counter(), logf)
            eta = f" (typically {duration(j.expected_seconds)})" if j.expected_seconds else ""
            log(f"[{tag}] start {with_key(j.key)}{eta}")
        if not running:
            if pending:  # nothing can start: dependencies failed or unknown order
                for j in pending:
                    failed.append(j.key)
                    log(f"[{tag}] skip {with_key(j.key)}: its dependencies did not finish")
                pending = []
            break
        time.sleep(0.5)
        for key, (proc, t0, logf) in list(running.items()):
            if proc.poll() is None:
                continue
            logf.close()
            del running[key]
            finished += 1
            dt = time.perf_counter() - t0
            if proc.returncode == 0 and by_key[key].done():
                clock.finished(by_key[key], dt)
                now = time.perf_counter()
                left = clock.seconds(pending, [(by_key[k], now - t) for k, (_, t, _) in running.items()])
                log(f"[{tag}] done {with_key(key)} in {dt:.0f} s ({finished}/{total}; "
                    f"{'about ' + duration(left) + ' left' if pending or running or after_seconds else 'all done'})")
            else:
                failed.append(key)
                log(f"[{tag}] FAILED {with_key(key)} (exit {proc.returncode}); see {Path(by_key[key].out) / 'job.log'}")
    return failed
