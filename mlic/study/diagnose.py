"""Why a distilled student ends where it does: measurements on a finished study's jobs.

- teacher drift: the teacher's weight norm and test mAP before and after each KD stage
  (under caffe-decay Caffe's weight decay shrinks it although it gets no gradient);
- soft targets: the teacher's image scores at the stage-2 temperature on the training
  images, by label, and how many are saturated;
- stage 2's dynamics from its log: the learnable soft scale, the two loss terms, their
  gradients at the student's fc8 and the cosine between them;
- stage 1: its loss, and how good the student's features are after it (a linear probe:
  logistic regression on fc7 fitted on the training images, mAP on the test images);
- budgets: iterations and images each student saw.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from mlic.study import names
from mlic.study.pipeline import BASELINE, PAPER_L2, RATE_ARMS, RELEASED, RELEASED_SOFT_SCALE, Arm, SeedData, prepare_data


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _net_config(meta: dict):
    from prototxt_ports import NetConfig

    net = dict(meta["net"])
    net["body"] = tuple(net["body"])
    if "multipliers" in net:
        net["multipliers"] = {k: tuple(tuple(x) for x in v) for k, v in net["multipliers"].items()}
    return NetConfig(**net)


def teacher_weights(state: dict) -> Dict[str, torch.Tensor]:
    """The teacher's parameters in KD names (conv_wsd_*, fc_wsd_*) from a WSDDN
    final.pt or a KD stage's; the temperature layers are left out."""
    from prototxt_ports.wsddn import wsddn_to_kd_name

    model = state["model"]
    if state["meta"]["stage"] == "wsddn":
        out = {}
        for k, v in model.items():
            layer, _, rest = k.partition(".")
            out[f"{wsddn_to_kd_name(layer)}.{rest}"] = v
        return out
    return {k[len("teacher."):]: v for k, v in model.items()
            if k.startswith("teacher.") and not k.startswith("teacher.temp_")}


def weight_norm(params: Dict[str, torch.Tensor]) -> float:
    """L2 norm over all weights (biases and the region sum left out)."""
    return float(torch.sqrt(sum((v.double() ** 2).sum() for k, v in params.items()
                                if k.endswith(".weight") and not k.startswith("image_level_score"))))


def _dataset(datalist: str, root: str, cfg, input_scale: float, batch: int = 16):
    from mlic.data import HumanAttDataConfig, HumanAttDataset, read_datalist
    from mlic.training.config import BGR_MEAN

    dl = read_datalist(datalist, att_num=cfg.num_classes, bbox_num=cfg.num_rois, root_folder=root)
    size = cfg.input_size
    return HumanAttDataset(dl, HumanAttDataConfig(source=datalist, root_folder=root, batch_size=batch,
                                                  new_width=size, new_height=size, att_num=dl.att_num,
                                                  bbox_num=dl.bbox_num, mean_values=BGR_MEAN, scale=input_scale))


def _batches(ds, batch: int = 16):
    """The dataset's batches at scale 1, unmirrored; read once per dataset and kept (the
    diagnosis runs many models over the same images)."""
    from mlic.data import BatchSpec

    cache = getattr(ds, "_diagnosis_batches", None)
    if cache is None:
        cache = [ds[BatchSpec(tuple(range(s, min(len(ds), s + batch))))] for s in range(0, len(ds), batch)]
        ds._diagnosis_batches = cache
    return cache


@torch.no_grad()
def teacher_scores(params: Dict[str, torch.Tensor], cfg, ds, temperature: float = 1.0):
    """(image scores [I, C], labels [I, C]) of a teacher with KD names, eval mode; the
    logits of both streams multiplied by `temperature` (2 in stage 2: T = 0.5)."""
    from prototxt_ports import WSDDN

    t = WSDDN(cfg, "kd", heads=True, temperature=temperature != 1.0).eval()
    if temperature != 1.0:
        t.temp_branch1_learn.weight.fill_(temperature)
        t.temp_branch2_learn.weight.fill_(temperature)
    missing, unexpected = t.load_state_dict(params, strict=False)
    missing = [k for k in missing if not k.startswith("temp_") and not k.startswith("image_level_score")]
    if missing or unexpected:
        raise ValueError(f"teacher weights do not fit: missing {missing}, unexpected {unexpected}")
    scores, labels = [], []
    for b in _batches(ds):
        scores.append(t(b.data, b.rois)["image_level_score"])
        labels.append(b.labels)
    return torch.cat(scores).numpy(), torch.cat(labels).numpy()


def _map(scores, labels) -> float:
    from mlic.evaluation import evaluate_multilabel

    return float(evaluate_multilabel(scores, labels).mAP)


@torch.no_grad()
def student_features(state: dict, cfg, ds) -> np.ndarray:
    """fc7 of the student (pool5 path, eval mode) on every image of `ds`."""
    from prototxt_ports import Student

    s = Student(cfg, head=False).eval()
    model = state["model"]
    own = {k[len("student."):]: v for k, v in model.items() if k.startswith("student.")} or dict(model)
    own = {k: v for k, v in own.items() if k.split(".")[0] in dict(s.named_children())}
    s.load_state_dict(own, strict=False)
    return torch.cat([s(b.data)["fc7"] for b in _batches(ds)]).numpy()


def linear_probe(train_x, train_y, test_x, test_y) -> float:
    """Test mAP of one logistic regression per class on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_x)
    a, b = sc.transform(train_x), sc.transform(test_x)
    scores = np.zeros(test_y.shape, np.float64)
    for c in range(train_y.shape[1]):
        if train_y[:, c].min() == train_y[:, c].max():
            scores[:, c] = train_y[0, c]
            continue
        clf = LogisticRegression(C=0.1, max_iter=2000).fit(a, train_y[:, c])
        scores[:, c] = clf.decision_function(b)
    return _map(scores, test_y)


def read_log(path: Path) -> Dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}


def diagnose_seed(folder: Path, data: SeedData, arms: Sequence[Arm]) -> dict:
    """Every measurement above for one seed's finished jobs (missing jobs are skipped)."""
    folder = Path(folder)
    teacher_state = _load(folder / "teacher" / "final.pt")
    cfg = _net_config(teacher_state["meta"])
    scale = teacher_state["meta"].get("input_scale", teacher_state["meta"].get("args", {}).get("input_scale", 1.0))
    test = _dataset(data.test, data.root, cfg, scale)
    fit = _dataset(data.fit, data.root, cfg, scale)
    t0 = teacher_weights(teacher_state)
    out: dict = {"teacher": {"weight_norm": weight_norm(t0),
                             "test_mAP": _map(*teacher_scores(t0, cfg, test))}}
    # soft targets on the training images at the stage-2 temperature (and without it)
    targets = {}
    for temp in (1.0, 2.0):
        s, y = teacher_scores(t0, cfg, fit, temp)
        pos, neg = s[y > 0.5], s[y < 0.5]
        targets[f"T={1 / temp:g}"] = {
            "saturated": float(((s < 0.01) | (s > 0.99)).mean()), "above_0.99": float((s > 0.99).mean()),
            "below_0.01": float((s < 0.01).mean()), "mean_positive": float(pos.mean()),
            "mean_negative": float(neg.mean()), "train_mAP": _map(s, y),
            "hist_positive": np.histogram(pos, 20, (0, 1))[0].tolist(),
            "hist_negative": np.histogram(neg, 20, (0, 1))[0].tolist()}
    out["soft_targets"] = targets
    # drift: the teacher inside each KD job's final weights
    drift = {}
    for job in sorted({a.stage1_key for a in arms if a.stage1_key} | {a.key for a in arms}):
        p = folder / job / "final.pt"
        if not p.is_file():
            continue
        params = teacher_weights(_load(p))
        common = {k: t0[k] for k in params if k in t0}  # the stage-1 teacher has no fc8 heads
        entry = {"weight_norm": weight_norm(params), "relative_norm": weight_norm(params) / weight_norm(common)}
        heads = {k: v for k, v in t0.items() if k.startswith("fc_wsd_8")}
        entry["test_mAP"] = _map(*teacher_scores({**heads, **params}, cfg, test))
        drift[job] = entry
    out["teacher_drift"] = drift
    # stage 1: loss and a linear probe of the student's features before and after it
    sub = fit
    y_fit = _labels(sub)
    y_test = _labels(test)
    body = _load(folder / "pretrain" / "body.pt")
    cfg_s = _net_config(teacher_state["meta"])
    probes = {"stand-in (before stage 1)": linear_probe(student_features(body, cfg_s, sub), y_fit,
                                                        student_features(body, cfg_s, test), y_test)}
    stage1 = {}
    for key in sorted({a.stage1_key for a in arms if a.stage1_key}):
        p = folder / key / "final.pt"
        if not p.is_file():
            continue
        st = _load(p)
        probes[key] = linear_probe(student_features(st, cfg_s, sub), y_fit, student_features(st, cfg_s, test), y_test)
        log = read_log(folder / key / "log.csv")
        stage1[key] = {"loss_first": float(np.nanmean(log["loss"][:20])), "loss_last": float(np.nanmean(log["loss"][-20:]))}
    for key in [a.key for a in arms] + [BASELINE]:
        p = folder / key / "final.pt"
        if p.is_file():
            st = _load(p)
            probes[key] = linear_probe(student_features(st, cfg_s, sub), y_fit, student_features(st, cfg_s, test),
                                       y_test)
    out["stage1"] = stage1
    out["linear_probe_mAP"] = probes
    # budgets
    budget = {}
    for key in [a.key for a in arms] + [BASELINE]:
        r = folder / key / "result.json"
        if not r.is_file():
            continue
        rc = json.loads(r.read_text())["config"]
        iters, batch = rc["solver"]["max_iter"], rc["data"]["batch_size"]
        arm = next((a for a in arms if a.key == key), None)
        s1 = 0
        if arm is not None and arm.stage1_key:
            s1 = json.loads((folder / arm.stage1_key / "result.json").read_text())["config"]["solver"]["max_iter"]
        budget[key] = {"iterations": iters + s1, "images": (iters + s1) * batch, "stage1_iterations": s1}
    out["budget"] = budget
    # the arms' stage 2, and those run at an untuned rate (tools/study.py --rate, in lr<rate>/)
    keys = [a.key for a in arms] + sorted(str(p.parent.relative_to(folder)) for p in folder.glob("lr*/kd-*/log.csv"))
    out["stage2"] = {k: stage2_log_summary(folder / k / "log.csv", cfg.num_classes) for k in keys
                     if (folder / k / "log.csv").is_file()}
    return out


def _labels(ds) -> np.ndarray:
    return np.asarray(ds.datalist.labels, np.float64)


def _smooth(y: np.ndarray, k: int = 25) -> np.ndarray:
    y = np.asarray(y, np.float64)
    if len(y) < k:
        return y
    c = np.cumsum(np.insert(np.nan_to_num(y), 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([np.full(k - 1, np.nan), out])


def plot_stage2(folders: Dict[int, Path], arms: Sequence[str], labels: Dict[str, str], path: Path) -> None:
    """Stage 2 of each arm, every seed: the soft scale (mean over classes), the label loss
    (chance: C ln 2), and the cosine between the two terms' gradients at fc8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    chance = None
    for i, arm in enumerate(arms):
        for j, (seed, folder) in enumerate(sorted(folders.items())):
            p = Path(folder) / arm / "log.csv"
            if not p.is_file():
                continue
            log = read_log(p)
            it = log["iter"]
            kw = dict(color=colors[i % len(colors)], lw=1.2, alpha=0.85, label=labels.get(arm, arm) if j == 0 else None)
            axes[0].plot(it, log["soft_scale"], **kw)
            axes[1].plot(it, _smooth(log["loss_sig"]), **kw)
            axes[2].plot(it, _smooth(log["grad_fc8_cos"]), **kw)
    for ax, title in zip(axes, ("learnable soft scale fc8_mscoco_soft (mean over classes; init 0.2)",
                                "label loss SigmoidCrossEntropy (running mean of 25)",
                                "cosine(grad of soft term, grad of label term) at fc8")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("stage-2 iteration")
        ax.grid(alpha=0.3)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[2].axhline(0, color="k", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_targets(diag: dict, path: Path) -> None:
    """Histograms of the teacher's image scores on the training images, by label, at the
    teacher's own temperature and at stage 2's (T = 0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = diag["soft_targets"]
    fig, axes = plt.subplots(1, len(t), figsize=(5.2 * len(t), 3.6), sharey=True)
    edges = np.linspace(0, 1, 21)
    for ax, (name, d) in zip(np.atleast_1d(axes), t.items()):
        for key, color, label in (("hist_negative", "tab:blue", "label 0"), ("hist_positive", "tab:orange", "label 1")):
            h = np.asarray(d[key], np.float64)
            ax.bar(edges[:-1], h / max(h.sum(), 1), width=0.05, align="edge", alpha=0.6, color=color, label=label)
        ax.set_title(f"teacher image scores, {name}: {100 * d['saturated']:.0f} % below 0.01 or above 0.99", fontsize=9)
        ax.set_xlabel("score (the soft target of stage 2)")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("share of (image, class) pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_diagnosis(preset, seeds: Sequence[int], out: str, arms: Sequence[Arm], log=print) -> dict:
    """diagnose_seed on every seed whose teacher exists, figures, and diagnosis.json in
    out/<preset>/diagnosis/."""
    root = Path(out) / preset.name
    dest = root / "diagnosis"
    dest.mkdir(parents=True, exist_ok=True)
    per_seed, folders = {}, {}
    for s in seeds:
        folder = root / f"seed{s}"
        if not (folder / "teacher" / "final.pt").is_file():
            log(f"[diagnose] seed {s}: no trained teacher in {folder}, skipped")
            continue
        data = prepare_data(preset, s, folder, log=log)
        log(f"[diagnose] seed {s}")
        per_seed[s] = diagnose_seed(folder, data, arms)
        folders[s] = folder
    if not per_seed:
        raise ValueError(f"nothing to diagnose in {root}: run the study first")
    (dest / "diagnosis.json").write_text(json.dumps(per_seed, indent=1, default=float) + "\n")
    first = min(per_seed)
    plot_targets(per_seed[first], dest / "soft_targets.png")
    shown = [a.key for a in (RELEASED_SOFT_SCALE, RELEASED, PAPER_L2) if a.key in {x.key for x in arms}]
    labels = {a.key: names.name(a.key) for a in arms}
    for rate in sorted({k.partition("/")[0] for d in per_seed.values() for k in d["stage2"] if "/" in k}):
        for a in RATE_ARMS:
            shown.append(f"{rate}/{a.key}")
            labels[shown[-1]] = names.name(shown[-1])
    plot_stage2(folders, shown, labels, dest / "stage2_dynamics.png")
    return per_seed


def stage2_log_summary(path: Path, classes: int) -> dict:
    """What a stage-2 log says about its run (see the module docstring)."""
    log = read_log(path)
    scale, cos, hard = log["soft_scale"], log["grad_fc8_cos"], log["grad_fc8_hard"]
    below = np.nonzero(scale < 0)[0]
    tail = slice(max(0, len(scale) - 100), None)
    return {"soft_scale_end": float(scale[-1]), "soft_scale_min_end": float(log["soft_scale_min"][-1]),
            "first_iter_scale_mean_below_0": int(log["iter"][below[0]]) if len(below) else None,
            "label_loss_end": float(np.nanmean(log["loss_sig"][tail])), "label_loss_chance": classes * float(np.log(2)),
            "share_dead_fc7_last100": float((hard[tail] == 0).mean()),
            "cosine_mean": float(np.nanmean(cos[hard > 0])) if (hard > 0).any() else float("nan"),
            "share_cosine_negative": float((cos[hard > 0] < 0).mean()) if (hard > 0).any() else float("nan")}


def _mean_sd(values) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return "n/a"
    return f"{v.mean():.3g}" if len(v) == 1 else f"{v.mean():.3g} ± {v.std(ddof=1):.2g}"


def summary_text(per_seed: Dict[int, dict]) -> str:
    """The measurements averaged over seeds (mean ± sd), one line each."""
    seeds = sorted(per_seed)
    d0 = per_seed[seeds[0]]
    lines = [f"Diagnosis over seeds {seeds} (mean ± sd over seeds):"]
    lines.append("teacher: test mAP " + _mean_sd([100 * per_seed[s]["teacher"]["test_mAP"] for s in seeds]))
    for t in d0["soft_targets"]:
        g = lambda k: [per_seed[s]["soft_targets"][t][k] for s in seeds]  # noqa: E731
        lines.append(f"soft targets on the training images at {t}: saturated (<0.01 or >0.99) "
                     f"{_mean_sd([100 * x for x in g('saturated')])} %, mean for label 1 {_mean_sd(g('mean_positive'))}, "
                     f"for label 0 {_mean_sd(g('mean_negative'))}, their mAP {_mean_sd([100 * x for x in g('train_mAP')])}")
    for job in sorted({j for s in seeds for j in per_seed[s]["teacher_drift"]}):
        e = [per_seed[s]["teacher_drift"][job] for s in seeds if job in per_seed[s]["teacher_drift"]]
        lines.append(f"teacher inside {job}: weight norm x{_mean_sd([x['relative_norm'] for x in e])} of the trained "
                     f"teacher's, its test mAP {_mean_sd([100 * x['test_mAP'] for x in e])}")
    for job in sorted({j for s in seeds for j in per_seed[s].get("stage2", {})}):
        e = [per_seed[s]["stage2"][job] for s in seeds if job in per_seed[s].get("stage2", {})]
        first = [x["first_iter_scale_mean_below_0"] for x in e]
        lines.append(f"{names.with_key(job)}: soft scale at the end {_mean_sd([x['soft_scale_end'] for x in e])} "
                     f"(its mean went below 0 in {sum(f is not None for f in first)} of {len(e)} runs); "
                     "label loss at the end "
                     f"{_mean_sd([x['label_loss_end'] for x in e])} (chance {e[0]['label_loss_chance']:.2f}); "
                     f"fc7 dead at the end in {sum(x['share_dead_fc7_last100'] > 0.9 for x in e)} of {len(e)} runs; "
                     f"gradient cosine soft vs label {_mean_sd([x['cosine_mean'] for x in e])}")
    for key in d0["linear_probe_mAP"]:
        lines.append(f"linear probe on fc7, {names.with_key(key)}: test mAP "
                     + _mean_sd([100 * per_seed[s]["linear_probe_mAP"][key] for s in seeds
                                 if key in per_seed[s]["linear_probe_mAP"]]))
    for key, b in d0["budget"].items():
        lines.append(f"budget of the {names.with_key(key)}: {b['iterations']} iterations "
                     f"({b['stage1_iterations']} in stage 1), {b['images']} images")
    return "\n".join(lines)
