"""The study: the SPEC's paper-vs-code switches against the student without distillation,
over seeds, one job per process, resumable; the learning rates of the student stages
chosen on a validation split carved from the training images."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mlic.study import report
from mlic.study.jobs import run_jobs
from mlic.study.pipeline import BASELINE, GRID, Arm, RELEASED, SeedPlan, prepare_data
from mlic.study.presets import Preset
from mlic.study.stats import summarize


class StudyError(RuntimeError):
    pass


def choose_rates(preset: Preset, plan: SeedPlan, workers: int, log) -> Dict[str, float]:
    """Learning rates of stage 2 (the released arm) and of the baseline student, each the
    best validation mAP among preset.tune_lr, measured on `plan`'s seed. Saved beside the
    seed folder, so a resumed study keeps its choice."""
    path = plan.folder.parent / "tuning.json"
    if path.is_file():
        chosen = json.loads(path.read_text())["chosen"]
        log(f"[study] learning rates chosen earlier on the validation split: {chosen}")
        return chosen
    if not preset.tune_lr or plan.data.val is None:
        return {}
    jobs = plan.shared_jobs([RELEASED])
    for lr in preset.tune_lr:
        jobs += plan.student_jobs([RELEASED], lr={"stage2": lr, "student": lr}, subfolder=f"tune/lr{lr:g}")
    failed = run_jobs(jobs, workers, log)
    if failed:
        raise StudyError(f"tuning jobs failed: {failed}")
    val: Dict[str, Dict[str, float]] = {"stage2": {}, "student": {}}
    for lr in preset.tune_lr:
        for stage, name in (("stage2", RELEASED.key), ("student", BASELINE)):
            r = json.loads((plan.folder / f"tune/lr{lr:g}" / name / "result.json").read_text())
            val[stage][f"{lr:g}"] = r["metrics"]["val"]["mAP"]
    chosen = {stage: float(max(v, key=v.get)) for stage, v in val.items()}
    path.write_text(json.dumps({"seed": plan.seed, "validation_mAP": val, "chosen": chosen}, indent=1) + "\n")
    for stage, v in val.items():
        log(f"[study] {stage}: validation mAP by learning rate "
            + ", ".join(f"{k}: {100 * x:.1f}" for k, x in v.items()) + f" -> chosen {chosen[stage]:g}")
    return chosen


def run_study(preset: Preset, seeds: Sequence[int], out: str, arms: Sequence[Arm] = GRID, workers: int = 2,
              log=print) -> dict:
    """Runs (or resumes) every job and writes table.md, study.json and study.png in
    out/<preset>/. Returns the summary."""
    if not seeds:
        raise StudyError("no seeds given")
    root = Path(out) / preset.name
    root.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    t0 = time.perf_counter()
    plans = {}
    for s in seeds:
        folder = root / f"seed{s}"
        plans[s] = SeedPlan(preset, s, folder, prepare_data(preset, s, folder, workers=workers, log=log), threads)
    rates = choose_rates(preset, plans[seeds[0]], workers, log)
    jobs: List = []
    for s in seeds:  # seed by seed, so that an early stop leaves whole seeds
        jobs += plans[s].shared_jobs(arms) + plans[s].student_jobs(arms, lr=rates)
    failed = run_jobs(jobs, workers, log)
    summary = write_report(preset, {s: plans[s].folder for s in seeds}, arms, root, rates)
    summary["seconds"] = time.perf_counter() - t0
    if failed:
        raise StudyError(f"{len(failed)} job(s) failed: {', '.join(failed[:8])}; rerun the same command to retry "
                         "them (finished jobs are kept)")
    return summary


def write_report(preset: Preset, seed_folders: Dict[int, Path], arms: Sequence[Arm], root: Path,
                 rates: Optional[Dict[str, float]] = None) -> dict:
    keys = [a.key for a in arms] + [BASELINE]
    labels = {a.key: a.label + (" (released)" if a == RELEASED else "") for a in arms}
    labels[BASELINE] = "no KD (student alone)"
    results = report.collect(seed_folders, keys)
    summary = report.summarize_study(results, BASELINE, labels=labels)
    teacher = report.collect(seed_folders, ["teacher"])["teacher"]
    table = report.format_table(summary, BASELINE)
    lines = [f"Preset `{preset.name}`, test set ({preset.test_images} images), mean ± sd over seeds "
             f"{sorted(seed_folders)}; Δ = arm minus no KD paired over seeds, 95 % t interval (* excludes 0).", "",
             table]
    if teacher:
        lines += ["", "Teacher (WSDDN): " + ", ".join(
            f"{m} {report.pm(summarize([100 * r['metrics']['test'][m] for r in teacher.values()]))}"
            for m in ("mAP", "CorLoc"))]
    if rates:
        lines += ["", "Learning rates chosen on the validation split: " + ", ".join(f"{k} {v:g}" for k, v in
                                                                                   rates.items())]
    (root / "table.md").write_text("\n".join(lines) + "\n")
    (root / "study.json").write_text(json.dumps({"preset": preset.name, "rates": rates, "arms": summary},
                                                indent=1, default=float) + "\n")
    if any(summary[a]["paired"] for a in summary):
        report.plot_study(summary, BASELINE, root / "study.png", f"preset {preset.name}")
    return {"table": "\n".join(lines), "arms": summary}

