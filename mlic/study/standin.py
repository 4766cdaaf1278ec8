"""A stand-in for the ImageNet VGG16 weights the paper starts from.

The small conv body and fc6/fc7 (the released layer names) learn single-object
classification on separate synthetic images at the student's size. Without
normalisation such a body sits at the label prior for thousands of iterations (measured:
the loss stays at its prior value for 2,000 Caffe-SGD iterations, and for 1,200 Adam
iterations), so the stand-in is trained with batch normalisation after every conv and fc
layer and Adam, and the normalisation is then folded into the weights (exact at test
time). What comes out is a plain Caffe-style body that the ports load by name; its
classifier head is not kept, as fc8_mscoco is not part of VGG16.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mlic.ops.functional import caffe_interp, relu_max_pool
from mlic.training.config import BGR_MEAN, RELEASED_SCALES
from mlic.ops import geometry


def _pool(x):
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


class NormalizedBody(nn.Module):
    """The student's body, fc6 and fc7 with a BatchNorm after each, and a classifier."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleDict()
        self.plan = []
        ch = 3
        for layer in cfg.body_layers():
            if layer.kind == "conv":
                name = f"conv{layer.block}_{layer.index}"
                self.layers[name] = nn.Conv2d(ch, layer.channels, 3, padding=1)
                self.layers[name + "_bn"] = nn.BatchNorm2d(layer.channels)
                ch = layer.channels
                self.plan.append(name)
            else:
                self.plan.append("pool")
        side = geometry.pool_output_size(cfg.feature_size(cfg.student_size), 2, 2, 0, False)  # pool5
        self.layers["fc6"] = nn.Linear(ch * side * side, cfg.fc_width)
        self.layers["fc6_bn"] = nn.BatchNorm1d(cfg.fc_width)
        self.layers["fc7"] = nn.Linear(cfg.fc_width, cfg.fc_width)
        self.layers["fc7_bn"] = nn.BatchNorm1d(cfg.fc_width)
        self.head = nn.Linear(cfg.fc_width, cfg.num_classes)

    def forward(self, x):
        return self.head(self.features(x))

    def features(self, x):
        """fc7 after its ReLU (what the student's fc8 sees)."""
        plan = self.plan + ["pool"]  # pool5
        i = 0
        while i < len(plan):
            name = plan[i]
            if name == "pool":
                x = _pool(x)
            else:
                x = self.layers[name + "_bn"](self.layers[name](x))
                if plan[i + 1] == "pool":
                    x = relu_max_pool(x, _pool)
                    i += 1
                else:
                    x = F.relu_(x)  # in place: BatchNorm's backward needs its input, not its output
            i += 1
        x = x.flatten(1)
        for name in ("fc6", "fc7"):
            x = F.relu(self.layers[name + "_bn"](self.layers[name](x)))
        return x

    @torch.no_grad()
    def folded_state(self) -> Dict[str, torch.Tensor]:
        """Weights of the same function without normalisation (eval-mode statistics),
        by the released layer names: conv*_*, fc6, fc7."""
        out = {}
        for name, mod in self.layers.items():
            if name.endswith("_bn"):
                continue
            bn = self.layers[name + "_bn"]
            g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shape = (-1,) + (1,) * (mod.weight.dim() - 1)
            out[f"{name}.weight"] = (mod.weight * g.reshape(shape)).clone()
            out[f"{name}.bias"] = ((mod.bias - bn.running_mean) * g + bn.bias).clone()
        return out


def standin_trainer(cfg, datalist: str, root_folder: str, out: Path, iters: int, batch: int, lr: float, seed: int,
                    input_scale: float, memory_format: str = "channels_last", log: Callable[[str], None] = print,
                    checkpoint_period: int = 0, image_cache_mb: int = 1024):
    """The stand-in's training on the library's loop (mlic.engine.Trainer: log.csv, the
    divergence checks, checkpoints every `checkpoint_period` iterations): NormalizedBody and
    Adam on `datalist` (images at cfg.student_size), seeded with `seed`."""
    from mlic.data import HumanAttDataConfig, build_loader, read_datalist
    from mlic.engine import DivergenceWatch, MetricsWriter, PeriodicCheckpointer, Trainer
    from prototxt_ports.base import MEMORY_FORMATS

    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    fmt = MEMORY_FORMATS[memory_format]
    torch.manual_seed(seed)
    size = cfg.student_size
    dl = read_datalist(datalist, att_num=cfg.num_classes, root_folder=root_folder)
    data = HumanAttDataConfig(source=datalist, root_folder=root_folder, batch_size=batch, shuffle=True,
                              new_width=size, new_height=size, scale_factors=RELEASED_SCALES, att_num=dl.att_num,
                              bbox_num=dl.bbox_num, mirror=True, mean_values=BGR_MEAN, scale=input_scale)
    loader = build_loader(data, seed=seed, datalist=dl, image_cache_mb=image_cache_mb)
    model = NormalizedBody(cfg).train().to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)

    def step(m, b):
        # the student's resize (the data are drawn at 5 scales)
        x = caffe_interp(b.data, size, size).contiguous(memory_format=fmt)
        return {"loss": F.binary_cross_entropy_with_logits(m(x), b.labels.float(), reduction="sum") / x.shape[0]}

    hooks = [MetricsWriter(tensorboard=False, desc="stand-in"), DivergenceWatch(),
             PeriodicCheckpointer(checkpoint_period, keep=1)]
    return Trainer(model, opt, loader.iter_steps, step, iters, str(out), hooks=hooks, images_per_batch=batch, log=log)


def pretrain_standin(cfg, datalist: str, root_folder: str, out: Path, iters: int, batch: int, lr: float,
                     seed: int, input_scale: float, log: Callable[[str], None] = print,
                     threads: Optional[int] = None, memory_format: str = "channels_last") -> Path:
    """Trains the stand-in on `datalist` (images at cfg.student_size) and writes
    out/body.pt ({"model": folded weights}) and out/log.csv."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trainer = standin_trainer(cfg, datalist, root_folder, out, iters, batch, lr, seed, input_scale, memory_format,
                              log, checkpoint_period=max(1, iters // 2))
    trainer.train()
    log(f"[stand-in] {iters} iterations, loss {trainer.metrics.get('loss', float('nan')):.3f} "
        f"({time.perf_counter() - t0:.0f} s)")
    model = trainer.model.eval()
    path = out / "body.pt"
    torch.save({"model": {k: v.contiguous() for k, v in model.folded_state().items()},
                "meta": {"stage": "stand-in", "iterations": iters}}, path)
    return path
