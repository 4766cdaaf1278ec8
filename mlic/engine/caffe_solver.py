"""Caffe's Solver (a solver.prototxt, a CaffeNet and Caffe SGD) run by the engine's
training loop, so that it shares the loop's iter_size accumulation, its checks and its
checkpoints (atomic, every RNG stream) with tools/train.py."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch

from mlic.caffe.io import read_solver
from mlic.caffe.net import CaffeNet
from mlic.caffe.weight_files import save_caffemodel
from mlic.engine.checkpoint import atomic_save, load_checkpoint
from mlic.engine.hooks import HookBase
from mlic.engine.trainer import Trainer
from mlic.solver import CaffeSGD

Feed = Union[None, Dict[str, object], Callable[[], Dict[str, object]]]


def _caffe_step(net, blobs):
    net(**blobs)
    if net.objective is None:
        raise RuntimeError(f"{net.file or '<net>'}: this net has no loss layer (phase {net.phase})")
    return {"loss": net.objective}


class _Record(HookBase):
    """Each iteration's loss, and Caffe's periodic snapshots."""

    def __init__(self, solver: "Solver"):
        self.solver = solver

    def after_step(self):
        s = self.solver
        s.losses.append(float(self.trainer.metrics["loss"]))
        sp = s.param
        if sp.snapshot > 0 and sp.snapshot_prefix and s.iter % sp.snapshot == 0:
            s.snapshot()


class Solver:
    """Solver(solver_def, net=None, *, decay_without_grad=True, net_kwargs=None).

    `solver_def`: path, text or SolverParameter. `net`: a CaffeNet (default: built from
    the solver's net/train_net/net_param in phase TRAIN). ``step(n, feed)`` runs n
    iterations; `feed` gives the input blobs (a dict, a callable returning one per
    forward, or None when the net's data layers produce them).
    """

    def __init__(self, solver_def, net=None, *, decay_without_grad: bool = True, net_kwargs=None):
        self.param, self.file = read_solver(solver_def)
        if self.param.random_seed >= 0:
            torch.manual_seed(self.param.random_seed)
        self.net = net if net is not None else self._build_net(net_kwargs or {})
        self.optimizer = CaffeSGD.from_solver_param(self.param, self.net.param_groups(),
                                                    decay_without_grad=decay_without_grad)
        self.losses: List[float] = []
        self._feed: Feed = None
        self.trainer = Trainer(self.net, self.optimizer, self._batches, _caffe_step, max_iter=0, out_dir=None,
                               iter_size=self.optimizer.iter_size, hooks=[_Record(self)], log=lambda msg: None)

    def _build_net(self, kw) -> CaffeNet:
        sp = self.param
        if sp.HasField("net_param") or sp.HasField("train_net_param"):
            src = sp.train_net_param if sp.HasField("train_net_param") else sp.net_param
        elif sp.train_net or sp.net:
            src = Path(sp.train_net or sp.net)
            if not src.is_absolute() and not src.exists() and self.file is not None:
                src = Path(self.file).parent / src
        else:
            raise ValueError(f"{self.file or '<solver>'}: no net given (net, train_net, net_param or train_net_param)")
        stages = list(sp.train_state.stage) if sp.HasField("train_state") else None
        level = sp.train_state.level if sp.HasField("train_state") else None
        return CaffeNet(src, "TRAIN", level=level, stages=stages, **kw)

    def _batches(self, start):
        while True:  # the current feed, read at each forward
            feed = self._feed
            yield feed() if callable(feed) else (feed or {})

    @property
    def iter(self) -> int:
        return self.optimizer.iter

    def step(self, iters: int = 1, feed: Feed = None) -> List[float]:
        """Run `iters` iterations; returns each iteration's loss (objective averaged over
        iter_size forward passes, as Caffe reports it)."""
        self._feed = feed
        start = len(self.losses)
        self.trainer.max_iter = self.trainer.iter + iters
        self.trainer.train()
        return self.losses[start:]

    def snapshot(self, path: Optional[str] = None, caffemodel: bool = True) -> str:
        """Write ``<prefix>_iter_<N>.solverstate.pt`` (the loop's checkpoint: net, solver
        history, iteration, RNG streams) and the weights as ``<prefix>_iter_<N>.caffemodel``;
        returns the state file's path."""
        if path is None:
            prefix = self.param.snapshot_prefix or "snapshot"
            path = f"{prefix}_iter_{self.iter}.solverstate.pt"
        path = os.fspath(path)
        self.trainer.meta["losses"] = list(self.losses)
        atomic_save(self.trainer.state_dict(), path)
        if caffemodel:
            base = path[: -len(".solverstate.pt")] if path.endswith(".solverstate.pt") else path
            save_caffemodel(self.net, base + ".caffemodel")
        return path

    def restore(self, path: str) -> None:
        state = load_checkpoint(path)
        self.trainer.load_state_dict(state)
        self.losses = list(state.get("meta", {}).get("losses", []))
