"""Testing: `evaluate(cfg)` (per-image scores, SPEC section 6 metrics, pictures);
tools/test.py's flags map onto an EvalConfig in mlic.cli.test."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from mlic.caffe.student_export import build_student, student_export
from mlic.caffe.teacher import is_teacher_key
from mlic.caffe.weight_files import STUDENT_FORMAT, WeightFile, check_finite, state_dict_to_param_dict, torch_load
from mlic.caffe.weights import load_referenced_teacher
from mlic.data import BatchSpec, HumanAttDataConfig, HumanAttDataset, read_datalist
from mlic.data.annotations import read_ground_truth
from mlic.evaluation import evaluate_detection, evaluate_multilabel, save_scores, tie_warning, tied_fraction
from mlic.engine.progress import Progress
from mlic.errors import UserInputError
from mlic.training.config import BGR_MEAN, RELEASED_SCALES, EvalConfig
from mlic.training.tasks import Switches, build_task
from prototxt_ports import NetConfig

log = logging.getLogger("mlic.test")


def load_trained(weights: str, device: str = "cpu"):
    """(task, meta) from a checkpoint or final.pt written by tools/train.py."""
    path = Path(weights)
    if not path.is_file():
        raise UserInputError(f"--weights: {path} does not exist")
    state = torch_load(str(path), f"--weights {path}")
    if isinstance(state, dict) and state.get("format") == STUDENT_FORMAT:
        check_finite(state.get("params") or {}, f"--weights {path}")
        return _student_task(state, device)
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise UserInputError(f"--weights: {path} is not a checkpoint written by tools/train.py (no 'meta'/'model')")
    check_finite(state["model"], f"--weights {path}")
    meta = state["meta"]
    if meta.get("prototxt") or not meta.get("net"):
        # a Caffe net's run (--prototxt): its student, as the student export reads it
        wf = WeightFile(str(path), "checkpoint", state_dict_to_param_dict(state["model"], str(path)), meta)
        return _student_task(student_export(wf), device)
    net = dict(meta["net"])
    for k in ("body",):
        if k in net and isinstance(net[k], list):
            net[k] = tuple(net[k])
    cfg = NetConfig(**net)
    task = build_task(meta["stage"], cfg, Switches(**meta.get("switches", {})), device)
    missing, unexpected = task.model.load_state_dict(state["model"], strict=False)
    teacher_keys = [k for k in missing if is_teacher_key(k)]
    if unexpected or len(teacher_keys) != len(missing) or (teacher_keys and not meta.get("teacher")):
        raise UserInputError(f"--weights: {path} does not fit its own stage's net (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    if teacher_keys:  # a KD checkpoint that refers to its teacher
        try:
            init = load_referenced_teacher(task.model, meta["teacher"], str(path))
        except UserInputError as exc:
            log.warning("%s; only the student is loaded (all that testing uses)", exc)
        else:
            for line in init.lines():
                log.info("%s", line)
    task.model.eval()
    return task, meta


def _student_task(export: dict, device: str):
    model, info = build_student(export, device)
    task = build_task("student", info.cfg, device=device)
    task.model = model.set_memory_format("channels_last")
    return task, {"stage": "student", "net": asdict(info.cfg), "input_scale": info.scale,
                  "mean_values": info.mean_bgr, "class_names": info.class_names}


def _fixed_batches(dataset, batch_size: int, scale: float, mirror: bool):
    n = len(dataset)
    for s in range(0, n, batch_size):
        idx = tuple(range(s, min(n, s + batch_size)))
        yield dataset[BatchSpec(idx, scale=scale, mirror=(mirror,) * len(idx))]


def predict_dataset(task, dataset, batch_size: int, device: str, scales=(1.0,), mirror: bool = False,
                    progress: bool = False):
    """Image probabilities [I, C] averaged over the given scales (and their mirrored
    copies when `mirror`), and the single-scale region scores [I, B, C] (teacher) or None.
    `progress`: a bar on a terminal, a plain line now and then otherwise."""
    if task.predict is None:
        raise UserInputError(f"stage {task.stage} has no classifier to test (test the stage-2 or student weights)")
    views = [(s, False) for s in scales] + ([(s, True) for s in scales] if mirror else [])
    total, regions, labels = None, None, None
    bar = Progress(len(views) * len(dataset), desc=f"test ({len(views)} view{'s' if len(views) > 1 else ''})",
                   unit="image forwards", emit=log.info, enabled=progress)
    try:
        with torch.no_grad():
            for vi, (scale, flip) in enumerate(views):
                outs, regs, labs = [], [], []
                for batch in _fixed_batches(dataset, batch_size, scale, flip):
                    batch = batch.to(device)
                    s, r = task.predict(task.model, batch)
                    outs.append(s.float().cpu())
                    labs.append(batch.labels.float().cpu())
                    if r is not None and vi == 0:
                        regs.append(r.float().cpu())
                    bar.update(s.shape[0])
                scores = torch.cat(outs)
                total = scores if total is None else total + scores
                if vi == 0:
                    labels = torch.cat(labs)
                    regions = torch.cat(regs) if regs else None
    finally:
        bar.close()
    return (total / len(views)).numpy(), labels.numpy(), None if regions is None else regions.numpy()


def evaluate(cfg: EvalConfig) -> Dict[str, float]:
    """Test trained weights on a datalist; returns the metrics (also written to
    <out>/metrics.json with the per-image scores when cfg.out is set)."""
    cfg.validate()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    task, meta = load_trained(cfg.weights, device)
    net = meta["net"]
    class_names = read_class_names(cfg.class_names) if cfg.class_names else meta.get("class_names")
    dl = read_datalist(cfg.datalist, att_num=net["num_classes"], bbox_num=net["num_rois"],
                       root_folder=cfg.root_folder)
    size = net["input_size"]
    data_cfg = HumanAttDataConfig(source=cfg.datalist, root_folder=cfg.root_folder, batch_size=cfg.batch_size,
                                  new_width=size, new_height=size, att_num=dl.att_num, bbox_num=dl.bbox_num,
                                  mean_values=meta.get("mean_values", BGR_MEAN), scale=meta.get("input_scale", 1.0))
    dataset = HumanAttDataset(dl, data_cfg)
    # read before the forward passes, so that a bad file fails at once
    gt = read_ground_truth(cfg.gt, dl, (size, size), class_names, net["num_classes"]) if cfg.gt else None
    scales = RELEASED_SCALES if cfg.multiscale else (1.0,)
    scores, labels, regions = predict_dataset(task, dataset, cfg.batch_size, device, scales, cfg.multiscale,
                                              progress=cfg.progress)
    rep = evaluate_multilabel(scores, labels, class_names=class_names)
    warn = tie_warning(rep.tied_fraction)
    if warn:
        log.warning(warn)
    result = {"stage": meta["stage"], "images": int(scores.shape[0]),
              "test": "multi-scale + mirror" if cfg.multiscale else "single forward", **rep.to_dict()}
    print(f"== {meta['stage']} on {cfg.datalist} ({result['test']}, {scores.shape[0]} images)")
    print(rep.format_table(per_class=True))
    if regions is not None and gt is not None:
        gt_classes = gt.class_names
        warn = tie_warning(tied_fraction(regions, axis=1), "region scores")
        if warn:
            log.warning(warn)
        boxes = [dl.boxes[i][:, :4] for i in range(len(dl))] if hasattr(dl, "boxes") else None
        if boxes is None:
            boxes = [np.asarray(dataset.load_batch([i]).boxes[0, :, :4]) for i in range(len(dl))]
        det = evaluate_detection(list(regions), boxes, gt, class_names=class_names or gt_classes)
        result.update(det.to_dict())
        print(det.format_table(per_class=True))
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [dl.paths[i] for i in range(len(dl))] if hasattr(dl, "paths") else [str(i) for i in range(len(dl))]
        save_scores(out / "scores.csv", paths, scores, labels, class_names)
        (out / "metrics.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        if cfg.figures:
            from mlic.visualization import plot_pr_curves

            plot_pr_curves(scores, labels, out / "pr_curves.png", class_names=class_names)
        print(f"scores, metrics{' and figures' if cfg.figures else ''} written to {out}")
    return result


def read_class_names(path: str):
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"--class-names: cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
