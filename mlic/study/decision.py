"""Does the teacher help beyond the training budget? The numbers that decide it, from a
study's finished jobs (tools/study.py --arms decide --budgets ... --budget-arm ...):

- each arm against the student alone trained for as many iterations in all (stage 1 +
  stage 2), paired over seeds: the mean difference in test mAP with its 95 % t interval,
  the two-sided p-value adjusted for the number of arms (Holm), and the equivalence margin
  the seeds support (two one-sided t tests at 5 %: the mean difference lies within ± that
  margin), with every seed's difference;
- the same against the student alone at stage 2's budget (the paper's comparison);
- the budget sweep: test mAP of the student alone and of one arm against the total number
  of training images seen, each with its 95 % band, the paired gap at every budget and each
  curve's gain from one budget to the next (where both gains are within noise of zero, the
  curves have flattened and the gap there is the answer), each run's time, and the gap at
  equal time, bracketed by the student alone given no more and no less time than the arm.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from mlic.study.names import name as readable_name
from mlic.study.jobs import RESULT
from mlic.study.pipeline import Arm, budget_key
from mlic.study.presets import Preset
from mlic.study.stats import equivalence_bound, holm, paired_difference, paired_p_value, summarize


def _result(folder: Path, key: Optional[str]) -> Optional[dict]:
    """A finished job's result record (None: no such job, or not finished)."""
    if key is None:
        return None
    p = Path(folder) / key / RESULT
    return json.loads(p.read_text()) if p.is_file() else None


def _map(folder: Path, key: Optional[str]) -> Optional[float]:
    r = _result(folder, key)
    test = None if r is None else r["metrics"].get("test")
    return None if test is None else 100 * float(test["mAP"])


def _seconds(folder: Path, key: Optional[str]) -> Optional[float]:
    """A job's recorded time (its training and its test, as the study ran it)."""
    r = _result(folder, key)
    return None if r is None else float(r["seconds"])


def _paired(arm: Dict[int, float], base: Dict[int, float]) -> Optional[dict]:
    seeds = sorted(s for s in arm if s in base)
    if not seeds:
        return None
    a, b = [arm[s] for s in seeds], [base[s] for s in seeds]
    d = paired_difference(a, b)
    return {"seeds": seeds, "n": d.n, "mean": d.mean, "sd": d.sd, "low": d.low, "high": d.high, "wins": d.wins,
            "p": paired_p_value(a, b), "equivalence_margin": equivalence_bound(a, b) if d.n > 1 else math.nan,
            "per_seed": {str(s): x - y for s, x, y in zip(seeds, a, b)}}


def analyse(preset: Preset, seed_folders: Dict[int, Path], arms: Sequence[Arm], budgets: Sequence[int] = (),
            budget_arm: Optional[Arm] = None) -> dict:
    """The decision's numbers (see the module's docstring) as a JSON-ready dict."""
    seeds = sorted(seed_folders)
    s1, s2 = preset.iters["stage1"], preset.iters["stage2"]

    def by_seed(arm: Optional[Arm], total: int) -> Dict[int, float]:
        out = {}
        for s in seeds:
            v = _map(seed_folders[s], budget_key(preset, arm, total))
            if v is not None:
                out[s] = v
        return out

    rows = []
    for arm in arms:
        total = (s1 if arm.stage1_key else 0) + s2
        mine = by_seed(arm, total)
        rows.append({"arm": arm.key, "name": readable_name(arm.key), "label": arm.label, "total_iterations": total,
                     "same_budget": _paired(mine, by_seed(None, total)),
                     "stage2_budget": _paired(mine, by_seed(None, s2))})
    for field in ("same_budget", "stage2_budget"):
        ps = [r[field]["p"] if r[field] else math.nan for r in rows]
        for r, q in zip(rows, holm(ps)):
            if r[field]:
                r[field]["p_holm"] = q
    def seconds(arm: Optional[Arm], total: int) -> Optional[float]:
        """Median over seeds of the time a run takes: the arm's stage 1 and stage 2 jobs
        together (the teacher, trained once for every arm, is not counted)."""
        per_seed = []
        for s in seeds:
            t = _seconds(seed_folders[s], budget_key(preset, arm, total))
            if t is not None and arm is not None and arm.stage1_key:
                t1 = _seconds(seed_folders[s], arm.stage1_key)
                t = None if t1 is None else t + t1
            if t is not None:
                per_seed.append(t)
        return float(np.median(per_seed)) if per_seed else None

    sweep = []
    previous = None
    totals = sorted(budgets)
    alone_by_total = {t: by_seed(None, t) for t in totals}
    alone_secs = {t: seconds(None, t) for t in totals}
    for total in totals:
        alone, arm = alone_by_total[total], by_seed(budget_arm, total) if budget_arm else {}
        point = {"total_iterations": total, "images": total * preset.batch,
                 "alone": _band(alone), "arm": _band(arm), "gap": _paired(arm, alone),
                 "alone_seconds": alone_secs[total], "arm_seconds": seconds(budget_arm, total) if budget_arm else None}
        if previous is not None:
            point["alone_gain"] = _paired(alone, previous[0])
            point["arm_gain"] = _paired(arm, previous[1])
        # equal compute, bracketed: the student alone at the longest sweep point where it ran
        # no longer than the arm did here, and at the shortest where it ran at least as long
        t_arm = point["arm_seconds"]
        timed = [t for t in totals if alone_secs[t] is not None and alone_by_total[t]] if arm and t_arm is not None else []
        below = [t for t in timed if alone_secs[t] <= t_arm]
        above = [t for t in timed if alone_secs[t] >= t_arm]
        point["equal_compute"] = {
            side: None if not pick else {"alone_total_iterations": pick[0], "alone_seconds": alone_secs[pick[0]],
                                         "gap": _paired(arm, alone_by_total[pick[0]])}
            for side, pick in (("no_more_time", below[-1:]), ("no_less_time", above[:1]))}
        previous = (alone, arm)
        sweep.append(point)
    return {"preset": preset.name, "seeds": seeds, "iterations": {"stage1": s1, "stage2": s2},
            "arms": rows, "budget_arm": None if budget_arm is None else budget_arm.key,
            "budget_arm_label": None if budget_arm is None else budget_arm.label,
            "budget_arm_name": None if budget_arm is None else readable_name(budget_arm.key), "sweep": sweep}


def _band(values: Dict[int, float]) -> Optional[dict]:
    if not values:
        return None
    v = [values[s] for s in sorted(values)]
    sm = summarize(v)
    half = math.nan
    if sm.n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, sm.n - 1)) * sm.sd / math.sqrt(sm.n)
    return {"n": sm.n, "mean": sm.mean, "sd": sm.sd, "low": sm.mean - half, "high": sm.mean + half,
            "values": {str(s): values[s] for s in sorted(values)}}


def _ci(d: Optional[dict]) -> str:
    if not d:
        return "—"
    if d["n"] < 2:
        return f"{d['mean']:+.1f}"
    return f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def _p(d: Optional[dict]) -> str:
    if not d or math.isnan(d.get("p_holm", math.nan)):
        return "—"
    q = d["p_holm"]
    return f"{q:.3f}" if q >= 0.001 else "< 0.001"


def format_markdown(a: dict) -> str:
    n = len(a["seeds"])
    lines = [f"Preset `{a['preset']}`, seeds {_seed_text(a['seeds'])} ({n}); test mAP in %. Δ: the arm minus the "
             "student alone, paired over seeds, mean [95 % t interval]; p: two-sided paired t test, Holm-adjusted "
             "over the arms of the table; ±: the margin within which two one-sided t tests at 5 % place the "
             "difference (equivalence).", "",
             "| arm | iterations | Δ mAP at the same budget | p | within ± | ahead on | Δ mAP at stage 2's budget | p |"
             " per-seed Δ at the same budget |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in a["arms"]:
        sb, s2 = r["same_budget"], r["stage2_budget"]
        margin = "—" if not sb or math.isnan(sb["equivalence_margin"]) else f"{sb['equivalence_margin']:.1f}"
        ahead = "—" if not sb else f"{sb['wins']}/{sb['n']}"
        per = "—" if not sb else " ".join(f"{v:+.1f}" for v in sb["per_seed"].values())
        lines.append(f"| {r['name']} | {r['total_iterations']} | {_ci(sb)} | {_p(sb)} | {margin} | {ahead} | "
                     f"{_ci(s2)} | {_p(s2)} | {per} |")
    if a["sweep"]:
        lines += ["", f"Budget sweep: the student alone and {a['budget_arm_name']} (its stage 2 trained for the total "
                  f"less stage 1's {a['iterations']['stage1']} iterations), test mAP mean [95 % t interval]; gain: "
                  "from the previous budget, paired; s: a run's time, median over seeds (the arm's stage 1 and "
                  "stage 2 together, each with its test, two jobs at a time on the study's workers; the teacher "
                  "not counted); at equal compute: the arm minus the student alone at the longest budget where "
                  "that ran no longer than the arm, and at the shortest where it ran at least as long (its "
                  "iterations in brackets), which bracket the gap at the arm's time.", "",
                  "| iterations in all | images seen | student alone | gain | s | arm | gain | s | gap (arm − alone) |"
                  " gap, alone given no more time | gap, alone given no less time |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for pnt in a["sweep"]:
            eq = pnt.get("equal_compute") or {}
            lines.append(f"| {pnt['total_iterations']} | {pnt['images']} | {_band_text(pnt['alone'])} | "
                         f"{_ci(pnt.get('alone_gain'))} | {_secs(pnt.get('alone_seconds'))} | "
                         f"{_band_text(pnt['arm'])} | {_ci(pnt.get('arm_gain'))} | {_secs(pnt.get('arm_seconds'))} | "
                         f"{_ci(pnt['gap'])} | {_equal(eq.get('no_more_time'))} | {_equal(eq.get('no_less_time'))} |")
    pc = a.get("per_class")
    if pc:
        rc, ro = pc["spearman_gain_corloc"], pc["spearman_gain_cooccurrence"]
        lines += ["", f"Per class, {pc['name']} against the student alone at the same budget, means over "
                  f"{pc['seeds']} seeds: the gain in test AP, the teacher's CorLoc, and the share of the class's "
                  "test images that hold another class too. Spearman's ρ of the gain with the CorLoc "
                  f"{rc['rho']:+.2f} (p {rc['p']:.2f}), with the co-occurrence {ro['rho']:+.2f} (p {ro['p']:.2f}).",
                  "", "| class | Δ AP | teacher CorLoc | with another class |", "|---|---|---|---|"]
        for name, g, c, o in zip(pc["classes"], pc["gain_ap"], pc["teacher_corloc"], pc["with_another_class"]):
            lines.append(f"| {name} | {g:+.1f} | {c:.1f} | {o:.0f} % |")
    return "\n".join(lines)


def _equal(e: Optional[dict]) -> str:
    return "—" if not e else f"{_ci(e['gap'])} ({e['alone_total_iterations']})"


def _secs(t: Optional[float]) -> str:
    return "—" if t is None else f"{t:.0f}"


def _band_text(b: Optional[dict]) -> str:
    if not b:
        return "—"
    if b["n"] < 2:
        return f"{b['mean']:.1f}"
    return f"{b['mean']:.1f} [{b['low']:.1f}, {b['high']:.1f}]"


def _seed_text(seeds: Sequence[int]) -> str:
    if seeds and list(seeds) == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def plot_budget(a: dict, path: Path) -> None:
    """Test mAP against training images seen for the student alone and the swept arm (mean
    and 95 % band), below it their paired gap with its interval, and on the right the same
    curves against a run's time (equal compute reads off a vertical line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    pts = [p for p in a["sweep"] if p["alone"] or p["arm"]]
    fig = plt.figure(figsize=(12, 6.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2], width_ratios=[3, 2])
    top = fig.add_subplot(grid[0, 0])
    bottom = fig.add_subplot(grid[1, 0], sharex=top)
    right = fig.add_subplot(grid[:, 1], sharey=top)
    for field, name, color in (("alone", "student alone", "tab:gray"), ("arm", a["budget_arm_name"], "tab:blue")):
        p = [q for q in pts if q[field]]
        if not p:
            continue
        x = np.array([q["images"] for q in p])
        m = np.array([q[field]["mean"] for q in p])
        lo = np.array([q[field]["low"] for q in p])
        hi = np.array([q[field]["high"] for q in p])
        top.plot(x, m, "o-", color=color, label=f"{name} (n = {max(q[field]['n'] for q in p)})")
        top.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        timed = [i for i, q in enumerate(p) if q.get(f"{field}_seconds")]
        if timed:
            t = np.array([p[i][f"{field}_seconds"] for i in timed])
            right.plot(t, m[timed], "o-", color=color)
            right.fill_between(t, lo[timed], hi[timed], color=color, alpha=0.2, lw=0)
            for i in timed:
                right.annotate(str(p[i]["total_iterations"]), (p[i][f"{field}_seconds"], m[i]), fontsize=7,
                               textcoords="offset points", xytext=(4, -10) if field == "alone" else (-16, 7),
                               color=color)
    top.set_ylabel("test mAP (%)")
    top.legend(fontsize=8, loc="lower right")
    top.grid(alpha=0.3)
    top.set_title(f"preset {a['preset']}: test mAP against training images seen, log scale (bands: 95 % t "
                  "interval over seeds)",
                  fontsize=9)
    right.set_xlabel("seconds a run takes, log scale (median over seeds; the arm's\nstage 1 and stage 2; the teacher "
                     "not counted)")
    right.set_title("the same against a run's time\n(labels: iterations in all)", fontsize=9)
    right.grid(alpha=0.3)
    g = [q for q in pts if q["gap"]]
    x = np.array([q["images"] for q in g])
    m = np.array([q["gap"]["mean"] for q in g])
    lo = np.array([q["gap"]["low"] for q in g])
    hi = np.array([q["gap"]["high"] for q in g])
    bottom.axhline(0, color="k", lw=0.8)
    bottom.errorbar(x, m, yerr=[m - lo, hi - m], fmt="o", color="tab:blue", capsize=3)
    bottom.set_ylabel("gap: arm − alone (mAP)")
    bottom.set_xlabel("training images seen (iterations in all × batch)")
    bottom.grid(alpha=0.3)
    bottom.set_title("the same seeds, paired: mean and 95 % t interval", fontsize=9)
    # budgets grow geometrically: a log axis keeps the short runs apart from the long ones
    images = sorted({q["images"] for q in pts})
    top.set_xscale("log")
    bottom.set_xticks(images, [f"{i / 1000:g}k" for i in images], fontsize=8)
    bottom.xaxis.set_minor_locator(NullLocator())
    right.set_xscale("log")
    lo_t, hi_t = right.get_xlim()
    ticks = [t for t in (10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000) if lo_t <= t <= hi_t]
    right.set_xticks(ticks, [str(t) for t in ticks])
    right.set_xlim(lo_t, hi_t * 1.15)  # room for the last point's label
    right.xaxis.set_minor_locator(NullLocator())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_seeds(a: dict, path: Path) -> None:
    """Every seed's same-budget difference per arm, with the mean and its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in a["arms"] if r["same_budget"]]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.8))
    for i, r in enumerate(rows):
        d = r["same_budget"]
        vals = list(d["per_seed"].values())
        ax.scatter(vals, np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), s=14, color="0.55", zorder=2)
        if d["n"] > 1:
            ax.errorbar([d["mean"]], [i], xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="D",
                        color="tab:blue", capsize=4, zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
    ax.set_xlabel("Δ test mAP against the student alone at the same budget\n(points: seeds; diamond: mean with "
                  "its 95 % t interval)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    counts = sorted({r["same_budget"]["n"] for r in rows})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    ax.set_title(f"preset {a['preset']}: each arm against the student alone, paired over {seeds} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_decision(preset: Preset, seed_folders: Dict[int, Path], arms: Sequence[Arm], root: Path,
                   budgets: Sequence[int] = (), budget_arm: Optional[Arm] = None) -> str:
    """decision.md, decision.json, seeds.png and (with a sweep) budget.png in `root`;
    returns the markdown."""
    a = analyse(preset, seed_folders, arms, budgets, budget_arm)
    if budget_arm is not None:
        a["per_class"] = per_class(preset, seed_folders, budget_arm)
    text = format_markdown(a)
    root = Path(root)
    (root / "decision.md").write_text(text + "\n")
    (root / "decision.json").write_text(json.dumps(a, indent=1, default=float) + "\n")
    if any(r["same_budget"] for r in a["arms"]):
        plot_seeds(a, root / "seeds.png")
    if a["sweep"]:
        plot_budget(a, root / "budget.png")
    return text



# ----------------------------------------------------------------------------- per class


CORLOC_CACHE = "corloc_per_class.json"


def teacher_corloc_per_class(preset: Preset, folder: Path) -> np.ndarray:
    """The seed's teacher's CorLoc per class on its test images (single forward). Kept in
    teacher/test_test/corloc_per_class.json under the weights' SHA-256, so a report written
    again does not run the teacher again; other weights (another hash) are measured anew."""
    from mlic.integrity import atomic_write, recorded_sha256

    teacher = Path(folder) / "teacher"
    digest = recorded_sha256(teacher / "final.pt")
    cache = teacher / "test_test" / CORLOC_CACHE
    if digest and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("weights_sha256") == digest:
            return np.array(saved["corloc_per_class"], dtype=float)
    value = _measure_teacher_corloc(preset, Path(folder))
    if digest:
        cache.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"weights_sha256": digest, "corloc_per_class": value.tolist()}) + "\n"
        atomic_write(cache, lambda f: f.write(text.encode()), OSError)
    return value


def _measure_teacher_corloc(preset: Preset, folder: Path) -> np.ndarray:
    import torch

    from mlic.data import BatchSpec, HumanAttDataConfig, HumanAttDataset, read_datalist
    from mlic.data.annotations import read_ground_truth
    from mlic.evaluation.detection import corloc
    from mlic.training.config import BGR_MEAN
    from mlic.training.test import load_trained

    data = Path(folder) / "data"
    root = str(data) + "/"
    dl = read_datalist(str(data / "test.txt"), att_num=preset.classes, bbox_num=preset.proposals, root_folder=root)
    size = preset.teacher_size
    ds = HumanAttDataset(dl, HumanAttDataConfig(source=str(data / "test.txt"), root_folder=root, batch_size=16,
                                                new_width=size, new_height=size, att_num=dl.att_num,
                                                bbox_num=dl.bbox_num, mean_values=BGR_MEAN, scale=preset.input_scale))
    task, _ = load_trained(str(Path(folder) / "teacher" / "final.pt"))
    regions, boxes = [], []
    with torch.no_grad():
        for start in range(0, len(dl), 16):
            b = ds[BatchSpec(tuple(range(start, min(len(dl), start + 16))))]
            _, region = task.predict(task.model, b)
            regions += list(region.numpy())
            boxes += list(b.boxes[:, :, :4].numpy())
    gt = read_ground_truth(data / "gt_test.json", dl, (size, size))
    return corloc(regions, boxes, gt)[1]


def per_class(preset: Preset, seed_folders: Dict[int, Path], arm: Arm) -> dict:
    """Where a same-budget gain comes from, class by class: the arm's test AP minus the
    student alone's at the same budget (mean over seeds), beside the teacher's CorLoc for
    the class (mean over seeds) and how often the class appears with another class in an
    image (the test labels), with Spearman's rank correlation of the gain with each."""
    from scipy import stats

    from mlic.evaluation import average_precision, load_scores

    total = (preset.iters["stage1"] if arm.stage1_key else 0) + preset.iters["stage2"]
    gains, corlocs, cooc = [], [], []
    for seed in sorted(seed_folders):
        folder = Path(seed_folders[seed])
        files = [folder / budget_key(preset, x, total) / "test_test" / "scores.csv" for x in (arm, None)]
        if not all(f.is_file() for f in files) or not (folder / "teacher" / "final.pt").is_file():
            continue
        mine, alone = (load_scores(f) for f in files)
        gains.append(100 * (average_precision(mine.scores, mine.labels) - average_precision(alone.scores, alone.labels)))
        corlocs.append(100 * teacher_corloc_per_class(preset, folder))
        y = alone.labels.astype(bool)
        with_other = (y & (y.sum(1, keepdims=True) > 1)).sum(0)
        cooc.append(100 * with_other / np.maximum(1, y.sum(0)))
    if not gains:
        return {}
    g, c, o = (np.nanmean(np.array(x), 0) for x in (gains, corlocs, cooc))
    rho_c, p_c = stats.spearmanr(g, c)
    rho_o, p_o = stats.spearmanr(g, o)
    names = (Path(next(iter(seed_folders.values()))) / "data" / "classes.txt").read_text().split()
    return {"arm": arm.key, "name": readable_name(arm.key), "label": arm.label, "seeds": len(gains), "classes": names,
            "gain_ap": g.tolist(), "teacher_corloc": c.tolist(), "with_another_class": o.tolist(),
            "spearman_gain_corloc": {"rho": float(rho_c), "p": float(p_c)},
            "spearman_gain_cooccurrence": {"rho": float(rho_o), "p": float(p_o)}}
