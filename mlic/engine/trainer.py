"""A hook-based training loop with Caffe's iteration semantics.

One iteration = `iter_size` forward/backward passes whose gradients accumulate, then
(across ranks) averaged, then one solver update: Caffe's Solver::Step. The whole state
(model, solver history, iteration, RNG streams) is checkpointed so that a resumed run
continues exactly where the interrupted one stopped (bit-identical on CPU).
"""
import math
import random
import signal
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
from torch import nn

from mlic.engine import distributed as D
from mlic.engine.allocator import keep_freed_memory
from mlic.engine.checkpoint import CheckpointError, latest_intact_checkpoint, list_checkpoints, verify
from mlic.engine.hooks import HookBase, PeriodicCheckpointer
from mlic.errors import RunInterrupted, RunStopped


class TrainingDiverged(RunStopped):
    """Training stopped because the numbers left the range where they mean anything."""


def _all_finite(tensors) -> bool:
    tensors = [t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not tensors:
        return True
    # the largest magnitude per tensor: inf and nan propagate, no overflow of a sum
    peaks = torch._foreach_norm(tensors, float("inf"))
    return bool(torch.isfinite(torch.stack([p.float() for p in peaks])).all())  # one host sync


def _state_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _state_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _state_tensors(v)


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


PHASES = ("data", "forward", "backward", "update", "hooks")
# A checkpoint is a sane point to continue from after a divergence while no weight exceeds
# this many times the largest one at the start of the run (at least 1).
SANE_GROWTH = 1e4


def weights_peak(tensors) -> float:
    """The largest magnitude among floating-point tensors (0 for none)."""
    tensors = [t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not tensors:
        return 0.0
    return float(torch.stack([p.float() for p in torch._foreach_norm(tensors, float("inf"))]).max())


def _checkpoint_peak(path) -> Optional[float]:
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return weights_peak(state["model"].values())
    except Exception:  # unreadable: not a point to continue from
        return None


class _DataEnded(Exception):
    """The batches stopped coming after a stop was requested (first: before any pass of the
    iteration ran, so the state is still the previous iteration's)."""

    def __init__(self, first: bool):
        super().__init__()
        self.first = first


class Trainer:
    """
    model:      nn.Module
    solver:     object with zero_grad(), step(), state_dict(), load_state_dict(), and
                get_lr() (the coming step's rate) or a step() returning it; the solver
                divides the accumulated gradients by iter_size (as CaffeSGD does)
    batches:    callable(start) -> iterator of batches, `start` = number of batches already consumed
    step_fn:    callable(model, batch) -> dict of scalar tensors; "loss" is the objective to minimise
    exclude:    predicate on state-dict keys left out of checkpoints (weights that never change
                and that the caller restores from elsewhere, e.g. a frozen teacher from its file)
    """

    def __init__(self, model: nn.Module, solver, batches: Callable[[int], Iterator], step_fn: Callable,
                 max_iter: int, out_dir: Optional[str], iter_size: int = 1, hooks: Iterable[HookBase] = (),
                 images_per_batch: int = 1, log: Callable[[str], None] = print, amp: bool = False,
                 device: str = "cpu", meta: Optional[dict] = None,
                 exclude: Optional[Callable[[str], bool]] = None):
        if iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}")
        if max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {max_iter}")
        self.model, self.solver, self._batches, self.step_fn = model, solver, batches, step_fn
        self.max_iter, self.out_dir, self.iter_size = max_iter, out_dir, iter_size
        self.images_per_batch, self._log, self.amp, self.device = images_per_batch, log, amp, device
        self.meta = meta or {}
        self.exclude = exclude
        self.last_checkpoint: Optional[Path] = None  # written or resumed from by this run
        self.suspect: Optional[str] = None  # why the current state should not be checkpointed
        self.iter = 0
        self.completed = False
        self.metrics: Dict[str, float] = {}
        self.hooks: List[HookBase] = []
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)
        self._iter: Optional[Iterator] = None
        self._stop_signal: Optional[int] = None  # a signal asked the run to stop after this iteration
        self.start_peak: Optional[float] = None  # the largest weight when the run started (kept on resume)
        self._checkpoint_peaks: Dict[str, float] = {}  # of the checkpoints this run wrote
        # wall seconds per phase of the steps this run computed (data, forward, backward,
        # update: the solver and the loop's checks); hooks are timed apart
        self.phase_seconds: Dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def log(self, msg: str) -> None:
        if D.is_main():
            self._log(msg)

    # ------------------------------------------------------------------ state
    def model_state(self) -> dict:
        # N x C x H x W whatever the layout the model runs in, as every reader expects
        return {k: v.contiguous() for k, v in self.model.state_dict().items()
                if not (self.exclude and self.exclude(k))}

    def state_dict(self) -> dict:
        return {"iter": self.iter, "model": self.model_state(), "solver": self.solver.state_dict(),
                "rng": rng_state(), "meta": self.meta}

    def check_finite_state(self) -> None:
        """Raises TrainingDiverged when a parameter, buffer or solver history holds inf/nan."""
        if not _all_finite(list(self.model.parameters()) + list(self.model.buffers())):
            self.stop("a parameter holds inf or nan")
        if not _all_finite(list(_state_tensors(self.solver.state_dict()))):
            self.stop("the solver's history holds inf or nan")

    def note_checkpoint(self, path) -> None:
        """Called by the checkpointer for each checkpoint written: its largest weight, for
        the advice after a divergence."""
        self._checkpoint_peaks[str(path)] = weights_peak(self.model.parameters())

    def _last_intact_checkpoint(self) -> Optional[Path]:
        ck = self.last_checkpoint
        if ck is None or not Path(ck).is_file():
            ck = latest_intact_checkpoint(self.out_dir) if self.out_dir else None
        return ck

    def request_stop(self, signum: int) -> None:
        """Asks the loop to stop after the current iteration, write a checkpoint and raise
        RunInterrupted (what a signal handler calls: a scheduler's SIGTERM)."""
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        # every rank stops at the same iteration when any of them got the signal
        return D.any_rank(self._stop_signal is not None, self.device) if D.world_size() > 1 \
            else self._stop_signal is not None

    def _stop_for_signal(self, note: str = "") -> None:
        """Checkpoints the state after iteration self.iter and raises RunInterrupted."""
        signum = self._stop_signal or signal.SIGTERM
        saved = None
        for h in self.hooks:
            if isinstance(h, PeriodicCheckpointer):
                saved = h.save()
        name = signal.Signals(signum).name
        if saved is not None:
            then = f"checkpoint written: {saved}; the same command with --resume continues from it"
        else:
            then = ("no checkpoint of it was written" + (f" ({self.suspect})" if self.suspect else "") + "; "
                    + self._resume_advice())
        raise RunInterrupted(f"stopped by {name} after iteration {self.iter} of {self.max_iter}{note}; {then}",
                             signum)

    def _resume_advice(self) -> str:
        ck = self._last_intact_checkpoint()
        if ck is None:
            return "no checkpoint was written before, so the same command starts the run again"
        return f"the same command with --resume continues from the last checkpoint, {ck}"

    def interrupted(self, how: str, signum: int) -> RunInterrupted:
        """The RunInterrupted for a run that `how` (e.g. "interrupted by Ctrl-C") ended where
        it is now, saying how to continue."""
        where = (f"during iteration {self.iter + 1} of {self.max_iter}" if not self.completed
                 else f"after its last iteration ({self.iter}), before its final weights were written")
        return RunInterrupted(f"{how} {where}; {self._resume_advice()}", signum)

    def stop(self, reason: str, iteration: Optional[int] = None) -> None:
        """Raise TrainingDiverged naming the iteration (1-based, as the progress bar counts;
        default: the one being computed) and the last intact checkpoint whose weights are
        sane (SANE_GROWTH), or saying that none is."""
        it = self.iter + 1 if iteration is None else iteration
        raise TrainingDiverged(f"training diverged at iteration {it}: {reason}; {self._divergence_advice()}")

    def _divergence_advice(self) -> str:
        found = [p for _, p in list_checkpoints(self.out_dir)] if self.out_dir else []
        intact = []
        for p in found:
            try:
                verify(p)
                intact.append(p)
            except CheckpointError:
                continue
        if not intact:
            return "no checkpoint was written before it, so there is nothing to resume from"
        limit = SANE_GROWTH * max(self.start_peak or 0.0, 1.0)
        newer = []
        for p in intact:
            peak = self._checkpoint_peaks.get(str(p))
            if peak is None:
                peak = _checkpoint_peak(p)
            if peak is not None and peak <= limit:
                break
            newer.append((p, peak))
        else:
            worst = max((pk for _, pk in newer if pk is not None), default=float("nan"))
            return (f"the checkpoints written before it already hold weights up to {worst:.3g}, beyond the "
                    f"{limit:.3g} a sane one may reach, so none is a point to continue from: start afresh (without "
                    "--resume) with a lower rate")
        if not newer:
            return f"the last checkpoint, {p}, is intact: lower the rate and continue from it with --resume"
        return (f"the last checkpoint with sane weights is {p}; the newer {', '.join(str(q) for q, _ in newer)} "
                f"already hold(s) weights up to {max(pk or 0.0 for _, pk in newer):.3g}, beyond the {limit:.3g} a "
                "sane one may reach: remove the newer ones, lower the rate and continue from it with --resume")

    def load_state_dict(self, state: dict) -> None:
        try:
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as exc:  # shapes that differ
            detail = [l.strip() for l in str(exc).splitlines() if l.strip().startswith("size mismatch")]
            raise CheckpointError(f"the checkpoint does not fit the model ({detail[0] if detail else exc})") from None
        missing = [k for k in missing if not (self.exclude and self.exclude(k))]
        if missing or unexpected:
            raise CheckpointError(f"the checkpoint does not fit the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        try:
            self.solver.load_state_dict(state["solver"])
        except ValueError as exc:
            raise CheckpointError(f"the checkpoint's solver state does not fit this solver ({exc})") from None
        self.iter = int(state["iter"])
        set_rng_state(state["rng"])
        peak = (state.get("meta") or {}).get("start_peak")
        if peak is not None:
            self.start_peak = self.meta["start_peak"] = float(peak)
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
        clock, phases = t0, self.phase_seconds

        def lap(phase):
            nonlocal clock
            now = time.perf_counter()
            phases[phase] += now - clock
            clock = now

        sums: Dict[str, float] = {}
        for k in range(self.iter_size):
            try:
                batch = self._next_batch()
            except Exception:
                # the signal that asked the run to stop also ended the loader's workers
                if self._stop_signal is not None:
                    raise _DataEnded(first=k == 0) from None
                raise
            lap("data")
            with torch.autocast(device_type=self.device.split(":")[0], enabled=self.amp):
                out = self.step_fn(self.model, batch)
            loss = out["loss"]
            value = float(loss.detach())
            if D.any_rank(not math.isfinite(value), loss.device):
                self.stop(f"the loss is {value}" if not math.isfinite(value) else "the loss is not finite on "
                          "another process")
            lap("forward")
            loss.backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            lap("backward")
        # Caffe: accumulate, average over ranks, then the solver divides by iter_size.
        params = [p for p in self.model.parameters() if p.requires_grad]
        D.average_gradients(params)
        grads = [p.grad.detach() for p in params if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) if grads else 0.0
        if not math.isfinite(grad_norm):
            self.stop(f"the gradient norm is {grad_norm} (nothing was updated)")
        get_lr = getattr(self.solver, "get_lr", None)
        lr = get_lr() if get_lr is not None else None
        ret = self.solver.step()
        lr = ret if lr is None else lr
        if not _all_finite(params):
            self.stop("the update left inf or nan in the parameters")
        lap("update")
        dt = time.perf_counter() - t0
        self.metrics = {k: v / self.iter_size for k, v in sums.items()}
        self.metrics["grad_norm"] = grad_norm
        if lr is None:  # a torch optimizer: its first group's rate
            lr = self.solver.param_groups[0].get("lr", float("nan")) if self.solver.param_groups else float("nan")
        self.metrics["lr"] = float(lr)
        self.metrics["img_per_s"] = self.images_per_batch * self.iter_size * D.world_size() / max(dt, 1e-9)

    def train(self) -> None:
        keep_freed_memory()
        if self.start_peak is None:
            self.start_peak = self.meta["start_peak"] = weights_peak(self.model.parameters())
        for h in self.hooks:
            h.before_train()
        try:
            while self.iter < self.max_iter:
                t0 = time.perf_counter()
                for h in self.hooks:
                    h.before_step()
                t1 = time.perf_counter()
                try:
                    self.run_step()
                except _DataEnded as exc:
                    if not exc.first:  # part of the iteration ran: its state is not one to keep
                        raise RunInterrupted(f"stopped by {signal.Signals(self._stop_signal).name} during iteration "
                                             f"{self.iter + 1} of {self.max_iter}, whose data the signal cut off; "
                                             f"{self._resume_advice()}", self._stop_signal) from None
                    self._stop_for_signal(f" (iteration {self.iter + 1} could not start: the signal ended the "
                                          "data loader's workers)")
                self.iter += 1
                t2 = time.perf_counter()
                for h in self.hooks:
                    h.after_step()
                self.phase_seconds["hooks"] += t1 - t0 + time.perf_counter() - t2
                if self.iter < self.max_iter and self._stop_requested():
                    self._stop_for_signal()
            self.completed = True
        finally:
            self._close_batches()
            for h in self.hooks:
                h.after_train()

    def _close_batches(self) -> None:
        """Ends the batch iterator now (a DataLoader's workers with it) rather than whenever
        the garbage collector gets to it."""
        it, self._iter = self._iter, None
        close = getattr(it, "close", None)
        if close is not None:
            close()
