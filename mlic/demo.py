"""The embedded demo: the whole method on the synthetic benchmark, on a laptop CPU.

For one seed of a preset (mlic.study.presets): synthetic data -> the pretrained stand-in
for ImageNet weights -> the WSDDN teacher -> KD stage 1 -> KD stage 2 (the released
soft cross-entropy, and the paper's L2) -> the student without KD, every stage in its own process through the library's
training API, each student tested on the same test images; then a results table
(results.md / results.json) and figures. Several seeds add a table over seeds.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mlic.engine.run_lock import LOCK_NAME, hold_folder, make_out_folder
from mlic.study import names, report
from mlic.study.jobs import TimeLeft, duration, run_jobs
from mlic.study.pipeline import BASELINE, PAPER_L2, RELEASED, SeedPlan, prepare_data
from mlic.study.presets import Preset, get_preset
from mlic.study.stats import paired_difference, summarize

# what the demo trains, in the order of its table
ARMS = [RELEASED, PAPER_L2]
ROWS = [(key, names.name(key)) for key in (names.TEACHER, RELEASED.key, PAPER_L2.key, BASELINE)]
README = Path(__file__).resolve().parents[1] / "README.md"
# Typical seconds of the phases outside the training steps, measured on the 2 CPU cores the
# README names while another study ran beside the demo: writing one synthetic image of the
# benchmark (with its proposals) and one of the stand-in's, and the tests' figures.
SECONDS_PER_IMAGE = {"benchmark": 0.027, "standin": 0.015}
FIGURE_SECONDS = 30.0  # measured 12-31 s for the demo preset, 52 s for the smoke one (its imports included)
TOP3_FROM = 4  # the top-3 columns are shown for more classes than this
# what each column of a training log shows (log.csv of mlic.training), a line under its panel
LOG_CAPTIONS = {
    "loss_euclid": "Euclidean loss between the student's fc7 features of the regions and the teacher's",
    "loss_soft": "soft term: the student's scaled prediction against the teacher's image scores",
    "loss_sig": "label term: sigmoid cross-entropy against the image's labels",
    "grad_norm": "norm of the gradient over all trained parameters",
    "soft_scale": "fc8_mscoco_soft, the learned scale of the student's logits in the soft term: "
                  "mean over classes (band: smallest to largest)",
    "target_mean": "mean soft target (the teacher's image score at the stage-2 temperature)",
    "target_saturated": "share of soft targets below 0.01 or above 0.99: such targets say little beyond the labels",
    "grad_fc8_soft": "norm of the soft term's gradient at the student's classifier weights (fc8)",
    "grad_fc8_hard": "norm of the label term's gradient at fc8",
    "grad_fc8_cos": "cosine between the two gradients at fc8; below 0 the teacher pulls against the labels",
}
KD_DIAGNOSTICS = ("soft_scale", "target_mean", "target_saturated", "grad_fc8_soft", "grad_fc8_hard", "grad_fc8_cos")
STAGE_CAPTIONS = {"loss": {"pretrain": "cross-entropy of the single-object classifier on the stand-in's images",
                           "teacher": "WSDDN's image-level cross-entropy against the labels",
                           BASELINE: "sigmoid cross-entropy against the image's labels"}}


def kernels_demo(device: str = "cpu", seed: int = 0) -> int:
    """Runs each op on `device` against the pure-PyTorch reference."""
    from mlic import ops
    from mlic.ops import reference as ref

    torch.manual_seed(seed)
    print(f"mlic ops backend on {device}: {ops.backend_for(device)}")
    feats = torch.randn(2, 64, 42, 42, device=device)
    k = 200
    boxes = torch.rand(k, 4, device=device) * 600
    rois = torch.cat([torch.randint(0, 2, (k, 1), device=device).float(), torch.minimum(boxes[:, :2], boxes[:, 2:]),
                      torch.maximum(boxes[:, :2], boxes[:, 2:]), torch.rand(k, 1, device=device)], 1)
    failures = 0

    def check(name, ours, theirs):
        nonlocal failures
        err = (ours - theirs).abs().max().item()
        ok = err <= 1e-5 * (1 + theirs.abs().max().item())
        failures += not ok
        print(f"  {name:<28} max |ours - reference| = {err:.3g}  {'ok' if ok else 'MISMATCH'}")

    check("roi_pool 7x7 (200 RoIs)", ops.roi_pool(feats, rois, 7, 7, 1 / 16), ref.roi_pool_ref(feats, rois, 7, 7, 1 / 16)[0])
    check("spp (3 levels, max)", ops.spp(feats, 3), ref.spp_ref(feats, 3))
    cls, det = torch.randn(2, 500, 80, device=device), torch.randn(2, 500, 80, device=device)
    check("wsddn_two_stream", ops.wsddn_two_stream(cls, det)[0], ref.wsddn_two_stream_ref(cls, det)[0])
    print("all ops agree with the reference" if not failures else f"{failures} op(s) disagree")
    return 1 if failures else 0


def _clean(folder: Path) -> None:
    """A rerun replaces the seed's folder: everything goes but generated data whose
    settings match (it is a pure function of them)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name == LOCK_NAME or (p.name in ("data", "pretrain_data") and (p / "complete.json").is_file()):
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def data_seconds(preset: Preset) -> float:
    """Typical time to write a seed's synthetic images on 2 cores."""
    return (SECONDS_PER_IMAGE["benchmark"] * (preset.train_images + preset.test_images) +
            SECONDS_PER_IMAGE["standin"] * (preset.pretrain_images + max(8, preset.pretrain_images // 10)))


def run_demo(out: str = "demo_out", preset: str = "demo", seed: int = 0, workers: int = 2, log=print) -> dict:
    """Trains and tests everything of one seed; returns the summary written to results.json
    ({row: metrics} under "results") and writes results.md and figures/ in
    out/<preset>/seed<seed>."""
    p = get_preset(preset)
    run = Path(out) / p.name / f"seed{seed}"
    make_out_folder(run)
    with hold_folder(run):  # a second demo on the same seed would delete the jobs this one runs
        return _run_seed(run, p, seed, workers, log)


def seed_jobs(p: Preset, seed: int, run: Path, data) -> list:
    """The training jobs of one demo seed, in the order they may start: the study's jobs of
    the same models (SeedPlan), with the same settings and threads."""
    plan = SeedPlan(p, seed, run, data)
    students = plan.student_jobs(ARMS)
    # the student alone (last) needs only the stand-in: listed first, it runs beside the teacher
    return plan.shared_jobs(ARMS) + students[-1:] + students[:-1]


def _run_seed(run: Path, p: Preset, seed: int, workers: int, log) -> dict:
    _clean(run)
    t0 = time.perf_counter()
    log(f"[demo] preset {p.name}, seed {seed}, into {run}: (1) the synthetic images, (2) {2 + 2 * len(ARMS)} "
        f"training steps, each in its own process, {workers} at a time, (3) the test results and figures")
    kept = all((run / d / "complete.json").is_file() for d in ("data", "pretrain_data"))
    log("[demo] (1) the synthetic images: " + ("kept from the last run with the same settings" if kept else
        f"typically {duration(data_seconds(p))} to write on 2 cores (kept for later runs)"))
    data = prepare_data(p, seed, run, workers=workers, log=lambda m: log(m.replace("[study]", "[demo]", 1)))
    jobs = seed_jobs(p, seed, run, data)
    if all(j.expected_seconds for j in jobs):
        log(f"[demo] (2) {len(jobs)} training steps: typically {duration(TimeLeft(workers).seconds(jobs))} on "
            f"{workers} idle cores; each says its typical time when it starts, and each finished one the time left")
    else:
        log(f"[demo] (2) {len(jobs)} training steps (no typical times for this preset): each finished one gives the "
            "time left, from the pace of those before it")
    failed = run_jobs(jobs, workers, log, tag="demo", after_seconds=FIGURE_SECONDS)
    if failed:
        raise RuntimeError(f"demo: {len(failed)} step(s) failed: {', '.join(failed)}; see their job.log")
    log(f"[demo] (3) the test results and figures (typically {duration(FIGURE_SECONDS)})")
    results, iterations = {}, {}
    for key, _ in ROWS:
        r = json.loads((run / key / "result.json").read_text())
        results[key] = {m: v for m, v in r["metrics"]["test"].items() if isinstance(v, (int, float))}
        iterations[key] = _iterations(run, key)
    reference = readme_reference() if p.name == "demo" else None
    figures = _figures(run, p, data, seed)
    summary = {"preset": p.name, "seed": seed, "results": results,
               "models": {key: {"name": name, "folder": key, "iterations": iterations[key],
                                "delta_vs_student_without_kd": _deltas(results, key)} for key, name in ROWS},
               "readme": reference, "figures": figures}
    table = format_results(results, p, seed, iterations, reference, figures)
    summary["seconds"] = time.perf_counter() - t0
    (run / "results.md").write_text(table + "\n")
    (run / "results.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    log(table)
    log(f"[demo] seed {seed} done in {summary['seconds'] / 60:.1f} min; this table is {run / 'results.md'}, "
        f"every value in {run / 'results.json'}, the figures in {run / 'figures'}")
    return summary


def _iterations(run: Path, key: str) -> Dict[str, int]:
    """{stage: iterations} that trained a model: a KD student's stage 1 and stage 2."""
    cfg = json.loads((run / key / "result.json").read_text())["config"]
    out = {}
    arm = next((a for a in ARMS if a.key == key), None)
    if arm is not None and arm.stage1_key:
        out["stage 1"] = json.loads((run / arm.stage1_key / "result.json").read_text())["config"]["solver"]["max_iter"]
        out["stage 2"] = cfg["solver"]["max_iter"]
    else:
        out["training"] = cfg["solver"]["max_iter"] if "solver" in cfg else cfg["iters"]  # the stand-in's own settings
    return out


def _deltas(results: Dict[str, dict], key: str) -> Dict[str, float]:
    """This model minus the student without KD, in each metric both have (fractions)."""
    if key in (names.TEACHER, BASELINE):
        return {}
    base = results[BASELINE]
    return {m: results[key][m] - base[m] for m in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")
            if m in results[key] and m in base}


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def readme_reference(path: Path = README) -> Optional[dict]:
    """The demo table of the README's "Measured" section: {"seeds": text, "rows": {model name:
    {column: cell}}, "teacher": {"CorLoc": cell, "det_mAP": cell}}; None when the README or the
    table is not there."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    start = next((i for i, ln in enumerate(lines) if ln.startswith("#") and ln.lstrip("#").strip() == "Measured"),
                 None)
    if start is None:
        return None
    section = []
    for ln in lines[start + 1:]:
        if ln.startswith("#"):
            break
        section.append(ln)
    table = [ln for ln in section if ln.startswith("|")]
    if len(table) < 3:
        return None
    cells = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    head = cells(table[0])
    rows = {}
    for ln in table[2:]:
        c = cells(ln)
        rows[c[0]] = {h: v for h, v in zip(head[1:], c[1:]) if v}
    text = " ".join(section)
    seeds = re.search(r"over seeds (\d+\s*[–-]\s*\d+)", text)
    teacher = {}
    for key, pattern in (("CorLoc", r"Teacher CorLoc (\d+\.\d ± \d+\.\d)"),
                         ("det_mAP", r"detection mAP (\d+\.\d ± \d+\.\d)")):
        m = re.search(pattern, text)
        if m:
            teacher[key] = m.group(1)
    return {"seeds": seeds.group(1).replace(" ", "") if seeds else "", "rows": rows, "teacher": teacher}


def format_results(results: Dict[str, dict], preset: Preset, seed: int, iterations: Dict[str, Dict[str, int]],
                   reference: Optional[dict] = None, figures: Optional[Dict[str, str]] = None) -> str:
    """results.md: what ran, the table of this seed (with the README's mean ± sd under each
    row when `reference` has it), the teacher's localisation, and the figures."""
    p = preset
    its = lambda key: " + ".join(f"{n:,}" for n in iterations[key].values())  # noqa: E731
    lines = [f"# Demo results: preset `{p.name}`, seed {seed}", ""]
    if p.name == "smoke":
        lines += [f"**The smoke preset checks that the pipeline runs, not the method:** {p.train_images} training "
                  f"and {p.test_images} test images, a few iterations per step. Its numbers say nothing about "
                  "distillation; the README's table is the demo preset's (`make demo`).", ""]
    lines += [f"Each model tested on the {p.test_images:,} test images ({p.classes} classes) with one forward "
              f"pass per image; in %. The teacher sees the image at {p.teacher_size} px, the students at "
              f"{p.student_size} px; batch {p.batch}. Δ = the model minus the student without KD, on this seed.", ""]
    # With few classes the three most probable labels are most of the label set: the top-3
    # F1s then nearly repeat CF1 and OF1, and the table leaves them out.
    gap = max((abs(r[m] - r[m[:-5]]) for r in results.values() for m in ("CF1_top3", "OF1_top3")
               if m in r and m[:-5] in r), default=0.0)
    top3 = p.classes > TOP3_FROM
    metrics = ["mAP", "CF1", "OF1"] + (["CF1_top3", "OF1_top3"] if top3 else [])
    head = ["model", "folder", "iterations"] + [report.NAMES[m] for m in metrics] + [f"Δ {m}" for m in
                                                                                     ("mAP", "CF1", "OF1")]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref_rows = (reference or {}).get("rows", {})
    for key, name in ROWS:
        r = results[key]
        d = _deltas(results, key)
        lines.append(f"| {name} | `{key}` | {its(key)} | " + " | ".join(_pct(r.get(m)) for m in metrics) + " | " +
                     " | ".join(f"{100 * d[m]:+.1f}" if m in d else "" for m in ("mAP", "CF1", "OF1")) + " |")
        ref = ref_rows.get(name)
        if ref:
            lines.append(f"| ↳ README, seeds {reference['seeds']} | | | " +
                         " | ".join(ref.get(report.NAMES[m], "") for m in metrics) + " | " +
                         " | ".join(ref.get(f"Δ {m}", "") for m in ("mAP", "CF1", "OF1")) + " |")
    lines.append("")
    if not top3:
        lines.append(f"With {p.classes} classes the three most probable labels are most of the label set: CF1 and "
                     f"OF1 top-3 (in results.json) stay within {100 * gap:.1f} points of CF1 and OF1 here, so the "
                     "table leaves them out.")
    t = results[names.TEACHER]
    ref_t = (reference or {}).get("teacher", {})
    lines.append(f"Teacher: CorLoc {_pct(t.get('CorLoc'))} %" + (f" (README {ref_t['CorLoc']})" if "CorLoc" in ref_t
                                                                  else "") +
                 f", detection mAP {_pct(t.get('det_mAP'))}" + (f" (README {ref_t['det_mAP']})" if "det_mAP" in ref_t
                                                               else "") + ".")
    if ref_rows:
        lines.append(f"README rows: mean ± sd over seeds {reference['seeds']}, Δ paired over those seeds with its "
                     "95 % t interval — the table of the README's section \"Measured\", which says what they show. "
                     "A single seed lands anywhere within the spread.")
    if figures:
        lines += ["", "Figures (in figures/):", ""]
        lines += [f"- `{f}`: {c}" for f, c in figures.items()]
        lines += ["", "Each step is tested once, at its end, so no figure shows test mAP during training."]
    return "\n".join(lines)


def format_seeds(summaries: Dict[int, dict]) -> str:
    """Mean ± sd over seeds, and each KD student minus the student without KD paired over
    seeds (95 % t interval)."""
    seeds = sorted(summaries)
    lines = [f"Over seeds {seeds}: mean ± sd; Δ = minus the student without KD, paired over seeds, 95 % t "
             "interval.", "", "| model | mAP | CF1 | OF1 | Δ mAP | Δ CF1 | Δ OF1 |", "|---|---|---|---|---|---|---|"]
    for key, name in ROWS:
        vals = {m: [100 * summaries[s]["results"][key][m] for s in seeds] for m in ("mAP", "CF1", "OF1")}
        cells = [report.pm(summarize(vals[m])) for m in ("mAP", "CF1", "OF1")]
        if key in (names.TEACHER, BASELINE):
            cells += ["", "", ""]
        else:
            for m in ("mAP", "CF1", "OF1"):
                base = [100 * summaries[s]["results"][BASELINE][m] for s in seeds]
                d = paired_difference(vals[m], base)
                cells.append(f"{d.mean:+.1f}" if len(seeds) < 2 else f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _log_caption(job: str, column: str, columns: Sequence[str] = ()) -> str:
    if column == "loss":
        terms = [c for c in columns if c.startswith("loss_")]
        if terms:
            return f"the loss minimised: {' + '.join(terms)}"
        if job.startswith("stage1-"):
            return LOG_CAPTIONS["loss_euclid"]
        if job in STAGE_CAPTIONS["loss"]:
            return STAGE_CAPTIONS["loss"][job]
    return LOG_CAPTIONS.get(column, "")


def example_images(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> List[Tuple[int, str]]:
    """The test images the qualitative figures show, by a rule that does not look at how
    well a model does: the first image with 1, 2, 3, ... classes of ground truth, and the
    first other image on which `first` and `second` (scores) rank a different label first.
    Returns (index, the rule that chose it)."""
    counts = np.asarray(labels).sum(1).astype(int)
    picked: List[Tuple[int, str]] = []
    for n in sorted(set(counts.tolist()) - {0}):
        i = int(np.flatnonzero(counts == n)[0])
        picked.append((i, f"the first test image with {n} class{'es' if n > 1 else ''} of ground truth"))
    taken = {i for i, _ in picked}
    differ = [i for i in np.flatnonzero(np.argmax(first, 1) != np.argmax(second, 1)) if int(i) not in taken]
    if differ:
        picked.append((int(differ[0]), f"the first test image not shown above on which \"{names.name(RELEASED.key)}\""
                                       f" and \"{names.name(BASELINE)}\" rank a different label first"))
    return picked


def _figures(run: Path, preset: Preset, data, seed: int) -> Dict[str, str]:
    """Training curves of every step, the KD students' diagnostics, precision-recall
    curves of every model, and the paper-style qualitative figure for a few test images.
    Returns {file name: caption}."""
    from mlic.data import read_datalist
    from mlic.evaluation import load_scores
    from mlic.training.test import load_trained
    from mlic.visualization import plot_pr_comparison, plot_qualitative, plot_training_curves

    figs = run / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    captions: Dict[str, str] = {}
    jobs = [names.STANDIN, names.TEACHER] + sorted({a.stage1_key for a in ARMS if a.stage1_key}) + \
        [a.key for a in ARMS] + [BASELINE]
    for job in jobs:
        log = run / job / "log.csv"
        if not log.is_file():
            continue
        header = log.read_text().splitlines()[0].split(",")
        cols = [c for c in header if c.startswith("loss")] + (["grad_norm"] if job != names.STANDIN else [])
        its = _iterations(run, job)
        if job == names.STANDIN:
            phase, how = "training", f"{its['training']:,} iterations of Adam, batch-normalised; folded into plain " \
                                     "weights afterwards"
        elif "stage 2" in its:  # a KD student's log is its stage 2; stage 1 has a figure of its own
            phase, how = "stage 2", f"{its['stage 2']:,} iterations of Caffe SGD, after stage 1's {its['stage 1']:,}"
        else:
            phase, how = "training", f"{its['training']:,} iterations of Caffe SGD"
        plot_training_curves([log], figs / f"training_{job}.png", title=f"{names.name(job)}: {phase} ({how})",
                             smooth=25, columns=cols, ncols=2 if len(cols) == 4 else 3,
                             captions={c: _log_caption(job, c, cols) for c in cols})
        captions[f"training_{job}.png"] = f"{names.name(job)} (folder `{job}`): its loss terms during {phase}"
    kd_logs = [(a.key, run / a.key / "log.csv") for a in ARMS if (run / a.key / "log.csv").is_file()]
    if kd_logs:
        plot_training_curves([p for _, p in kd_logs], figs / "kd_diagnostics.png", columns=list(KD_DIAGNOSTICS),
                             labels=[names.name(k) for k, _ in kd_logs], ncols=2, smooth=25,
                             captions={c: LOG_CAPTIONS[c] for c in KD_DIAGNOSTICS},
                             bands={"soft_scale": ("soft_scale_min", "soft_scale_max")},
                             title="KD stage 2, both students: the soft scale, the teacher's soft targets, and the "
                                   "two loss terms' gradients at the classifier")
        captions["kd_diagnostics.png"] = ("stage 2 of the KD students, overlaid: what the soft term does "
                                          "(a line under each panel says what it shows)")
    class_names = [line.strip() for line in Path(data.classes).read_text().splitlines() if line.strip()]
    scores = {key: load_scores(run / key / "test_test" / "scores.csv") for key, _ in ROWS}
    labels = scores[BASELINE].labels
    plot_pr_comparison({names.name(k): scores[k].scores for k, _ in ROWS}, labels, figs / "pr_curves.png",
                       class_names=class_names, ncols=2,
                       styles={names.name(names.TEACHER): dict(color="black", ls="--", lw=1.2)},
                       title=f"Precision-recall per class on the {len(labels):,} test images, seed {seed}: "
                             "every model (legend: its AP)")
    captions["pr_curves.png"] = ("precision-recall per class, every model on each panel, its AP in the legend; the "
                                 "last panel pools all classes")
    dl = read_datalist(data.test, att_num=preset.classes, bbox_num=preset.proposals, root_folder=data.root)
    task, meta = load_trained(str(run / "teacher" / "final.pt"))
    from mlic.data import BatchSpec, HumanAttDataConfig, HumanAttDataset
    from mlic.training.config import BGR_MEAN

    size = preset.teacher_size
    ds = HumanAttDataset(dl, HumanAttDataConfig(source=data.test, root_folder=data.root, batch_size=1, new_width=size,
                                                new_height=size, att_num=dl.att_num, bbox_num=dl.bbox_num,
                                                mean_values=BGR_MEAN, scale=preset.input_scale))
    shown = (RELEASED.key, PAPER_L2.key, BASELINE)
    for k, (i, why) in enumerate(example_images(np.asarray(dl.labels), scores[RELEASED.key].scores,
                                                scores[BASELINE].scores)):
        b = ds[BatchSpec((i,))]
        with torch.no_grad():
            _, region = task.predict(task.model, b)
        objectness = region[0].sum(1).numpy()  # detection-stream mass per region, summed over classes
        truth = ", ".join(n for n, y in zip(class_names, dl.labels[i]) if y)
        name = f"qualitative_{k}.png"
        plot_qualitative(str(Path(data.root) / dl.paths[i]), b.boxes[0, :, :4].numpy(), objectness, class_names,
                         {names.name(key): scores[key].scores[i] for key in shown}, dl.labels[i], figs / name,
                         boxes_frame=(size, size),
                         title=f"Test image {i} ({dl.paths[i]}), {why}; ground truth: {truth}")
        captions[name] = f"test image {i}, {why}: the teacher's top proposals and each student's top labels"
    return captions
