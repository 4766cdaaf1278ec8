"""Hooks of the training loop (before/after train, before/after each step)."""
import csv
import math
import os
from pathlib import Path
from typing import Callable, Dict

from mlic.engine import distributed as D
from mlic.engine.progress import Progress
from mlic.engine.checkpoint import (atomic_save, checkpoint_dir, checkpoint_path, list_checkpoints,
                                    remove_checkpoint, remove_stale_partials)


class HookBase:
    trainer = None  # set by the trainer

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_step(self):
        pass

    def after_step(self):
        pass


class PeriodicCheckpointer(HookBase):
    """Writes the whole training state every `period` iterations (0: never), except at the
    last iteration, whose weights final.pt holds; keeps the newest `keep` checkpoints (0:
    all). Before the first step it removes the partial files an interrupted write left.
    A state with inf or nan is never written: training stops instead."""

    def __init__(self, period: int, keep: int = 2):
        if period < 0 or keep < 0:
            raise ValueError(f"period and keep must be >= 0, got {period} and {keep}")
        self.period, self.keep = period, keep

    def before_train(self):
        t = self.trainer
        if not D.is_main():
            return
        freed = remove_stale_partials(t.out_dir) + remove_stale_partials(checkpoint_dir(t.out_dir))
        if freed:
            t.log(f"removed partial files of an interrupted checkpoint write ({freed / 2**20:.1f} MB)")

    def save(self):
        """Writes the state now (the main process); returns the path, or None when nothing
        was written (another process, or a state the divergence watch distrusts)."""
        t = self.trainer
        if t.suspect:
            t.log(f"no checkpoint at iteration {t.iter}: {t.suspect}")
            return None
        t.check_finite_state()  # every rank: they hold the same parameters
        if not D.is_main():
            return None
        path = atomic_save(t.state_dict(), checkpoint_path(t.out_dir, t.iter))
        t.last_checkpoint = path
        t.note_checkpoint(path)
        t.log(f"checkpoint written: {path}")
        if self.keep > 0:
            for _, old in list_checkpoints(t.out_dir)[self.keep:]:
                remove_checkpoint(old)
        return path

    def after_step(self):
        it = self.trainer.iter
        if self.period > 0 and it % self.period == 0 and it != self.trainer.max_iter:
            self.save()


def _device_of(model):
    p = next(model.parameters(), None)
    return p.device if p is not None else "cpu"


class DivergenceWatch(HookBase):
    """Stops training when it has diverged in ways a clamped loss hides:
    - the gradient norm grows past `grad_factor` times its median over the first
      `warmup` iterations of this run;
    - the step reports `pinned_key` (e.g. every image score at the loss's clamp bounds,
      positives at the bottom) for `patience` iterations in a row.
    (inf/nan in the loss, the gradients or the parameters stop the loop itself.)"""

    def __init__(self, grad_factor: float = 1e4, warmup: int = 10, pinned_key: str = "scores_pinned",
                 patience: int = 3):
        self.grad_factor, self.warmup, self.pinned_key, self.patience = grad_factor, warmup, pinned_key, patience
        self._norms, self._pinned = [], 0

    def before_train(self):
        self._norms, self._pinned = [], 0
        self.trainer.suspect = None

    def after_step(self):
        t = self.trainer
        norm = t.metrics.get("grad_norm")
        if norm is not None:
            if len(self._norms) < self.warmup:
                self._norms.append(norm)
            else:
                ref = sorted(self._norms)[len(self._norms) // 2]
                if ref > 0 and norm > self.grad_factor * ref:
                    t.stop(f"the gradient norm {norm:.3g} is {norm / ref:.3g} times its median over the first "
                           f"{self.warmup} iterations ({ref:.3g})", iteration=t.iter)
        pinned = self.pinned_key in t.metrics and D.all_ranks(t.metrics[self.pinned_key] >= 1.0, _device_of(t.model))
        if pinned:
            self._pinned += 1
            # no checkpoint of a state that may be the start of a divergence
            t.suspect = "every image score is at the loss's clamp bounds (watching for divergence)"
            if self._pinned >= self.patience:
                t.stop(f"every image score has sat at the loss's clamp bounds, most positive labels at the "
                       f"bottom, for {self.patience} iterations (the activations have exploded)", iteration=t.iter)
        else:
            self._pinned = 0
            t.suspect = None


class EvalHook(HookBase):
    """Runs `eval_fn(trainer) -> dict` every `period` iterations and after the last one;
    the results join the step's metrics, so a MetricsWriter placed after it logs them."""

    def __init__(self, period: int, eval_fn: Callable[["object"], Dict[str, float]]):
        self.period, self.eval_fn = period, eval_fn

    def _run(self):
        results = self.eval_fn(self.trainer) or {}
        self.trainer.metrics.update({f"eval/{k}": v for k, v in results.items()})
        if results:
            self.trainer.log("eval @ iter {}: {}".format(
                self.trainer.iter, ", ".join(f"{k}={v:.4f}" for k, v in results.items())))

    def after_step(self):
        it = self.trainer.iter
        if (self.period > 0 and it % self.period == 0) or it == self.trainer.max_iter:
            self._run()


def _drop_rows_after(path: Path, iteration: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and float(r[0]) <= iteration]
    if len(keep) != len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, path)


class MetricsWriter(HookBase):
    """CSV (always) and TensorBoard (when available) logs, and the progress: a bar on a
    terminal, plain lines through the trainer's log otherwise (mlic.engine.progress)."""

    def __init__(self, period: int = 1, tensorboard: bool = True, progress: bool = True, desc: str = "train"):
        self.period, self.tensorboard, self.progress, self.desc = period, tensorboard, progress, desc
        self._tb = None
        self._bar = None

    def before_train(self):
        t = self.trainer
        if not D.is_main():
            return
        Path(t.out_dir).mkdir(parents=True, exist_ok=True)
        for name in ("log.csv", "eval.csv"):  # a resumed run rewrites what came after its checkpoint
            _drop_rows_after(Path(t.out_dir) / name, t.iter)
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(t.out_dir) / "tb"), purge_step=t.iter + 1)
            except Exception as exc:  # tensorboard missing: CSV is enough
                t.log(f"tensorboard logging disabled ({exc})")
        if self.progress:
            self._bar = Progress(t.max_iter, initial=t.iter, desc=self.desc, unit="iterations", emit=t.log)
        self._last_iter = t.iter

    def after_step(self):
        t = self.trainer
        if not D.is_main():
            return
        train = {"iter": t.iter, **{k: float(v) for k, v in t.metrics.items() if not k.startswith("eval/")}}
        evals = {k[5:]: float(v) for k, v in t.metrics.items() if k.startswith("eval/")}
        if self._bar is not None:
            self._bar.update(t.iter - self._last_iter,
                             {k: f"{v:.4g}" for k, v in train.items() if k in ("loss", "lr", "img_per_s")})
        self._last_iter = t.iter
        if t.iter % self.period == 0 or t.iter == t.max_iter:
            self._append("log.csv", train)
        if evals:
            self._append("eval.csv", {"iter": t.iter, **evals})
        if self._tb is not None:
            for k, v in list(train.items()) + [(f"eval/{k}", v) for k, v in evals.items()]:
                if k != "iter" and math.isfinite(v):
                    self._tb.add_scalar(k, v, t.iter)

    def _append(self, name: str, row: dict):
        path = Path(self.trainer.out_dir) / name
        fields = None
        if path.exists():
            with open(path, newline="") as f:
                fields = next(csv.reader(f), None)
        new_file = not fields
        fields = fields or list(row)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new_file:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in fields})

    def after_train(self):
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
