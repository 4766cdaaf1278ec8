"""Where the embedded runs' time goes (bench/train_step.py --preset demo|large).

For each stage of a preset (the stand-in, the teacher, stage 1, stage 2, the student alone)
it runs the library's own training loop (mlic.training's Trainer, hooks and loader) on a
small synthetic set drawn at the preset's sizes, and reports per iteration the wall time
of each phase the Trainer measures (data, forward, backward, update, hooks); the variants
given with --formats run interleaved, so that their ratio is read within one stretch of a
shared machine's speed. --profile adds torch.profiler's table of one run per stage and
--startup the time a study job spends before its first iteration, against `import torch`.
--compile times each stage's step with its model under torch.compile against the same model
eager, interleaved, after a warm-up that compiles a graph for every input size it meets.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

STAGES = ("pretrain", "wsddn", "stage1", "stage2", "student")
PHASES = ("data", "forward", "backward", "update", "hooks")


def _data(preset, folder: Path):
    """A small set at the preset's sizes: training lines for the stages, and the stand-in's."""
    from mlic.data.synthetic import SyntheticConfig, generate_dataset
    from mlic.study.presets import PRETRAIN_SYNTHETIC

    n = 8 * preset.batch
    main = generate_dataset(str(folder / "data"), SyntheticConfig(
        num_train=n, num_test=0, bbox_num=preset.proposals, image_size=preset.teacher_size,
        num_classes=preset.classes, seed=0, **preset.synthetic))
    pre = generate_dataset(str(folder / "pretrain"), SyntheticConfig(
        num_train=4 * preset.pretrain_batch, num_test=0, image_size=preset.teacher_size, num_classes=preset.classes,
        seed=1, frame_width=preset.student_size, frame_height=preset.student_size, **PRETRAIN_SYNTHETIC))
    return main, pre


def _stage_trainer(preset, stage: str, files, out: Path, memory_format: str, iters: int):
    """The Trainer a study job of `stage` builds (no weights loaded: the time per step does
    not depend on them)."""
    from mlic.study.pipeline import SeedData, SeedPlan
    from mlic.training.tasks import Switches
    from mlic.training.train import build_model_and_data, build_solver, build_trainer

    data = SeedData(root=files["root_folder"], fit=files["train"], val=None, test=files["train"], gt_test="",
                    classes=files["classes"], pretrain="", pretrain_root="")
    plan = SeedPlan(preset, 0, out, data)
    cfg = plan.train_config(stage, preset.base_lr[stage], None, None, Switches(topk=preset.topk), iters=iters)
    cfg.out = str(out)
    cfg.run.memory_format = memory_format
    task, d, defaults = build_model_and_data(cfg, "cpu")
    solver, max_iter = build_solver(cfg.solver, task.model, defaults)
    return build_trainer(cfg, task, d, solver, max_iter, "cpu", out)


def _standin_trainer(preset, files, out: Path, memory_format: str, iters: int):
    from mlic.study.standin import standin_trainer

    net = preset.net_config().replace(num_classes=preset.classes, num_rois=4, input_size=preset.student_size)
    return standin_trainer(net, files["train"], files["root_folder"], out, iters=iters, batch=preset.pretrain_batch,
                           lr=preset.base_lr["pretrain"], seed=0, input_scale=preset.input_scale,
                           memory_format=memory_format)


def _trainer(preset, stage: str, files, pre_files, out: Path, memory_format: str, iters: int):
    """The stage's trainer: the stand-in's for "pretrain", a study job's otherwise."""
    if stage == "pretrain":
        return _standin_trainer(preset, pre_files, out, memory_format, iters)
    return _stage_trainer(preset, stage, files, out, memory_format, iters)


def time_stage(preset, stage: str, files, pre_files, memory_format: str, steps: int, warmup: int,
               folder: Path) -> Dict[str, float]:
    """Seconds per iteration of each phase over `steps` iterations after `warmup`."""
    out = Path(tempfile.mkdtemp(dir=folder))
    t = _trainer(preset, stage, files, pre_files, out, memory_format, warmup + steps)
    t.max_iter = warmup
    t.train()
    t.phase_seconds = dict.fromkeys(t.phase_seconds, 0.0)
    t.max_iter = warmup + steps
    t.train()
    per = {k: v / steps for k, v in t.phase_seconds.items()}
    per["step"] = sum(per.values())
    return per


def profile_stage(preset, stage: str, files, pre_files, memory_format: str, steps: int, folder: Path,
                  rows: int = 15) -> str:
    """torch.profiler's table (self CPU time) of `steps` iterations of the stage."""
    from torch.profiler import ProfilerActivity, profile

    out = Path(tempfile.mkdtemp(dir=folder))
    t = _trainer(preset, stage, files, pre_files, out, memory_format, steps + 2)
    t.max_iter = 2
    t.train()
    t.max_iter = steps + 2
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t.train()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def time_compiled(preset, stage: str, files, pre_files, memory_format: str, steps: int, repeats: int,
                  folder: Path) -> Dict[str, object]:
    """One trainer whose model runs eager and under torch.compile in turn (the same module, so
    the same parameters and solver): seconds per iteration of each, interleaved, and the
    wall time of the compiled warm-up, which runs until a stretch of steps compiles nothing."""
    import torch._dynamo

    torch._dynamo.reset()
    out = Path(tempfile.mkdtemp(dir=folder))
    t = _trainer(preset, stage, files, pre_files, out, memory_format, 10 ** 6)
    eager = t.model
    compiled = torch.compile(eager)
    done = 0

    def run(model, n: int) -> float:
        nonlocal done
        t.model = model
        done += n
        t.max_iter = done
        t0 = time.perf_counter()
        t.train()
        return (time.perf_counter() - t0) / n

    run(eager, 3)
    counters = torch._dynamo.utils.counters
    first = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    while True:  # every scale of the data layer is a new input size
        before = counters["stats"]["unique_graphs"]
        run(compiled, steps)
        if counters["stats"]["unique_graphs"] == before:
            break
    warmup_s = time.perf_counter() - t0
    times: Dict[str, List[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        times["eager"].append(run(eager, steps))
        times["compiled"].append(run(compiled, steps))
    return {"eager": _median_spread(times["eager"]), "compiled": _median_spread(times["compiled"]),
            "speed-up compiled over eager": _median_spread([a / b for a, b in zip(times["eager"], times["compiled"])]),
            "compiled warm-up s": warmup_s, "graphs": int(counters["stats"]["unique_graphs"] - first)}


def _job_spec(preset, files, folder: Path, memory_format: str) -> Path:
    """A study job of the teacher for one iteration, as tools/study.py writes it."""
    from dataclasses import asdict

    from mlic.study.jobs import Job
    from mlic.study.pipeline import SeedData, SeedPlan
    from mlic.training.tasks import Switches

    data = SeedData(root=files["root_folder"], fit=files["train"], val=None, test=files["train"], gt_test="",
                    classes=files["classes"], pretrain="", pretrain_root="")
    plan = SeedPlan(preset, 0, folder, data)
    cfg = plan.train_config("wsddn", preset.base_lr["wsddn"], None, None, Switches(), iters=1)
    cfg.run.memory_format = memory_format
    job = Job("startup/teacher", str(folder / "startup_job"), "train", cfg.to_dict(), [], {}, files["root_folder"], 1)
    spec = folder / "startup.job.json"
    spec.write_text(json.dumps(asdict(job)))
    return spec


def time_startup(spec: Path, repeats: int) -> Dict[str, List[float]]:
    """Wall seconds of `python -c "import torch"` and of a one-iteration study job,
    interleaved."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MLIC_NO_PROGRESS="1")
    out: Dict[str, List[float]] = {"import torch": [], "job": []}
    job_out = Path(json.loads(spec.read_text())["out"])
    for _ in range(repeats):
        for name, cmd in (("import torch", [sys.executable, "-c", "import torch"]),
                          ("job", [sys.executable, "-m", "mlic.study", "job", str(spec)])):
            if name == "job":
                job_out.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            out[name].append(time.perf_counter() - t0)
    return out


def layout_cost(preset, repeats: int = 30) -> Dict[str, float]:
    """What the channels_last layout costs inside the custom ops: the teacher's RoI pooling
    (forward and backward) at the preset's sizes on conv5 features in channels_last (on the
    CPU the forward reads them as they are; the backward's gradient is N x C x H x W) against
    the same features in N x C x H x W, interleaved; and a copy of the map from one layout to
    the other. Milliseconds, medians."""
    from mlic import ops

    cfg = preset.net_config()
    side = cfg.feature_size(preset.teacher_size)
    channels = int(cfg.body[-1].split(":")[1])
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(preset.batch, channels, side, side, generator=g)
    k = preset.batch * preset.proposals
    xy = torch.rand(k, 2, generator=g) * preset.teacher_size * 0.7
    wh = 8 + torch.rand(k, 2, generator=g) * preset.teacher_size * 0.3
    rois = torch.cat([torch.randint(0, preset.batch, (k, 1), generator=g).float(), xy, xy + wh,
                      torch.rand(k, 1, generator=g)], 1)
    times = {"contiguous": [], "channels_last": [], "copy": []}
    for _ in range(repeats):
        for name in ("contiguous", "channels_last"):
            fmt = torch.channels_last if name == "channels_last" else torch.contiguous_format
            f = feats.contiguous(memory_format=fmt).requires_grad_()
            t0 = time.perf_counter()
            out = ops.roi_pool(f, rois, cfg.pooled_size, cfg.pooled_size, cfg.spatial_scale)
            out.sum().backward()
            times[name].append(time.perf_counter() - t0)
        f = feats.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        f.contiguous()
        times["copy"].append(time.perf_counter() - t0)
    return {f"roi_pool fwd+bwd, {k} features": 1000 * statistics.median(v) for k, v in
            (("N x C x H x W", times["contiguous"]), ("channels_last", times["channels_last"]))} | {
        "copy of the feature map to N x C x H x W": 1000 * statistics.median(times["copy"]),
        "feature map": f"{preset.batch}x{channels}x{side}x{side}", "rois": k}


def _median_spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run(preset_name: str, formats: List[str], stages: List[str], steps: int, warmup: int, repeats: int,
        profile_steps: int, startup: int, threads: int, compile_steps: int = 0, log=print) -> dict:
    from mlic.study.presets import get_preset

    torch.set_num_threads(threads)
    os.environ["MLIC_NO_PROGRESS"] = "1"
    preset = get_preset(preset_name)
    result: dict = {"preset": preset_name, "threads": threads, "steps": steps, "warmup": warmup, "repeats": repeats,
                    "stages": {}, "profiles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files, pre_files = _data(preset, folder)
        for stage in stages:
            samples: Dict[str, List[Dict[str, float]]] = {f: [] for f in formats}
            for _ in range(repeats):  # interleaved: each repeat runs every format once
                for f in formats:
                    samples[f].append(time_stage(preset, stage, files, pre_files, f, steps, warmup, folder))
            row = {}
            for f in formats:
                row[f] = {k: _median_spread([s[k] for s in samples[f]]) for k in samples[f][0]}
            if len(formats) > 1:
                base = formats[0]
                for f in formats[1:]:
                    ratios = [a["step"] / b["step"] for a, b in zip(samples[base], samples[f])]
                    row[f"speed-up {f} over {base}"] = _median_spread(ratios)
            result["stages"][stage] = row
            log(format_stage(stage, row, formats))
            if compile_steps:
                c = time_compiled(preset, stage, files, pre_files, formats[-1], compile_steps, repeats, folder)
                result.setdefault("compile", {})[stage] = c
                log(f"torch.compile, {stage}, {formats[-1]}: eager {1000 * c['eager']['median']:.1f} ms, compiled "
                    f"{1000 * c['compiled']['median']:.1f} ms per iteration (speed-up "
                    f"{c['speed-up compiled over eager']['median']:.2f}x, range "
                    f"{c['speed-up compiled over eager']['min']:.2f}-{c['speed-up compiled over eager']['max']:.2f}); "
                    f"warm-up {c['compiled warm-up s']:.0f} s, {c['graphs']} graphs")
            if profile_steps:
                table = profile_stage(preset, stage, files, pre_files, formats[-1], profile_steps, folder)
                result["profiles"][stage] = table
                log(f"torch.profiler, {stage}, {formats[-1]}, {profile_steps} iterations:\n{table}")
        result["layout_cost_ms"] = layout_cost(preset)
        log(f"layout inside the custom ops (ms, medians): {result['layout_cost_ms']}")
        if startup:
            for f in formats[-1:]:
                times = time_startup(_job_spec(preset, files, folder, f), startup)
                step = result["stages"].get("wsddn", {}).get(f, {}).get("step", {}).get("median", 0.0)
                beyond = [j - i - step for j, i in zip(times["job"], times["import torch"])]
                result["startup"] = {"import torch": _median_spread(times["import torch"]),
                                     "job (one iteration)": _median_spread(times["job"]),
                                     "beyond import torch, less one step": _median_spread(beyond)}
                log(f"start-up ({f}): import torch {statistics.median(times['import torch']):.2f} s; a one-iteration "
                    f"teacher job {statistics.median(times['job']):.2f} s; beyond import torch and its one step "
                    f"{statistics.median(beyond):.2f} s (median of {startup}; range {min(beyond):.2f}-"
                    f"{max(beyond):.2f})")
    return result


def format_stage(stage: str, row: dict, formats: List[str]) -> str:
    lines = [f"{stage}: ms per iteration, median over repeats (" + ", ".join(PHASES) + ")"]
    for f in formats:
        r = row[f]
        parts = " ".join(f"{k} {1000 * r[k]['median']:6.1f}" for k in PHASES)
        lines.append(f"  {f:14s} step {1000 * r['step']['median']:7.1f} "
                     f"[{1000 * r['step']['min']:.1f}-{1000 * r['step']['max']:.1f}]  {parts}")
    for k, v in row.items():
        if k.startswith("speed-up"):
            lines.append(f"  {k}: {v['median']:.2f}x [{v['min']:.2f}-{v['max']:.2f}]")
    return "\n".join(lines)
