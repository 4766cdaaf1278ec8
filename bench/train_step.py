#!/usr/bin/env python
"""Training-step throughput of the WSDDN teacher and of KD stage 2 (not a test).

GPU (default when CUDA is available): the released config (VGG16, 672x672, batch 32,
500 RoIs; stage 2 batch 28), strict fp32 and TF32, GPU-only (batches resident on the
device) and with the data loader feeding synthetic images. Targets on one H100:
>= 50 img/s strict fp32, >= 150 img/s TF32, loader-included >= 90% of GPU-only.
CPU: a reduced config (--quick sizes) so it finishes in minutes on 2 cores.

--preset demo|large: the embedded runs instead (bench/embedded.py): each stage's
iteration on the library's training loop split into data, forward, backward, update and
hooks, the memory formats interleaved, torch.profiler's table per stage (--profile N) and
a study job's start-up (--startup N).

Writes JSON (device, versions, command, numbers) to bench/results/.
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import record  # noqa: E402  (bench/record.py, beside this file)

REPO = Path(__file__).resolve().parents[1]


def make_batch(n, size, num_rois, num_classes, device):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(n, 3, size, size, generator=g) * 50
    xy = torch.rand(n, num_rois, 2, generator=g) * (size - 32)
    wh = 16 + torch.rand(n, num_rois, 2, generator=g) * (size / 2)
    boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1), torch.rand(n, num_rois, 1, generator=g)], 2)
    labels = (torch.rand(n, num_classes, generator=g) < 0.1).float()
    label_roi = torch.cat([labels, boxes.reshape(n, -1)], 1)
    return data.to(device), label_roi.to(device)


def build(stage, cfg, device):
    from mlic.solver import CaffeSGD
    from mlic.training.tasks import build_task

    task = build_task(stage, cfg, device=device)
    opt = CaffeSGD(task.model.param_groups(), base_lr=1e-5, momentum=0.9, weight_decay=5e-4)
    return task, opt


class Batch:
    """A resident batch: the float data blob is made once on the device and kept."""

    def __init__(self, data, label_roi, att_num, bbox_num):
        from mlic.data import HumanAttBatch

        n, _, h, w = data.shape
        self.b = HumanAttBatch(pixels=torch.zeros(n, h, w, 3, dtype=torch.uint8, device=data.device),
                               label_roi=label_roi, att_num=att_num, bbox_num=bbox_num,
                               indices=torch.arange(n), mirrored=torch.zeros(n, dtype=torch.bool), _data=data)


def time_steps(task, opt, batches, steps, warmup, device):
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    it = iter(batches)
    for _ in range(warmup):
        opt.zero_grad()
        task.step(task.model, next(it))["loss"].backward()
        opt.step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        b = next(it)
        opt.zero_grad()
        task.step(task.model, b)["loss"].backward()
        opt.step()
        n += b.data.shape[0]
    sync()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return n / dt, peak


def loader_batches(tmp, cfg, batch, device, workers):
    from mlic.data import HumanAttDataConfig, build_loader
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    k = min(cfg.num_classes, 12)  # the generator's shape classes; the other labels are 0
    files = generate_dataset(str(tmp), SyntheticConfig(num_train=max(64, 2 * batch), num_test=0, bbox_num=cfg.num_rois,
                                                       num_classes=k, image_size=cfg.input_size))
    if k < cfg.num_classes:
        lines = Path(files["train"]).read_text().splitlines()
        pad = ["0"] * (cfg.num_classes - k)
        Path(files["train"]).write_text("".join(" ".join(f[: 1 + k] + pad + f[1 + k:]) + "\n"
                                                for f in (l.split() for l in lines)))
    dcfg = HumanAttDataConfig(source=files["train"], root_folder=files["root_folder"], batch_size=batch, shuffle=True,
                              new_width=cfg.input_size, new_height=cfg.input_size,
                              scale_factors=(0.714286, 0.857143, 1.0, 1.095239, 1.238096), mirror=True,
                              mean_values=(103.52, 116.28, 123.675), att_num=cfg.num_classes, bbox_num=cfg.num_rois)
    loader = build_loader(dcfg, num_workers=workers, pin_memory=device.startswith("cuda"), persistent_workers=workers > 0)
    for b in loader.iter_steps(0):
        yield b.to(device, non_blocking=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="reduced config (default on CPU)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=None)
    e = p.add_argument_group("embedded runs (--preset)")
    e.add_argument("--preset", choices=("demo", "large"), default=None,
                   help="time the embedded runs of this preset instead (CPU)")
    e.add_argument("--stages", default="pretrain,wsddn,stage1,stage2,student")
    e.add_argument("--formats", default="contiguous,channels_last",
                   help="memory formats, interleaved; ratios are against the first")
    e.add_argument("--repeats", type=int, default=3, help="runs per stage and format")
    e.add_argument("--warmup", type=int, default=3)
    e.add_argument("--profile", type=int, default=0, metavar="N", help="torch.profiler table over N iterations")
    e.add_argument("--startup", type=int, default=0, metavar="N", help="time a study job's start-up N times")
    e.add_argument("--threads", type=int, default=1, help="torch threads (a study job's: 1)")
    e.add_argument("--compile", type=int, default=0, metavar="N",
                   help="also time each stage's model under torch.compile against eager, N iterations a run")
    args = p.parse_args(argv)
    if args.preset:
        return embedded_main(args)
    from prototxt_ports import NetConfig

    cpu = args.device == "cpu"
    quick = args.quick or cpu
    if quick:
        cfg = NetConfig(num_classes=80, num_rois=100, input_size=224, student_size=96, pooled_size=3, width=0.25,
                        fc_dim=512)
        batches = {"wsddn": 2, "stage2": 2}
    else:
        cfg = NetConfig()
        batches = {"wsddn": 32, "stage2": 28}
    steps = args.steps or (10 if cpu else 20)
    workers = args.workers if args.workers is not None else (0 if cpu else 14)
    results = []
    modes = [("fp32", False)] + ([] if cpu else [("tf32", True)])
    for stage in ("wsddn", "stage2"):
        for mode, tf32 in modes:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            task, opt = build(stage, cfg, args.device)
            n = batches[stage]
            data, label_roi = make_batch(n, cfg.input_size, cfg.num_rois, cfg.num_classes, args.device)
            fixed = Batch(data, label_roi, cfg.num_classes, cfg.num_rois).b

            def forever():
                while True:
                    yield fixed

            rate, peak = time_steps(task, opt, forever(), steps, 1 if cpu else 3, args.device)
            row = {"stage": stage, "mode": mode, "batch": n, "gpu_only_img_per_s": rate, "peak_gib": peak}
            tmp = Path(tempfile.mkdtemp())
            try:
                rate_l, _ = time_steps(task, opt, loader_batches(tmp, cfg, n, args.device, workers), steps,
                                       1 if cpu else 3, args.device)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            row["with_loader_img_per_s"] = rate_l
            row["loader_ratio"] = rate_l / rate
            results.append(row)
            print(f"{stage:7s} {mode:5s} batch {n:3d}: {rate:8.2f} img/s model only, {rate_l:8.2f} img/s with loader "
                  f"({100 * rate_l / rate:.0f}%)" + (f", peak {peak:.1f} GiB" if peak else ""))
            del task, opt
    out = {"device": args.device, "config": "reduced" if quick else "released", "net": {k: str(v) for k, v in cfg.__dict__.items()},
           "workers": workers, "steps": steps, "results": results}
    if not cpu:
        t = {r["stage"] + "/" + r["mode"]: r for r in results}
        out["targets"] = {
            "wsddn fp32 >= 50 img/s": t["wsddn/fp32"]["gpu_only_img_per_s"] >= 50,
            "wsddn tf32 >= 150 img/s": t["wsddn/tf32"]["gpu_only_img_per_s"] >= 150,
            "loader >= 90% of GPU-only": all(r["loader_ratio"] >= 0.9 for r in results),
        }
        for k, v in out["targets"].items():
            print(f"{'PASS' if v else 'FAIL'}  {k}")
    record.write(out, args.out or record.RESULTS / f"train_step_{'cpu' if cpu else 'gpu'}.json")
    return 0


def embedded_main(args) -> int:
    sys.path.insert(0, str(REPO / "bench"))
    import embedded

    res = embedded.run(args.preset, args.formats.split(","), args.stages.split(","), args.steps or 20, args.warmup,
                       args.repeats, args.profile, args.startup, args.threads, args.compile)
    record.write(res, args.out or record.RESULTS / f"embedded_{args.preset}_cpu.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
