"""The embedded demo: the whole method on the synthetic benchmark, on a laptop CPU.

For one seed of a preset (mlic.study.presets): synthetic data -> the pretrained stand-in
for ImageNet weights -> the WSDDN teacher -> KD stage 1 -> KD stage 2 (the released
soft cross-entropy, and the paper's L2) -> the student without KD, every stage in its own process through the library's
training API, each student tested on the same test images; then a results table
(results.md / results.json) and figures. Several seeds add a table over seeds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from mlic.study import report
from mlic.study.jobs import run_jobs
from mlic.study.pipeline import BASELINE, PAPER_L2, RELEASED, SeedPlan, prepare_data
from mlic.study.presets import PRESETS, Preset, get_preset
from mlic.study.stats import paired_difference, summarize

# what the demo trains, in the order of its table
ARMS = [RELEASED, PAPER_L2]
ROWS = [("teacher", "teacher (WSDDN, full resolution)"),
        (RELEASED.key, "student, KD as released (soft cross-entropy)"),
        (PAPER_L2.key, "student, KD with the paper's L2 loss"),
        (BASELINE, "student without KD")]
METRICS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3", "CorLoc", "det_mAP")
TEACHER_ONLY = ("CorLoc", "det_mAP")


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
        if p.name in ("data", "pretrain_data") and (p / "complete.json").is_file():
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_demo(out: str = "demo_out", preset: str = "demo", seed: int = 0, workers: int = 2, log=print) -> dict:
    """Trains and tests everything of one seed; returns {row: metrics} and writes
    results.md, results.json and figures/ in out/<preset>/seed<seed>."""
    p = get_preset(preset)
    run = Path(out) / p.name / f"seed{seed}"
    _clean(run)
    t0 = time.perf_counter()
    data = prepare_data(p, seed, run, workers=workers, log=log)
    # The teacher takes both cores (the stand-in always does): nothing else of the seed can run
    # beside it once the student alone is put after it, beside stage 1.
    plan = SeedPlan(p, seed, run, data, threads={"wsddn": 2})
    students = plan.student_jobs(ARMS)
    jobs = plan.shared_jobs(ARMS) + students[-1:] + students[:-1]
    failed = run_jobs(jobs, workers, log)
    if failed:
        raise RuntimeError(f"demo: {len(failed)} step(s) failed: {', '.join(failed)}; see their job.log")
    results = {}
    for key, _ in ROWS:
        r = json.loads((run / key / "result.json").read_text())
        results[key] = {m: v for m, v in r["metrics"]["test"].items() if isinstance(v, (int, float))}
    _figures(run, p, data, results)
    table = format_table(results, p)
    (run / "results.md").write_text(table + "\n")
    summary = {"preset": p.name, "seed": seed, "seconds": time.perf_counter() - t0, "results": results}
    (run / "results.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    log(table)
    log(f"[demo] seed {seed} done in {summary['seconds'] / 60:.1f} min; results and figures in {run}")
    return summary


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def format_table(results: Dict[str, dict], preset: Preset) -> str:
    lines = [f"Test set: {preset.test_images} images, {preset.classes} classes; in % (single forward).", "",
             "| model | mAP | CF1 | OF1 | CF1 top-3 | OF1 top-3 | CorLoc | detection mAP |",
             "|---|---|---|---|---|---|---|---|"]
    for key, name in ROWS:
        r = results[key]
        lines.append(f"| {name} | " + " | ".join("" if m in TEACHER_ONLY and key != "teacher" else _pct(r.get(m))
                                                 for m in METRICS) + " |")
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
        if key in ("teacher", BASELINE):
            cells += ["", "", ""]
        else:
            for m in ("mAP", "CF1", "OF1"):
                base = [100 * summaries[s]["results"][BASELINE][m] for s in seeds]
                d = paired_difference(vals[m], base)
                cells.append(f"{d.mean:+.1f}" if len(seeds) < 2 else f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


STAGE_TITLES = {"teacher": "teacher (WSDDN)", BASELINE: "student without KD"}


def _figures(run: Path, preset: Preset, data, results: dict, count: int = 4) -> None:
    """Training curves of every stage, precision-recall curves of the students, and the
    paper-style qualitative figure for a few test images."""
    from mlic.data import read_datalist
    from mlic.evaluation import load_scores
    from mlic.training.test import load_trained
    from mlic.visualization import plot_pr_curves, plot_qualitative, plot_training_curves

    figs = run / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    titles = dict(STAGE_TITLES, **{a.key: f"stage 2: {a.label}" for a in ARMS},
                  **{a.stage1_key: f"stage 1: {a.stage1}, {a.regions} regions" for a in ARMS if a.stage1_key})
    titles["pretrain"] = "ImageNet stand-in (batch-normalised, Adam; folded afterwards)"
    for job, title in titles.items():
        log = run / job / "log.csv"
        if log.is_file():
            cols = ["loss"] if job == "pretrain" else None
            plot_training_curves([log], figs / f"training_{job}.png", title=title, smooth=25, columns=cols)
    names = [line.strip() for line in Path(data.classes).read_text().splitlines() if line.strip()]
    for key, name in ROWS[1:]:
        sc = load_scores(run / key / "test_test" / "scores.csv")
        plot_pr_curves(sc.scores, sc.labels, figs / f"pr_{key}.png", class_names=names)
    kd = load_scores(run / RELEASED.key / "test_test" / "scores.csv")
    no = load_scores(run / BASELINE / "test_test" / "scores.csv")
    dl = read_datalist(data.test, att_num=preset.classes, bbox_num=preset.proposals, root_folder=data.root)
    task, meta = load_trained(str(run / "teacher" / "final.pt"))
    from mlic.data import BatchSpec, HumanAttDataConfig, HumanAttDataset
    from mlic.training.config import BGR_MEAN

    size = preset.teacher_size
    ds = HumanAttDataset(dl, HumanAttDataConfig(source=data.test, root_folder=data.root, batch_size=1, new_width=size,
                                                new_height=size, att_num=dl.att_num, bbox_num=dl.bbox_num,
                                                mean_values=BGR_MEAN, scale=preset.input_scale))
    for i in range(min(count, len(dl))):
        b = ds[BatchSpec((i,))]
        with torch.no_grad():
            _, region = task.predict(task.model, b)
        objectness = region[0].sum(1).numpy()  # detection-stream mass per region, summed over classes
        truth = ", ".join(n for n, y in zip(names, dl.labels[i]) if y)
        plot_qualitative(str(Path(data.root) / dl.paths[i]), b.boxes[0, :, :4].numpy(), objectness, names,
                         kd.scores[i], no.scores[i], dl.labels[i], figs / f"qualitative_{i}.png",
                         boxes_frame=(size, size), title=f"test image {i}: ground truth {truth}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder; each preset writes out/<preset>/seed<k>")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="sizes (default: demo)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds or ranges, e.g. 0-4 (default 0)")
    p.add_argument("--workers", type=int, default=2, help="stages run at once, one process each (default 2)")
    p.add_argument("--kernels", action="store_true", help="only check the ops against the reference")
    args = p.parse_args(argv)
    if args.kernels:
        return kernels_demo()
    from mlic.study.cli import parse_seeds

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
