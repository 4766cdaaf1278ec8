"""The embedded demo: the whole method on the synthetic benchmark, on a laptop CPU.

synthetic data -> WSDDN teacher -> KD stage 1 -> KD stage 2 -> no-KD student baseline ->
tests -> a results table (results.md / results.json) and figures. Every step is the
library's own training and testing code (tools/train.py, tools/test.py) at a small size.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

# Sizes: "full" is the README's demo (about 4 minutes a seed on 2 CPU cores); "smoke" checks
# the whole pipeline in well under a minute. No ImageNet weights exist here, so a
# "pretrain" step stands in for them: the 5-conv VGG-style body (the released layer names,
# conv1_1 ... conv5_1) learns single-object classification on separate synthetic images,
# and the teacher and both students start from it, as the paper's start from VGG16.
# From scratch, WSDDN does not leave chance level in minutes (nor in our tries).
PRESETS = {
    "full": dict(num_train=2400, num_test=300, num_classes=4, bbox_num=40, image_size=128, pretrain_images=3000,
                 pretrain_iters=2000, teacher_iters=1000, stage1_iters=500, stage2_iters=1000, student_iters=1000,
                 batch=8, eval_period=0),
    "smoke": dict(num_train=16, num_test=8, num_classes=4, bbox_num=12, image_size=128, pretrain_images=16,
                  pretrain_iters=2, teacher_iters=4, stage1_iters=2, stage2_iters=3, student_iters=3, batch=4,
                  eval_period=0),
}
# Dropout off and the heads at the body's learning rate: the released 10x head lr_mult
# suits fine-tuning from ImageNet, not these small nets (it leaves them at chance level).
NET = ["--input-size", "128", "--student-size", "64", "--pooled-size", "2", "--width", "1", "--fc-dim", "128",
       "--body", "conv1_1:16,pool1,conv2_1:32,pool2,conv3_1:64,pool3,conv4_1:64,pool4,conv5_1:128",
       "--input-scale", "0.015625", "--dropout", "0", "--lr-mult", "head=1"]
SOLVER = {  # base_lr per stage (Caffe SGD, momentum 0.9, weight decay 5e-4)
    "pretrain": "0.01", "wsddn": "0.01", "stage1": "0.0001", "stage2": "0.01", "stage2_l2": "0.01", "student": "0.01",
}
# The benchmark: 4 shape classes, 1-3 objects of 15-50 % of the image, a few distractors.
SYNTHETIC = dict(max_objects=3, min_object_frac=0.15, max_object_frac=0.5, num_distractors=(0, 2))
# The ImageNet stand-in: one larger object per image, read at the student's 64 x 64.
PRETRAIN = dict(max_objects=1, min_object_frac=0.3, max_object_frac=0.7, num_distractors=(0, 2), bbox_num=4,
                frame_width=64, frame_height=64)


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

    def report(name, ours, theirs):
        nonlocal failures
        err = (ours - theirs).abs().max().item()
        ok = err <= 1e-5 * (1 + theirs.abs().max().item())
        failures += not ok
        print(f"  {name:<28} max |ours - reference| = {err:.3g}  {'ok' if ok else 'MISMATCH'}")

    report("roi_pool 7x7 (200 RoIs)", ops.roi_pool(feats, rois, 7, 7, 1 / 16)[0], ref.roi_pool_ref(feats, rois, 7, 7, 1 / 16)[0])
    report("spp (3 levels, max)", ops.spp(feats, 3), ref.spp_ref(feats, 3))
    cls, det = torch.randn(2, 500, 80, device=device), torch.randn(2, 500, 80, device=device)
    report("wsddn_two_stream", ops.wsddn_two_stream(cls, det)[0], ref.wsddn_two_stream_ref(cls, det)[0])
    print("all ops agree with the reference" if not failures else f"{failures} op(s) disagree")
    return 1 if failures else 0


def _train(stage: str, run: Path, data: Dict[str, str], iters: int, batch: int, seed: int, extra: List[str],
           eval_period: int, quiet: bool, name: Optional[str] = None) -> Path:
    from mlic.training.train import main as train_main

    name = name or stage
    argv = ["--stage", stage, "--datalist", data["train"], "--test-datalist", data["test"], "--root-folder",
            data["root_folder"], "--out", str(run / name), "--max-iter", str(iters), "--batch-size", str(batch),
            "--base-lr", SOLVER[name], "--momentum", "0.9", "--weight-decay", "0.0005", "--seed", str(seed),
            "--checkpoint-period", str(max(iters, 1)), "--eval-period", str(eval_period), "--no-tensorboard",
            *NET, *extra] + (["--quiet"] if quiet else [])
    t0 = time.perf_counter()
    if train_main(argv) != 0:
        raise RuntimeError(f"[demo] {name}: training stopped (see the message above)")
    print(f"[demo] {name}: {iters} iterations in {time.perf_counter() - t0:.0f} s")
    return run / name / "final.pt"


def _test(weights: Path, data: Dict[str, str], out: Path, gt: Optional[str] = None, figures: bool = True) -> dict:
    from mlic.training.test import main as test_main

    argv = ["--weights", str(weights), "--datalist", data["test"], "--root-folder", data["root_folder"], "--out",
            str(out), "--class-names", data["classes"], "--batch-size", "16"] + (["--gt", gt] if gt else []) + (
        ["--figures"] if figures else [])
    if test_main(argv) != 0:
        raise RuntimeError(f"[demo] testing {weights} stopped (see the message above)")
    return json.loads((out / "metrics.json").read_text())


def run_demo(out: str = "demo_out", preset: str = "full", seed: int = 0, quiet: bool = False) -> dict:
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    run = Path(out) / f"seed{seed}"
    t0 = time.perf_counter()
    print(f"[demo] synthetic benchmark ({p['num_train']} train / {p['num_test']} test images, "
          f"{p['bbox_num']} proposals each) -> {run / 'data'}")
    data = generate_dataset(str(run / "data"), SyntheticConfig(
        num_train=p["num_train"], num_test=p["num_test"], bbox_num=p["bbox_num"], image_size=p["image_size"],
        num_classes=p["num_classes"], seed=seed, **SYNTHETIC), workers=2)
    pre_data = generate_dataset(str(run / "pretrain_data"), SyntheticConfig(
        num_train=p["pretrain_images"], num_test=max(8, p["pretrain_images"] // 10), image_size=p["image_size"],
        num_classes=p["num_classes"], seed=seed + 7919, **PRETRAIN), workers=2)
    torch.manual_seed(seed)
    ev = p["eval_period"]
    pre = _train("student", run, pre_data, p["pretrain_iters"], p["batch"], seed,
                 ["--input-size", str(PRETRAIN["frame_width"])], ev, quiet, name="pretrain")
    init = ["--weights", str(pre)]
    teacher = _train("wsddn", run, data, p["teacher_iters"], p["batch"], seed, init, ev, quiet)
    s1 = _train("stage1", run, data, p["stage1_iters"], p["batch"], seed, ["--teacher", str(teacher), *init], ev,
                quiet)
    s2 = _train("stage2", run, data, p["stage2_iters"], p["batch"], seed,
                ["--teacher", str(teacher), "--weights", str(s1)], ev, quiet)
    # the paper's prediction-level loss (SPEC section 8) from the same stage-1 student
    s2_l2 = _train("stage2", run, data, p["stage2_iters"], p["batch"], seed,
                   ["--teacher", str(teacher), "--weights", str(s1), "--kd-loss", "l2"], ev, quiet, name="stage2_l2")
    base = _train("student", run, data, p["student_iters"], p["batch"], seed, init, ev, quiet)

    results = {
        "teacher": _test(teacher, data, run / "test_teacher", gt=data["gt_test"]),
        "student_kd": _test(s2, data, run / "test_student_kd"),
        "student_kd_l2": _test(s2_l2, data, run / "test_student_kd_l2"),
        "student_no_kd": _test(base, data, run / "test_student_no_kd"),
    }
    _figures(run, data, results)
    table = format_table(results)
    print(table)
    (run / "results.md").write_text(table + "\n")
    summary = {k: {m: v for m, v in r.items() if not isinstance(v, (list, dict))} for k, r in results.items()}
    summary["seconds"] = time.perf_counter() - t0
    (run / "results.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print(f"[demo] done in {summary['seconds']:.0f} s; results in {run}")
    return summary


def format_table(results: dict) -> str:
    t, kd, kd2, no = results["teacher"], results["student_kd"], results["student_kd_l2"], results["student_no_kd"]

    def f(r, k):
        v = r.get(k)
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"

    rows = ["| model | mAP | CF1 | OF1 | CF1 top-3 | OF1 top-3 | CorLoc |", "|---|---|---|---|---|---|---|",
            f"| teacher (WSDDN) | {f(t, 'mAP')} | {f(t, 'CF1')} | {f(t, 'OF1')} | {f(t, 'CF1_top3')} | "
            f"{f(t, 'OF1_top3')} | {f(t, 'CorLoc')} |",
            f"| student with KD (released: soft CE) | {f(kd, 'mAP')} | {f(kd, 'CF1')} | {f(kd, 'OF1')} | "
            f"{f(kd, 'CF1_top3')} | {f(kd, 'OF1_top3')} | |",
            f"| student with KD (paper: L2) | {f(kd2, 'mAP')} | {f(kd2, 'CF1')} | {f(kd2, 'OF1')} | "
            f"{f(kd2, 'CF1_top3')} | {f(kd2, 'OF1_top3')} | |",
            f"| student without KD | {f(no, 'mAP')} | {f(no, 'CF1')} | {f(no, 'OF1')} | {f(no, 'CF1_top3')} | "
            f"{f(no, 'OF1_top3')} | |"]
    return "\n".join(rows)


def _figures(run: Path, data: Dict[str, str], results: dict, count: int = 4) -> None:
    """Training curves and the paper-style qualitative figure for a few test images."""
    from mlic.data import read_datalist
    from mlic.evaluation import load_scores
    from mlic.training.test import load_trained, predict_dataset
    from mlic.visualization import plot_qualitative, plot_training_curves

    figs = run / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    for stage in ("pretrain", "wsddn", "stage1", "stage2", "stage2_l2", "student"):
        log = run / stage / "log.csv"
        if log.exists():
            plot_training_curves([log], figs / f"training_{stage}.png")
    kd = load_scores(run / "test_student_kd" / "scores.csv")
    no = load_scores(run / "test_student_no_kd" / "scores.csv")
    names = [l.strip() for l in Path(data["classes"]).read_text().splitlines() if l.strip()]
    dl = read_datalist(data["test"], root_folder=data["root_folder"])
    task, meta = load_trained(str(run / "wsddn" / "final.pt"))
    from mlic.data import HumanAttDataConfig, HumanAttDataset
    from mlic.training.train import BGR_MEAN

    size = meta["net"]["input_size"]
    ds = HumanAttDataset(dl, HumanAttDataConfig(source=data["test"], root_folder=data["root_folder"], batch_size=1,
                                                new_width=size, new_height=size, att_num=dl.att_num,
                                                bbox_num=dl.bbox_num, mean_values=BGR_MEAN))
    for i in range(min(count, len(dl))):
        from mlic.data import BatchSpec

        b = ds[BatchSpec((i,))]
        with torch.no_grad():
            _, region = task.predict(task.model, b)
        objectness = region[0].sum(1).numpy()  # detection-stream mass per region, summed over classes
        boxes = b.boxes[0, :, :4].numpy()
        plot_qualitative(str(Path(data["root_folder"]) / dl.paths[i]), boxes, objectness, names, kd.scores[i],
                         no.scores[i], dl.labels[i], figs / f"qualitative_{i}.png", boxes_frame=(size, size))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds (the README's table uses 0,1,2)")
    p.add_argument("--kernels", action="store_true", help="only check the ops against the reference")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.kernels:
        return kernels_demo()
    summaries = {}
    for s in [int(x) for x in args.seeds.split(",")]:
        summaries[s] = run_demo(args.out, args.preset, s, args.quiet)
    if len(summaries) > 1:
        print(format_seeds(summaries))
        (Path(args.out) / "results_seeds.md").write_text(format_seeds(summaries) + "\n")
    return 0


def format_seeds(summaries: Dict[int, dict]) -> str:
    students = ("student_kd", "student_kd_l2", "student_no_kd")
    keys = [("teacher", "mAP"), ("teacher", "CorLoc")] + [(m, k) for k in ("mAP", "CF1", "OF1") for m in students]
    lines = ["| seed | " + " | ".join(f"{m} {k}" for m, k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for s, r in summaries.items():
        lines.append(f"| {s} | " + " | ".join(f"{100 * r[m].get(k, float('nan')):.1f}" for m, k in keys) + " |")
    arr = np.array([[r[m].get(k, np.nan) for m, k in keys] for r in summaries.values()]) * 100
    lines.append("| mean ± sd | " + " | ".join(f"{a:.1f} ± {b:.1f}" for a, b in zip(arr.mean(0), arr.std(0))) + " |")
    return "\n".join(lines)
