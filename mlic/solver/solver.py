"""A Caffe-style training driver: a solver.prototxt (or SolverParameter), a CaffeNet
train net and CaffeSGD, with iter_size accumulation and snapshot/restore.

Snapshots hold the net's parameters, the momentum history, the iteration counters and
the torch RNG state, so a restored run continues bit-identically on CPU.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch

from mlic.solver.sgd import CaffeSGD

Feed = Union[None, Dict[str, object], Callable[[], Dict[str, object]]]


class Solver:
    """Solver(solver_def, net=None, *, decay_without_grad=True, net_kwargs=None).

    `solver_def`: path, text or SolverParameter. `net`: a CaffeNet (default: built from
    the solver's net/train_net/net_param in phase TRAIN). ``step(n, feed)`` runs n
    iterations; `feed` gives the input blobs (a dict, a callable returning one per
    forward, or None when the net's data layers produce them).
    """

    def __init__(self, solver_def, net=None, *, decay_without_grad: bool = True, net_kwargs=None):
        from mlic.caffe.io import read_solver

        self.param, self.file = read_solver(solver_def)
        sp = self.param
        if sp.random_seed >= 0:
            torch.manual_seed(sp.random_seed)
        if net is None:
            net = self._build_net(net_kwargs or {})
        self.net = net
        self.optimizer = CaffeSGD.from_solver_param(sp, net.param_groups(), decay_without_grad=decay_without_grad)
        self.losses: List[float] = []

    def _build_net(self, kw):
        from mlic.caffe.net import CaffeNet

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

    @property
    def iter(self) -> int:
        return self.optimizer.iter

    def step(self, iters: int = 1, feed: Feed = None) -> List[float]:
        """Run `iters` iterations; returns each iteration's loss (objective averaged over
        iter_size forward passes, as Caffe reports it)."""
        out = []
        n = self.optimizer.iter_size
        for _ in range(iters):
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(n):
                blobs = feed() if callable(feed) else (feed or {})
                total += float(self.net.forward_backward(**blobs))
            self.optimizer.step()
            loss = total / n
            out.append(loss)
            self.losses.append(loss)
            sp = self.param
            if sp.snapshot > 0 and self.iter % sp.snapshot == 0 and sp.snapshot_prefix:
                self.snapshot()
        return out

    def snapshot(self, path: Optional[str] = None, caffemodel: bool = True) -> str:
        """Write ``<prefix>_iter_<N>.solverstate.pt`` (and the weights as
        ``<prefix>_iter_<N>.caffemodel``); returns the state file's path."""
        if path is None:
            prefix = self.param.snapshot_prefix or "snapshot"
            path = f"{prefix}_iter_{self.iter}.solverstate.pt"
        path = os.fspath(path)
        state = {
            "iter": self.iter,
            "net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "losses": list(self.losses),
        }
        torch.save(state, path)
        if caffemodel and hasattr(self.net, "layer_params"):
            from mlic.caffe.weights import save_caffemodel

            base = path[: -len(".solverstate.pt")] if path.endswith(".solverstate.pt") else path
            save_caffemodel(self.net, base + ".caffemodel")
        return path

    def restore(self, path: str) -> None:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.losses = list(state.get("losses", []))
