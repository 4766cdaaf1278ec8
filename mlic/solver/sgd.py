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
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

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
    if policy == "sigmoid" and stepsize < 0:
        raise ValueError(f"lr_policy 'sigmoid' needs a stepsize >= 0, got {stepsize}")
    if policy == "poly" and max_iter <= 0:
        raise ValueError(f"lr_policy 'poly' needs a positive max_iter, got {max_iter}")
    if policy == "multistep" and not len(stepvalue):
        raise ValueError("lr_policy 'multistep' needs at least one stepvalue")
    # a negative gamma or power would make the rate negative, alternate or grow without bound;
    # sigmoid's gamma only sets the direction of its ramp
    for name in need:
        value = given[name]
        if name in ("gamma", "power") and not _finite(value, policy == "sigmoid"):
            raise ValueError(f"{name} must be a finite number{'' if policy == 'sigmoid' else ' >= 0'} for "
                             f"lr_policy {policy!r}, got {_shown(value)}")


def _shown(value) -> str:
    """A float as the float32 Caffe keeps (a solver file's -0.1 is not -0.10000000149)."""
    return str(np.float32(value)) if isinstance(value, float) else str(value)


def _finite(value, negative_ok: bool = False) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and (negative_ok or v >= 0)


def multistep_iterations(stepvalue: Sequence[int]) -> List[int]:
    """The iterations at which Caffe's multistep counter takes each step: the first at which
    the counter has reached it and the iteration is at least its value (multistep_count)."""
    out: List[int] = []
    for v in stepvalue:
        out.append(max(int(v), out[-1] + 1 if out else 0))
    return out


def stepvalue_warning(stepvalue: Sequence[int]) -> Optional[str]:
    """What Caffe does with step values that do not increase, or None when they do."""
    k = next((k for k in range(1, len(stepvalue)) if stepvalue[k] <= stepvalue[k - 1]), None)
    if k is None:
        return None
    at = multistep_iterations(stepvalue)
    return (f"stepvalue {stepvalue[k]} follows {stepvalue[k - 1]} and does not increase: Caffe takes the steps in "
            f"the order given, at most one per iteration, so the rate drops at iterations "
            f"{', '.join(map(str, at))} (the step values are {', '.join(map(str, stepvalue))})")


def multistep_count(stepvalue: Sequence[int], it: int, current: int = 0) -> int:
    """How many steps Caffe's multistep counter has taken at iteration `it`, walking from
    `current` as Caffe's solver does: at most one step per iteration, so step values that
    do not increase are passed one iteration each."""
    return current + 1 if current < len(stepvalue) and it >= stepvalue[current] else current


def learning_rate(policy: str, it: int, base_lr: float, *, gamma=None, power=None, stepsize=None,
                  stepvalue: Sequence[int] = (), max_iter=None, multistep: Optional[int] = None) -> float:
    """Caffe's rate at iteration `it` (float32-rounded). multistep: the multistep counter's
    value at `it` (default: as a run from iteration 0 reaches it, multistep_count applied
    once per iteration)."""
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
        if multistep is None:
            multistep = 0
            for i in range(it + 1):
                multistep = multistep_count(stepvalue, i, multistep)
        rate = base * g**multistep
    elif policy == "poly":
        rate = base * (1.0 - it / max_iter) ** pw
    else:  # sigmoid
        rate = base * (1.0 / (1.0 + math.exp(-g * (it - stepsize))))
    return _f32(rate)


class CaffeSGD:
    """Caffe SGD. `params`: parameters or param groups; a group may set ``lr_mult`` and
    ``decay_mult`` (default: each parameter's own ``lr_mult``/``decay_mult`` attribute,
    as CaffeNet sets them, else 1).

    ``decay_without_grad``: Caffe applies weight decay (and the momentum history) to every
    learnable parameter, also one that received no gradient in the step (grad None).
    False leaves such parameters untouched (a frozen sub-network stays frozen).
    ``iter_size``: the caller accumulates that many backward passes per step; the
    gradients are divided by it.

    The interface is torch.optim.Optimizer's (param_groups, state, zero_grad, step,
    state_dict and load_state_dict, in its format) without deriving from it: torch's base
    class imports the compiler stack (torch._dynamo, seconds) on first use, which a
    training job never needs. The parameters that share a rate and a decay are updated
    together by torch's _foreach ops, each with the same per-element arithmetic as a
    parameter at a time.
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
            if not _finite(value):
                raise ValueError(f"{name} must be a finite non-negative number, got {_shown(value)}")
        if max_iter is not None and max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {max_iter}")
        self.defaults = dict(lr_mult=1.0, decay_mult=1.0)
        self.param_groups: List[dict] = self._expand(params)
        seen = set()
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one group")
                seen.add(id(p))
        self.state: Dict[torch.Tensor, dict] = defaultdict(dict)
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

    def _expand(self, params) -> List[dict]:
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
                out.append(dict(self.defaults, **dict(g, params=ps)))
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

    def _counter(self) -> int:
        """The multistep counter as the coming step will have advanced it."""
        return multistep_count(self.stepvalue, self.iter, self.current_step)

    def get_lr(self, it: Optional[int] = None) -> float:
        """The rate at iteration `it` (default: the rate the coming step applies)."""
        if it is None or it == self.iter:
            it, counter = self.iter, self._counter() if self.lr_policy == "multistep" else None
        else:
            counter = None
        return learning_rate(self.lr_policy, it, self.base_lr, gamma=self.gamma, power=self.power,
                             stepsize=self.stepsize, stepvalue=self.stepvalue, max_iter=self.max_iter,
                             multistep=counter)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rate = self.get_lr()
        if self.lr_policy == "multistep":
            self.current_step = self._counter()
        elif self.lr_policy == "step":
            self.current_step = self.iter // self.stepsize
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
        # parameters that share (rate, decay) across the groups, updated together
        batches: Dict[Tuple[float, float], Tuple[list, list, list]] = {}
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
                h = state.get("history")
                if h is None:
                    h = state["history"] = torch.zeros_like(p)
                ps, ds, hs = batches.setdefault((local_rate, local_decay), ([], [], []))
                ps.append(p)
                ds.append(d)
                hs.append(h)
        for (local_rate, local_decay), (ps, ds, hs) in batches.items():
            if clip_scale is not None:
                torch._foreach_mul_(ds, clip_scale)
            if self.iter_size > 1:
                torch._foreach_mul_(ds, norm_scale)
            if local_decay:
                if self.regularization_type == "L2":
                    torch._foreach_add_(ds, ps, alpha=local_decay)
                else:
                    torch._foreach_add_(ds, [torch.sign(p) for p in ps], alpha=local_decay)
            torch._foreach_mul_(hs, momentum)
            torch._foreach_add_(hs, ds, alpha=local_rate)
            torch._foreach_sub_(ps, hs)
        self.iter += 1
        return loss

    # -- torch.optim.Optimizer's state format: parameters by their index over the groups
    def _indexed(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        index = {id(p): i for i, p in enumerate(self._indexed())}
        groups, start = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            groups.append(dict({k: v for k, v in g.items() if k != "params"}, params=list(range(start, start + n))))
            start += n
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if s and id(p) in index}
        return {"state": state, "param_groups": groups, "caffe": {"iter": self.iter, "current_step": self.current_step}}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("the solver state's parameter groups do not match this solver's "
                             f"({[len(g['params']) for g in groups]} against "
                             f"{[len(g['params']) for g in self.param_groups]} parameters)")
        params = self._indexed()
        flat = [i for g in groups for i in g["params"]]
        by_index = dict(zip(flat, params))
        self.state = defaultdict(dict)
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            # copies: the loaded solver must not share its history with the dict's owner
            self.state[p] = {k: (v.detach().to(dtype=p.dtype, device=p.device, copy=True)
                                 if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in s.items()}
        for mine, saved in zip(self.param_groups, groups):
            mine.update({k: v for k, v in saved.items() if k != "params"})
        caffe = state_dict.get("caffe")
        if caffe is not None:
            self.iter = int(caffe["iter"])
            self.current_step = int(caffe["current_step"])
