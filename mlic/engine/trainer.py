"""A hook-based training loop with Caffe's iteration semantics.

One iteration = `iter_size` forward/backward passes whose gradients accumulate, then
(across ranks) averaged, then one solver update: Caffe's Solver::Step. The whole state
(model, solver history, iteration, RNG streams) is checkpointed so that a resumed run
continues exactly where the interrupted one stopped (bit-identical on CPU).
"""
import random
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
from torch import nn

from mlic.engine import distributed as D
from mlic.engine.hooks import HookBase


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """
    model:      nn.Module
    solver:     object with zero_grad(), step(), state_dict(), load_state_dict(), and
                get_lr() (the coming step's rate) or a step() returning it; the solver
                divides the accumulated gradients by iter_size (as CaffeSGD does)
    batches:    callable(start) -> iterator of batches, `start` = number of batches already consumed
    step_fn:    callable(model, batch) -> dict of scalar tensors; "loss" is the objective to minimise
    """

    def __init__(self, model: nn.Module, solver, batches: Callable[[int], Iterator], step_fn: Callable,
                 max_iter: int, out_dir: Optional[str], iter_size: int = 1, hooks: Iterable[HookBase] = (),
                 images_per_batch: int = 1, log: Callable[[str], None] = print, amp: bool = False,
                 device: str = "cpu", meta: Optional[dict] = None):
        if iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}")
        if max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {max_iter}")
        self.model, self.solver, self._batches, self.step_fn = model, solver, batches, step_fn
        self.max_iter, self.out_dir, self.iter_size = max_iter, out_dir, iter_size
        self.images_per_batch, self._log, self.amp, self.device = images_per_batch, log, amp, device
        self.meta = meta or {}
        self.iter = 0
        self.completed = False
        self.metrics: Dict[str, float] = {}
        self.hooks: List[HookBase] = []
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)
        self._iter: Optional[Iterator] = None

    def log(self, msg: str) -> None:
        if D.is_main():
            self._log(msg)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"iter": self.iter, "model": self.model.state_dict(), "solver": self.solver.state_dict(),
                "rng": rng_state(), "meta": self.meta}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.solver.load_state_dict(state["solver"])
        self.iter = int(state["iter"])
        set_rng_state(state["rng"])
        self._iter = None

    # ------------------------------------------------------------------ loop
    def _next_batch(self):
        # Fetching never touches the global RNG (a DataLoader draws a seed from it whenever
        # it starts an iterator), so the model's random stream - dropout - is the same
        # whether the run was resumed or not.
        with torch.random.fork_rng(devices=[]):
            if self._iter is None:
                self._iter = iter(self._batches(self.iter * self.iter_size))
            return next(self._iter)

    def run_step(self) -> None:
        self.model.train()
        self.solver.zero_grad()
        t0 = time.perf_counter()
        sums: Dict[str, float] = {}
        for _ in range(self.iter_size):
            batch = self._next_batch()
            with torch.autocast(device_type=self.device.split(":")[0], enabled=self.amp):
                out = self.step_fn(self.model, batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {self.iter}; stopping "
                                         f"(the last checkpoint in {self.out_dir} is intact)")
            loss.backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        # Caffe: accumulate, average over ranks, then the solver divides by iter_size.
        D.average_gradients([p for p in self.model.parameters() if p.requires_grad])
        get_lr = getattr(self.solver, "get_lr", None)
        lr = get_lr() if get_lr is not None else None
        ret = self.solver.step()
        lr = ret if lr is None else lr
        dt = time.perf_counter() - t0
        self.metrics = {k: v / self.iter_size for k, v in sums.items()}
        self.metrics["lr"] = float(lr if lr is not None else getattr(self.solver, "lr", float("nan")))
        self.metrics["img_per_s"] = self.images_per_batch * self.iter_size * D.world_size() / max(dt, 1e-9)

    def train(self) -> None:
        for h in self.hooks:
            h.before_train()
        try:
            while self.iter < self.max_iter:
                for h in self.hooks:
                    h.before_step()
                self.run_step()
                self.iter += 1
                for h in self.hooks:
                    h.after_step()
            self.completed = True
        finally:
            for h in self.hooks:
                h.after_train()
