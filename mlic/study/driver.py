"""The study: the SPEC's paper-vs-code switches against the student without distillation,
over seeds, one job per process, resumable; the learning rates of the student stages
chosen on a validation split carved from the training images."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mlic.data import read_datalist
from mlic.data.annotations import read_ground_truth
from mlic.engine.run_lock import hold_folder, make_out_folder
from mlic.evaluation import corloc_references
from mlic.study import report
from mlic.study.decision import write_decision
from mlic.study.jobs import expected_time, run_jobs
from mlic.study.pipeline import (BASELINE, BASELINE_EQUAL, BUDGET_FOLDER, MAIN_ARMS, RATE_ARMS, RELEASED, RELEASED_SOFT_SCALE, Arm,
                                 SeedPlan, prepare_data)
from mlic.study.presets import Preset
from mlic.study.stats import summarize


class StudyError(RuntimeError):
    pass


def tune(preset: Preset, plan: SeedPlan, workers: int, log, path: Optional[Path] = None,
         adopt: bool = True) -> Dict[str, float]:
    """Hyper-parameters chosen on the validation split of `plan`'s seed, one after the
    other, each at the values chosen before it: the teacher's base rate (its validation
    mAP) among preset.tune_teacher_lr; the base rate of the student without KD among
    preset.tune_lr (stage 2 then uses the same rate, so the baseline gets its best); the
    soft scale's lr_mult among preset.tune_soft_scale for the released arm. Saved beside
    the seed folders (a resumed study keeps its choice) and printed."""
    path = path or plan.folder.parent / "tuning.json"
    if path.is_file():
        chosen = json.loads(path.read_text())["chosen"]
        log(f"[study] chosen earlier on the validation split: {_describe(chosen)}")
        return chosen
    val: Dict[str, Dict[str, float]] = {}
    chosen: Dict[str, float] = {}
    if plan.data.val is None:
        return chosen
    steps = (("teacher_lr", preset.tune_teacher_lr, "teacher",
              lambda c: [plan.teacher_job(c, f"tune/teacher_lr{c:g}")]),
             ("lr", preset.tune_lr, BASELINE,
              lambda c: plan.student_jobs([], tuned=dict(chosen, lr=c), subfolder=f"tune/lr{c:g}")),
             ("soft_scale", preset.tune_soft_scale, RELEASED.key,
              lambda c: plan.student_jobs([RELEASED], baseline=False, tuned=dict(chosen, soft_scale=c),
                                          subfolder=f"tune/soft_scale{c:g}")))
    for name, candidates, job, jobs_for in steps:
        if not candidates:
            continue
        jobs = plan.shared_jobs([RELEASED] if name == "soft_scale" else [], tuned=chosen)
        if name == "teacher_lr":  # the candidates are the teachers
            jobs = [j for j in jobs if not j.key.endswith("/teacher")]
        for c in candidates:
            jobs += jobs_for(c)
        failed = run_jobs(jobs, workers, log)
        if failed:
            raise StudyError(f"tuning jobs failed: {failed}")
        scores = {f"{c:g}": json.loads((plan.folder / "tune" / f"{name}{c:g}" / job / "result.json").read_text())
                  ["metrics"]["val"]["mAP"] for c in candidates}
        val[name] = scores
        chosen[name] = float(max(scores, key=scores.get))  # the first of equals: candidates list the released first
        log(f"[study] validation mAP by {name}: " + ", ".join(f"{k}: {100 * v:.1f}" for k, v in scores.items())
            + f" -> {chosen[name]:g}")
        if name == "teacher_lr" and adopt:  # the seed's own teacher is the chosen run
            src, dst = plan.folder / "tune" / f"teacher_lr{chosen[name]:g}" / "teacher", plan.folder / "teacher"
            main = plan.teacher_job(chosen[name])
            if not main.done():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
    path.write_text(json.dumps({"seed": plan.seed, "validation_mAP": val, "chosen": chosen}, indent=1) + "\n")
    log(f"[study] chosen on the validation split: {_describe(chosen)}")
    return chosen


def _describe(chosen: Dict[str, float]) -> str:
    names = {"teacher_lr": "base learning rate of the teacher",
             "lr": "base learning rate of stage 2 and of the student without KD",
             "soft_scale": "lr_mult of the soft scale fc8_mscoco_soft"}
    return "; ".join(f"{names.get(k, k)} {v:g}" for k, v in chosen.items()) or "nothing to choose"


def run_study(preset: Preset, seeds: Sequence[int], out: str, arms: Sequence[Arm] = MAIN_ARMS, workers: int = 2,
              log=print, equal_budget: bool = True, rates: Sequence[float] = (), budgets: Sequence[int] = (),
              budget_arm: Optional[Arm] = None, tune_seeds: Sequence[int] = (), alone_budgets: Sequence[int] = ()) -> dict:
    """Runs (or resumes) every job and writes table.md, study.json and study.png in
    out/<preset>/. `rates`: base rates of stage 2 and the student at which RATE_ARMS and
    the student alone also run on every seed (in seed<k>/lr<rate>/, a table each), to
    see what the tuned rate hides. `budgets`: total iterations at which the student alone
    and `budget_arm` also train on every seed (the budget sweep, SeedPlan.budget_jobs);
    `alone_budgets`: totals at which only the student alone does (to reach the arm's time).
    `tune_seeds`: seeds (among `seeds`) on whose validation splits the choices are also made,
    to see whether they depend on the seed (reported beside the first seed's, which the
    jobs use; tuning_seed<k>.json). Returns the summary."""
    if (budgets or alone_budgets) and budget_arm is None:
        raise StudyError("a budget sweep needs the arm to sweep (budget_arm)")
    if not seeds:
        raise StudyError("no seeds given")
    root = Path(out) / preset.name
    make_out_folder(root)
    with hold_folder(root):  # a second study on the same folder would delete the jobs this one runs
        t0 = time.perf_counter()
        plans = {}
        for s in seeds:
            folder = root / f"seed{s}"
            plans[s] = SeedPlan(preset, s, folder, prepare_data(preset, s, folder, workers=workers, log=log))
        tuned = tune(preset, plans[seeds[0]], workers, log)
        for s in tune_seeds:
            if s not in plans:
                raise StudyError(f"tune seed {s} is not among the seeds {list(seeds)}")
            if s != seeds[0]:
                tune(preset, plans[s], workers, log, root / f"tuning_seed{s}.json", adopt=False)
        jobs: List = []
        for s in seeds:
            jobs += plans[s].shared_jobs(arms, tuned) + plans[s].student_jobs(arms, tuned=tuned,
                                                                             equal_budget=equal_budget)
            for r in rates:
                jobs += plans[s].student_jobs(RATE_ARMS, tuned=dict(tuned, lr=r), subfolder=f"lr{r:g}")
            if budgets or alone_budgets:
                jobs += plans[s].shared_jobs([budget_arm], tuned) + plans[s].budget_jobs(budget_arm, budgets, tuned,
                                                                                         alone_budgets)
        jobs = in_priority_order(_unique(jobs), arms)
        log(f"[study] {len(jobs)} jobs; " + expected_time(jobs, workers))
        failed = run_jobs(jobs, workers, log)
        summary = write_report(preset, {s: plans[s].folder for s in seeds}, arms, root, tuned, rates,
                               sorted(set(budgets) | set(alone_budgets)), budget_arm)
        summary["seconds"] = time.perf_counter() - t0
        if failed:
            raise StudyError(f"{len(failed)} job(s) failed: {', '.join(failed[:8])}; rerun the same command to retry "
                             "them (finished jobs are kept)")
        return summary


def _unique(jobs: List) -> List:
    """The first of the jobs with the same key (a stage 1 several arms share)."""
    seen, out = set(), []
    for j in jobs:
        if j.key not in seen:
            seen.add(j.key)
            out.append(j)
    return out


def in_priority_order(jobs: List, arms: Sequence[Arm]) -> List:
    """Every seed's stand-in and teacher first, then arm by arm (in the order of `arms`,
    each over all seeds, its stage 1 just before it), the student alone at the same budget
    right after the first arm, and the budget sweep last, one budget at a time over all
    seeds, smallest first: a study stopped early has its first arms, both baselines and
    the sweep's first points on every seed."""
    rank = {"pretrain": 0, "teacher": 1, BASELINE: 2}
    for i, arm in enumerate(arms):
        rank[arm.key] = 10 + 2 * i
        if arm.stage1_key:
            rank.setdefault(arm.stage1_key, 9 + 2 * i)
    rank[BASELINE_EQUAL] = 11

    def key(job):
        seed, _, name = job.key.partition("/")
        if name.startswith(BUDGET_FOLDER):
            return 10 ** 6 + int(name.rsplit("-", 1)[1]), int(seed[len("seed"):])
        return rank.get(name, 10 ** 7), int(seed[len("seed"):])

    return sorted(jobs, key=key)


def write_report(preset: Preset, seed_folders: Dict[int, Path], arms: Sequence[Arm], root: Path,
                 tuned: Optional[Dict[str, float]] = None, rates: Sequence[float] = (), budgets: Sequence[int] = (),
                 budget_arm: Optional[Arm] = None) -> dict:
    summary, table = _arm_table(seed_folders, arms, preset, "", equal=True)
    lines = [f"Preset `{preset.name}`, test set ({preset.test_images} images), mean ± sd over seeds "
             f"{sorted(seed_folders)}; Δ = arm minus no KD paired over seeds, 95 % t interval (* excludes 0); "
             "at the same budget: minus the student alone trained as many iterations as the arm.", "",
             table]
    teacher = report.collect(seed_folders, ["teacher"])["teacher"]
    by_rate = {}
    for r in rates:
        by_rate[f"{r:g}"], t = _arm_table(seed_folders, RATE_ARMS, preset, f"lr{r:g}/", equal=False)
        lines += ["", f"At base rate {r:g} for stage 2 and the student alone (not tuned), same teachers and "
                  "stage 1:", "", t]
    references = _corloc_references(preset, seed_folders)
    if teacher:
        lines += ["", "Teacher (WSDDN): " + ", ".join(
            f"{m} {report.pm(summarize([100 * r['metrics']['test'][m] for r in teacher.values()]))}"
            for m in ("mAP", "CorLoc")) + "; CorLoc of " + ", ".join(
            f"{what} {report.pm(summarize([100 * ref[key] for ref in references.values()]))}"
            for key, what in (("random", "a random proposal"),
                              ("proposal_score", "the proposal ranked first by its own score"),
                              ("best", "the best proposal (the most any scoring can reach)")))]
    if tuned:
        lines += ["", f"Chosen on the validation split: {_describe(tuned)}."]
    for other in sorted(root.glob("tuning_seed*.json")):
        t = json.loads(other.read_text())
        lines += [f"On seed {t['seed']}'s validation split the same procedure chooses: {_describe(t['chosen'])} "
                  "(" + "; ".join(f"{k}: " + ", ".join(f"{c} {100 * v:.1f}" for c, v in vals.items())
                                  for k, vals in t["validation_mAP"].items()) + ")."]
    lines += ["", write_decision(preset, seed_folders, arms, root, budgets, budget_arm)]
    (root / "table.md").write_text("\n".join(lines) + "\n")
    (root / "study.json").write_text(json.dumps({"preset": preset.name, "tuned": tuned, "arms": summary,
                                                 "at_rate": by_rate, "corloc_references": references},
                                                indent=1, default=float) + "\n")
    if any(summary[a]["paired"] for a in summary):
        report.plot_study(summary, BASELINE, root / "study.png", f"preset {preset.name}")
    return {"table": "\n".join(lines), "arms": summary, "at_rate": by_rate}


def _corloc_references(preset: Preset, seed_folders: Dict[int, Path]) -> Dict[int, dict]:
    """Each seed's CorLoc references on its test proposals (what the teacher's CorLoc is
    measured against)."""
    out = {}
    for seed, folder in sorted(seed_folders.items()):
        data = Path(folder) / "data"
        if not (data / "gt_test.json").is_file():
            continue
        dl = read_datalist(str(data / "test.txt"), att_num=preset.classes, root_folder=str(data) + "/")
        gt = read_ground_truth(data / "gt_test.json", dl, (preset.teacher_size, preset.teacher_size))
        out[seed] = corloc_references([dl.boxes[i] for i in range(len(dl))], gt, preset.classes)
    return out


def _arm_table(seed_folders: Dict[int, Path], arms: Sequence[Arm], preset: Preset, prefix: str, equal: bool):
    """The summary and markdown table of `arms` and the baseline(s) in seed<k>/<prefix>."""
    keys = [a.key for a in arms] + [BASELINE] + ([BASELINE_EQUAL] if equal else [])
    labels = {a.key: a.label for a in arms}
    for arm, note in ((RELEASED, " (released switches)"), (RELEASED_SOFT_SCALE, " (released recipe)")):
        if arm.key in labels:
            labels[arm.key] += note
    labels[BASELINE] = "no KD (student alone)"
    labels[BASELINE_EQUAL] = f"no KD, {preset.iters['stage1'] + preset.iters['stage2']} iterations (= stage 1 + 2)"
    results = report.collect(seed_folders, [prefix + k for k in keys])
    # the student alone at each arm's budget: stage 2's iterations, or stage 1's and stage 2's
    same = {a.key: BASELINE if a.stage1_key is None else BASELINE_EQUAL for a in arms} if equal else None
    summary = report.summarize_study({k[len(prefix):]: v for k, v in results.items()}, BASELINE, labels=labels,
                                     equal=same)
    return summary, report.format_table(summary, BASELINE)
