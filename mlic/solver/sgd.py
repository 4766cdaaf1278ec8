"""Caffe's SGD solver (SPEC section 5) as a torch Optimizer.

Per step, for every parameter (group options ``lr_mult``, ``decay_mult``):

    diff = grad / iter_size                              (grads accumulated by the caller)
    diff += weight_decay * decay_mult * data             (L2; also where grad is None)
    history = momentum * history + rate * lr_mult * diff
    data -= history

The learning rate is inside the momentum history, unlike torch.optim.SGD. Arithmetic is
float32 in Caffe's order (scalars rounded to float32 as Caffe's float fields are).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch.optim import Optimizer

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _f32(x) -> float:
    return float(np.float32(x))


def check_lr_policy(policy: str, *, gamma=None, power=None, stepsize=None, stepvalue=(), max_iter=None) -> None:
    """Raise ValueError when `policy` lacks a parameter it needs (as Caffe would)."""
    if policy not in LR_POLICIES:
        raise ValueError(f"unknown lr_policy {policy!r}; supported: {', '.join(LR_POLICIES)}")
    need = {
        "step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
        "multistep": ("gamma",), "poly": ("power", "max_iter"), "sigmoid": ("gamma", "stepsize"),
    }.get(policy, ())
    given = dict(gamma=gamma, power=power, stepsize=stepsize, max_iter=max_iter)
    missing = [n for n in need if given[n] is None]
    if missing:
        raise ValueError(f"lr_policy {policy!r} needs {', '.join(missing)}")
    if policy == "step" and stepsize <= 0:
        raise ValueError(f"lr_policy 'step' needs a positive stepsize, got {stepsize}")
    if policy == "poly" and max_iter <= 0:
        raise ValueError(f"lr_policy 'poly' needs a positive max_iter, got {max_iter}")
    if policy == "multistep" and not len(stepvalue):
        raise ValueError("lr_policy 'multistep' needs at least one stepvalue")


def learning_rate(policy: str, it: int, base_lr: float, *, gamma=None, power=None, stepsize=None,
                  stepvalue: Sequence[int] = (), max_iter=None) -> float:
    """Caffe's rate at iteration `it` (float32-rounded). For multistep this counts the
    leading stepvalues <= it (Caffe's sequential counter gives the same for increasing
    stepvalues)."""
    check_lr_policy(policy, gamma=gamma, power=power, stepsize=stepsize, stepvalue=stepvalue, max_iter=max_iter)
    base = float(np.float32(base_lr))
    g = None if gamma is None else float(np.float32(gamma))
    pw = None if power is None else float(np.float32(power))
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * g ** (it // stepsize)
    elif policy == "exp":
        rate = base * g**it
    elif policy == "inv":
        rate = base * (1.0 + g * it) ** (-pw)
    elif policy == "multistep":
        k = 0
        while k < len(stepvalue) and it >= stepvalue[k]:
            k += 1
        rate = base * g**k
    elif policy == "poly":
        rate = base * (1.0 - it / max_iter) ** pw
    else:  # sigmoid
        rate = base * (1.0 / (1.0 + math.exp(-g * (it - stepsize))))
    return _f32(rate)


class CaffeSGD(Optimizer):
    """Caffe SGD. `params`: parameters or param groups; a group may set ``lr_mult`` and
    ``decay_mult`` (default: each parameter's own ``lr_mult``/``decay_mult`` attribute,
    as CaffeNet sets them, else 1).

    ``decay_without_grad``: Caffe applies weight decay (and the momentum history) to every
    learnable parameter, also one that received no gradient in the step (grad None).
    False leaves such parameters untouched (a frozen sub-network stays frozen).
    ``iter_size``: the caller accumulates that many backward passes per step; the
    gradients are divided by it.
    """

    def __init__(self, params, base_lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 lr_policy: str = "fixed", gamma: Optional[float] = None, power: Optional[float] = None,
                 stepsize: Optional[int] = None, stepvalue: Sequence[int] = (), max_iter: Optional[int] = None,
                 iter_size: int = 1, clip_gradients: float = -1.0, regularization_type: str = "L2",
                 decay_without_grad: bool = True):
        check_lr_policy(lr_policy, gamma=gamma, power=power, stepsize=stepsize, stepvalue=stepvalue,
                        max_iter=max_iter)
        if iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}")
        if regularization_type not in ("L1", "L2"):
            raise ValueError(f"regularization_type must be 'L1' or 'L2', got {regularization_type!r}")
        for name, value in (("base_lr", base_lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            try:
                ok = math.isfinite(float(value)) and float(value) >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{name} must be a finite non-negative number, got {value}")
        groups = self._expand(params)
        super().__init__(groups, dict(lr_mult=1.0, decay_mult=1.0))
        self.base_lr = base_lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_policy = lr_policy
        self.gamma, self.power, self.stepsize = gamma, power, stepsize
        self.stepvalue = [int(v) for v in stepvalue]
        self.max_iter = max_iter
        self.iter_size = int(iter_size)
        self.clip_gradients = clip_gradients
        self.regularization_type = regularization_type
        self.decay_without_grad = decay_without_grad
        self.iter = 0
        self.current_step = 0

    @staticmethod
    def _expand(params):
        params = list(params)
        if not params:
            raise ValueError("CaffeSGD got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        out = []
        for g in params:
            ps = g["params"]
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            if "lr_mult" in g and "decay_mult" in g:
                out.append(dict(g, params=ps))
                continue
            # split by each parameter's own multipliers
            buckets = {}
            for p in ps:
                lr = g.get("lr_mult", getattr(p, "lr_mult", 1.0))
                dm = g.get("decay_mult", getattr(p, "decay_mult", 1.0))
                buckets.setdefault((float(lr), float(dm)), []).append(p)
            for (lr, dm), bps in buckets.items():
                out.append(dict(g, params=bps, lr_mult=lr, decay_mult=dm))
        return out

    @classmethod
    def from_solver_param(cls, sp, params, decay_without_grad: bool = True) -> "CaffeSGD":
        """From a SolverParameter (mlic.caffe.proto) and parameters/groups."""
        if sp.type not in ("SGD", "") or (sp.HasField("solver_type") and sp.solver_type != 0):
            raise ValueError(f"only the SGD solver is supported, got type {sp.type!r}")
        if not sp.HasField("base_lr"):
            raise ValueError("solver: base_lr is required")
        if not sp.HasField("lr_policy"):
            raise ValueError("solver: lr_policy is required")
        return cls(
            params, base_lr=sp.base_lr, momentum=sp.momentum, weight_decay=sp.weight_decay,
            lr_policy=sp.lr_policy,
            gamma=sp.gamma if sp.HasField("gamma") else None,
            power=sp.power if sp.HasField("power") else None,
            stepsize=sp.stepsize if sp.HasField("stepsize") else None,
            stepvalue=list(sp.stepvalue),
            max_iter=sp.max_iter if sp.HasField("max_iter") else None,
            iter_size=sp.iter_size, clip_gradients=sp.clip_gradients,
            regularization_type=sp.regularization_type, decay_without_grad=decay_without_grad,
        )

    def get_lr(self, it: Optional[int] = None) -> float:
        """The rate at iteration `it` (default: the coming step)."""
        it = self.iter if it is None else it
        return learning_rate(self.lr_policy, it, self.base_lr, gamma=self.gamma, power=self.power,
                             stepsize=self.stepsize, stepvalue=self.stepvalue, max_iter=self.max_iter)

    def _rate(self) -> float:
        # Caffe's multistep counter advances at most one step per call
        if self.lr_policy == "multistep":
            if self.current_step < len(self.stepvalue) and self.iter >= self.stepvalue[self.current_step]:
                self.current_step += 1
            base, g = float(np.float32(self.base_lr)), float(np.float32(self.gamma))
            return _f32(base * g**self.current_step)
        if self.lr_policy == "step":
            self.current_step = self.iter // self.stepsize
        return self.get_lr()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rate = self._rate()
        momentum = _f32(self.momentum)
        clip_scale = None
        if self.clip_gradients >= 0:
            sumsq = 0.0
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        sumsq += float(p.grad.double().pow(2).sum())  # before the iter_size division
            norm = math.sqrt(sumsq)
            if norm > self.clip_gradients:
                clip_scale = _f32(self.clip_gradients / norm)
        norm_scale = _f32(1.0 / self.iter_size)
        for group in self.param_groups:
            lr_mult, decay_mult = float(group["lr_mult"]), float(group["decay_mult"])
            # float products as Caffe's: an overflow is inf, and the update's non-finite check reports it
            with np.errstate(over="ignore"):
                local_rate = _f32(np.float32(rate) * np.float32(lr_mult))
                local_decay = _f32(np.float32(self.weight_decay) * np.float32(decay_mult))
            for p in group["params"]:
                state = self.state[p]
                if p.grad is None:
                    if not self.decay_without_grad:
                        continue
                    if lr_mult == 0 and "history" not in state:
                        continue  # nothing would change
                    d = torch.zeros_like(p)
                else:
                    d = p.grad.detach().clone()
                if clip_scale is not None:
                    d.mul_(clip_scale)
                if self.iter_size > 1:
                    d.mul_(norm_scale)
                if local_decay:
                    if self.regularization_type == "L2":
                        d.add_(p, alpha=local_decay)
                    else:
                        d.add_(torch.sign(p), alpha=local_decay)
                h = state.get("history")
                if h is None:
                    h = state["history"] = torch.zeros_like(p)
                h.mul_(momentum).add_(d, alpha=local_rate)
                p.sub_(h)
        self.iter += 1
        return loss

    def state_dict(self):
        sd = super().state_dict()
        sd["caffe"] = {"iter": self.iter, "current_step": self.current_step}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        caffe = state_dict.pop("caffe", None)
        super().load_state_dict(state_dict)
        if caffe is not None:
            self.iter = int(caffe["iter"])
            self.current_step = int(caffe["current_step"])
