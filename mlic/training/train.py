"""Training: `train(cfg)` (datalists -> HumanAttData batches -> a stage's port or a Caffe
net -> Caffe SGD, with checkpoints, resume, evaluation and logs); tools/train.py's flags
map onto a TrainConfig in mlic.cli.train."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from mlic.caffe.io import read_solver
from mlic.caffe.teacher import check_teacher_reference, is_teacher_key, teacher_reference
from mlic.caffe.torchvision_vgg import InputTransform
from mlic.caffe.weights import initialize_weights
from mlic.engine import distributed as D
from mlic.engine import (DivergenceWatch, EvalHook, MetricsWriter, PeriodicCheckpointer, Trainer,
                         load_newest_intact)
from mlic.engine.checkpoint import CheckpointError, atomic_save
from mlic.engine.run_lock import hold_folder, make_out_folder
from mlic.data import HumanAttDataConfig, build_loader, read_datalist
from mlic.errors import OutputError, RunInterrupted, UserInputError
from mlic.evaluation import evaluate_multilabel
from mlic.solver import CaffeSGD
from mlic.solver.sgd import stepvalue_warning
from mlic.training.config import (BGR_MEAN, PROTOTXT_DEFAULTS, STAGE_DEFAULTS, DataConfig, SolverConfig,
                                  TrainConfig)
from mlic.training.tasks import Task, build_prototxt_task, build_task
from prototxt_ports import NetConfig

log = logging.getLogger("mlic.train")


def train(cfg: TrainConfig) -> Path:
    """Run one training as `cfg` describes; returns the path of the final weights
    (<out>/final.pt). Raises UserInputError (or another ValueError naming the file) for bad
    input; writes train.log, log.csv, eval.csv and checkpoints under cfg.out."""
    cfg.validate()
    device = cfg.run.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started_group = not D.is_initialized() and D.init_distributed(device)
    if D.is_initialized() and device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    out = Path(cfg.out)
    try:
        with _sigterm_interrupts():
            if D.is_main():
                make_out_folder(out)
            # one run per folder: the main process holds it (the other ranks are the same run)
            with hold_folder(out) if D.is_main() else contextlib.nullcontext(), \
                    _train_log(out if D.is_main() else None):
                return _train(cfg, device, out)
    except KeyboardInterrupt as exc:  # before the loop started: nothing to continue from
        raise RunInterrupted(f"{_how(exc)} while the run was being set up; no iteration ran", _signum(exc)) from None
    finally:
        if started_group:
            D.cleanup()


@contextlib.contextmanager
def _train_log(out: Optional[Path]):
    """Everything the mlic loggers say at INFO also goes to <out>/train.log."""
    logger = logging.getLogger("mlic")
    saved = logger.level
    handler = None
    if out is not None:
        try:
            handler = logging.FileHandler(out / "train.log")
        except OSError as exc:
            raise OutputError(f"--out {out}: cannot write {out / 'train.log'} ({exc.strerror or exc})") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(saved)


def _train(cfg: TrainConfig, device: str, out: Path) -> Path:
    solver_file = read_solver_file(cfg.solver.file) if cfg.solver.file else None  # before the slow parts
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    task, data, defaults = build_model_and_data(cfg, device)
    teacher = load_initial_weights(task, cfg, data.train_cfg)
    # Same initial weights on every rank (seeded above, and broadcast); each rank then gets
    # its own stream for dropout.
    D.broadcast_parameters(task.model)
    if D.rank() > 0:
        torch.manual_seed(cfg.run.seed + 1000003 * D.rank())
    solver, max_iter = build_solver(cfg.solver, task.model, defaults, solver_file)
    trainer = build_trainer(cfg, task, data, solver, max_iter, device, out, teacher)
    if cfg.run.resume:
        resume(trainer, out, teacher)
    start = trainer.iter
    try:
        with _checkpoint_on_sigterm(trainer):
            trainer.train()
        return _write_final(cfg, task, trainer, teacher, out, start)
    except KeyboardInterrupt as exc:
        raise trainer.interrupted(_how(exc), _signum(exc)) from None


def _write_final(cfg: TrainConfig, task: Task, trainer: Trainer, teacher: Optional[dict], out: Path,
                 start: int) -> Path:
    if trainer.iter > start:
        n = trainer.iter - start
        log.info("time per iteration: %s", ", ".join(f"{k} {1000 * v / n:.1f} ms"
                                                     for k, v in trainer.phase_seconds.items()))
    final = out / "final.pt"
    if D.is_main():
        model_state = {k: v.contiguous() for k, v in task.model.state_dict().items()}
        if teacher is not None and not cfg.run.embed_teacher:
            model_state = {k: v for k, v in model_state.items() if not is_teacher_key(k)}
        atomic_save({"model": model_state, "meta": trainer.meta, "iter": trainer.iter}, final)
        log.info("final weights: %s%s", final, "" if teacher is None or cfg.run.embed_teacher else
                 f" (the teacher by reference: {teacher['path']}, SHA-256 {teacher['sha256'][:16]}...)")
    D.barrier()
    return final


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop: it unwinds as Ctrl-C does (no `except Exception`
    mistakes it for a failure of what was running)."""

    signum = signal.SIGTERM


def _signum(exc: KeyboardInterrupt) -> int:
    return getattr(exc, "signum", signal.SIGINT)


def _how(exc: KeyboardInterrupt) -> str:
    signum = _signum(exc)
    return "interrupted by Ctrl-C" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM ends what is running with a message (outside the loop, which checkpoints
    first: _checkpoint_on_sigterm)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _checkpoint_on_sigterm(trainer: Trainer):
    """SIGTERM (a scheduler's notice before it kills a job) ends the run after the current
    iteration, with a checkpoint (Trainer.request_stop); the handler is this process's
    only while the loop runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    chld = signal.getsignal(signal.SIGCHLD)

    def on_sigterm(signum, frame):
        # A signal sent to the whole process group also ends the DataLoader's workers;
        # torch's SIGCHLD handler would then raise in the middle of the iteration.
        if callable(signal.getsignal(signal.SIGCHLD)):
            signal.signal(signal.SIGCHLD, lambda *_: None)
        trainer.request_stop(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if chld is not None:
            signal.signal(signal.SIGCHLD, chld)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class _Data:
    """The training datalist and its data-layer settings, and the test datalist's."""

    def __init__(self, train_list, train_cfg, test_list=None, test_cfg=None):
        self.train_list, self.train_cfg, self.test_list, self.test_cfg = train_list, train_cfg, test_list, test_cfg


def build_model_and_data(cfg: TrainConfig, device: str) -> Tuple[Task, _Data, tuple]:
    """The task (model, objective, predictions), the data it trains on and is tested on,
    and the (batch, base_lr, max_iter) defaults that apply to it."""
    if cfg.prototxt:
        task, layer_data = build_prototxt_task(cfg.prototxt, device, source=cfg.data.train,
                                               root_folder=cfg.data.root_folder, batch_size=cfg.data.batch_size)
        train_list = read_datalist(layer_data.source, att_num=layer_data.att_num, bbox_num=layer_data.bbox_num,
                                   root_folder=layer_data.root_folder)
        train_cfg = replace(layer_data, att_num=train_list.att_num, bbox_num=train_list.bbox_num)
        log.info("stage %s: %s", task.stage, task.describe)
        data, defaults = _Data(train_list, train_cfg), PROTOTXT_DEFAULTS
        # the layer's own resize, mean and scale; no scale jitter or mirror
        test_cfg = lambda source, lst: replace(  # noqa: E731
            train_cfg, source=source, root_folder=cfg.data.root_folder or train_cfg.root_folder, shuffle=False,
            mirror=False, scale_factors=(), batch_size=cfg.data.test_batch_size or max(1, train_cfg.batch_size // 2))
    else:
        train_list = read_datalist(cfg.data.train, att_num=cfg.data.num_classes, root_folder=cfg.data.root_folder)
        net = net_for_data(cfg.net, train_list.att_num, train_list.bbox_num, cfg.data.train)
        task = build_task(cfg.stage, net, cfg.switches, device, cfg.run.memory_format)
        log.info("switches: %s", cfg.switches.describe())
        log.info("net: %s", describe_net(net))
        log.info("stage %s: %s", task.stage, task.describe)
        batch = cfg.data.batch_size or STAGE_DEFAULTS[cfg.stage][0]
        data = _Data(train_list, data_layer_config(cfg.data, net.input_size, cfg.data.train, batch, True, train_list))
        defaults = STAGE_DEFAULTS[cfg.stage]
        test_cfg = lambda source, lst: data_layer_config(  # noqa: E731
            cfg.data, net.input_size, source, cfg.data.test_batch_size or max(1, batch // 2), False, lst)
    if cfg.data.test:
        if task.predict is None:
            log.warning("--test-datalist %s: %s has no classifier to evaluate (it only matches features); "
                        "test the stage-2 or student weights instead", cfg.data.test, task.stage)
        else:
            data.test_list = read_datalist(cfg.data.test, att_num=train_list.att_num, bbox_num=train_list.bbox_num,
                                           root_folder=cfg.data.root_folder or data.train_cfg.root_folder)
            data.test_cfg = test_cfg(cfg.data.test, data.test_list)
    return task, data, defaults


def net_for_data(net, num_classes: int, num_rois: int, source: str):
    """`net` (None: the released sizes) with the datalist's label and box counts."""
    if net is None:
        return NetConfig(num_classes=num_classes, num_rois=num_rois)
    defaults = NetConfig()
    for name, value in (("num_classes", num_classes), ("num_rois", num_rois)):
        given = getattr(net, name)
        if given != value and given != getattr(defaults, name):
            raise UserInputError(f"TrainConfig.net.{name} is {given} but the datalist {source} has {value} per line")
    return net.replace(num_classes=num_classes, num_rois=num_rois)


def describe_net(net) -> str:
    """The NetConfig fields that differ from the released net, one short line."""
    ref = NetConfig()
    parts = []
    for f in fields(net):
        v = getattr(net, f.name)
        if f.name in ("num_classes", "num_rois") or v != getattr(ref, f.name):
            if f.name == "body":
                v = ",".join(v)
            elif f.name == "multipliers":
                v = " ".join(f"{k}={'/'.join(f'{a:g},{b:g}' for a, b in m)}" for k, m in v.items()
                             if m != ref.multipliers.get(k))
            parts.append(f"{f.name}={v}")
    return "; ".join(parts) + " (other fields as released)"


def data_layer_config(data: DataConfig, input_size: int, source: str, batch: int, train: bool, datalist):
    return HumanAttDataConfig(source=source, root_folder=data.root_folder, batch_size=batch, shuffle=train,
                              new_width=input_size, new_height=input_size,
                              scale_factors=tuple(data.scales) if train else (), att_num=datalist.att_num,
                              bbox_num=datalist.bbox_num, mirror=train and data.mirror, mean_values=BGR_MEAN,
                              scale=data.input_scale)


def load_initial_weights(task: Task, cfg: TrainConfig, data_layer) -> Optional[dict]:
    """--weights files in order, then --teacher (mlic.caffe.weight_files); the log says
    which layer came from which file. Returns the teacher file's reference (path and
    SHA-256), or None without a teacher."""
    teacher = teacher_reference(cfg.teacher) if cfg.teacher else None
    init = initialize_weights(task.model, cfg.weights, cfg.teacher,
                              allow_untrained_teacher=cfg.allow_untrained_teacher,
                              transform=InputTransform.from_values(data_layer.mean_values, data_layer.scale))
    for line in init.lines():
        log.info("%s", line)
    if init.warning():
        log.warning("%s", init.warning())
    if teacher is not None:  # the layers a reader of final.pt takes from the teacher file
        teacher["layers"] = [l for ld in init.loads if ld.role == "teacher" for l in ld.layers]
    return teacher


def read_solver_file(path: str):
    """The SolverParameter of a solver.prototxt, its settings checked as CaffeSGD will."""
    sp, _ = read_solver(path)
    try:
        CaffeSGD.from_solver_param(sp, [torch.nn.Parameter(torch.zeros(1))])
    except ValueError as exc:
        raise UserInputError(f"--solver {path}: {exc}") from None
    return sp


def build_solver(s: SolverConfig, model, defaults: tuple, sp=None) -> Tuple[CaffeSGD, int]:
    """CaffeSGD from a solver file (its SolverParameter `sp`) or the fields, and the
    number of iterations."""
    _, lr_default, iters_default = defaults
    if s.file:
        solver = CaffeSGD.from_solver_param(sp, model.param_groups())
        max_iter = s.max_iter or sp.max_iter
        if not max_iter:
            log.warning("--solver %s sets no max_iter and --max-iter is not given: 0 iterations will run and "
                        "final.pt will hold the initial weights", s.file)
    else:
        max_iter = s.max_iter or iters_default
        try:
            solver = CaffeSGD(model.param_groups(), base_lr=s.base_lr if s.base_lr is not None else lr_default,
                              momentum=s.momentum, weight_decay=s.weight_decay, lr_policy=s.lr_policy,
                              gamma=s.gamma, power=s.power, stepsize=s.stepsize, stepvalue=list(s.stepvalue),
                              max_iter=max_iter, iter_size=s.iter_size)
        except ValueError as exc:
            raise UserInputError(f"solver: {exc}") from None
    note = stepvalue_warning(solver.stepvalue) if solver.lr_policy == "multistep" else None
    if note:
        log.warning("%s: %s", f"--solver {s.file}" if s.file else "--stepvalue", note)
    return solver, max_iter


def build_trainer(cfg: TrainConfig, task: Task, data: _Data, solver, max_iter: int, device: str,
                  out: Path, teacher: Optional[dict] = None) -> Trainer:
    train_loader = build_loader(data.train_cfg, seed=cfg.run.seed, num_workers=cfg.data.workers,
                                num_replicas=D.world_size(), rank=D.rank(), datalist=data.train_list,
                                pin_memory=device.startswith("cuda"), image_cache_mb=cfg.data.image_cache_mb)

    def batches(start):
        for b in train_loader.iter_steps(start):
            yield b.to(device, non_blocking=True)

    hooks = []
    if data.test_list is not None:
        test_loader = build_loader(data.test_cfg, datalist=data.test_list)

        def eval_fn(trainer):
            if not D.is_main():
                return {}
            return evaluate_model(task, trainer.model, test_loader)

        hooks.append(EvalHook(cfg.run.eval_period, eval_fn))
    # the step's row is logged before the watch may stop training, and nothing it stops
    # for is checkpointed
    hooks += [MetricsWriter(period=cfg.run.log_period, tensorboard=cfg.run.tensorboard, progress=cfg.run.progress),
              DivergenceWatch(),
              PeriodicCheckpointer(cfg.run.checkpoint_period, keep=cfg.run.keep_checkpoints)]
    meta = {"stage": task.stage, "net": None, "input_scale": cfg.data.input_scale, "switches": None,
            "config": cfg.to_dict(), "world_size": D.world_size()}
    if cfg.prototxt:
        meta["prototxt"] = str(Path(cfg.prototxt).resolve())
    else:
        meta["net"] = asdict(task.net)
        meta["switches"] = asdict(cfg.switches)
    # A frozen teacher never changes: checkpoints refer to its file (path and hash) instead of
    # copying it. Under caffe-decay weight decay moves it, so checkpoints carry it for an
    # exact resume; final.pt refers to it either way (testing and export use the student).
    exclude = None
    if teacher is not None:
        meta["teacher"] = dict(teacher, embedded=cfg.run.embed_teacher)
        if cfg.stage and cfg.switches.teacher == "frozen" and not cfg.run.embed_teacher:
            exclude = is_teacher_key
    return Trainer(task.model, solver, batches, task.step, max_iter, str(out), iter_size=solver.iter_size,
                   hooks=hooks, images_per_batch=data.train_cfg.batch_size, log=log.info, amp=cfg.run.amp,
                   device=device, meta=meta, exclude=exclude)


def resume(trainer: Trainer, out: Path, teacher: Optional[dict] = None) -> None:
    """Continue from the newest intact checkpoint in `out` (a corrupt newer one is skipped
    with a warning). Refused: a checkpoint of another configuration (no older one stands
    in for it), a KD checkpoint whose teacher is not the --teacher given now, and a
    --max-iter below the iteration the run has reached (its final.pt would be replaced)."""
    reached = _final_iteration(out / "final.pt")
    if reached is not None and reached > trainer.max_iter:
        raise UserInputError(f"--resume: {out / 'final.pt'} holds iteration {reached}, beyond --max-iter "
                             f"{trainer.max_iter}; give --max-iter {reached} or more (or another --out)")
    found = load_newest_intact(out)
    if found is None:
        log.info("--resume: no checkpoint in %s, starting from scratch", out)
        return
    ck, state = found
    saved = state.get("meta", {}) if isinstance(state.get("meta"), dict) else {}
    differ = config_differences(saved, trainer.meta)
    if differ:
        raise UserInputError(f"--resume: {ck} was written by a run of another configuration ({'; '.join(differ)}); "
                             "resume with its settings, or give another --out")
    if teacher is not None:
        check_teacher_reference(saved.get("teacher"), teacher, f"--resume: {ck}")
    if int(state.get("iter", 0)) > trainer.max_iter:
        raise UserInputError(f"--resume: {ck} is at iteration {int(state['iter'])}, beyond --max-iter "
                             f"{trainer.max_iter}; give --max-iter {int(state['iter'])} or more (or another --out)")
    try:
        trainer.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {ck}: {exc}") from None
    trainer.last_checkpoint = ck
    log.info("resumed from %s at iteration %d", ck, trainer.iter)


def _final_iteration(final: Path) -> Optional[int]:
    """The iteration a run's final.pt holds, when it says (mapped, not read whole)."""
    if not final.is_file():
        return None
    try:
        state = torch.load(final, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # unreadable: nothing of value to keep, the run writes a new one
        return None
    it = state.get("iter") if isinstance(state, dict) else None
    return int(it) if isinstance(it, int) else None


# what decides the model and the shape of its state: a checkpoint must agree on these (a
# --prototxt run's net is checked by loading it: its file may have moved)
_FIT_KEYS = ("stage", "net", "switches")


def config_differences(saved: dict, now: dict) -> list:
    """'net.fc_dim is 16 in the checkpoint, 32 now' for each setting of _FIT_KEYS that differs."""
    out = []
    for key in _FIT_KEYS:
        a, b = _plain(saved.get(key)), _plain(now.get(key))
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k} is {_shown(a.get(k))} in the checkpoint, {_shown(b.get(k))} now"
                    for k in list(b) + [k for k in a if k not in b] if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key} is {_shown(a)} in the checkpoint, {_shown(b)} now")
    return out


def _plain(v):
    """Tuples as lists (as a round trip through JSON gives them), for comparing."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _shown(v) -> str:
    if isinstance(v, (list, tuple)):
        text = ",".join(_shown(x) for x in v)
    elif isinstance(v, dict):
        text = "{" + ", ".join(f"{k}: {_shown(x)}" for k, x in v.items()) + "}"
    else:
        text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def evaluate_model(task, model, loader, max_batches: Optional[int] = None) -> Dict[str, float]:
    if task.predict is None:
        return {}
    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = batch.to(next(model.parameters()).device)
            s, _ = task.predict(model, batch)
            scores.append(s.float().cpu())
            labels.append(batch.labels.float().cpu())
    model.train()
    rep = evaluate_multilabel(torch.cat(scores).numpy(), torch.cat(labels).numpy())
    d = rep.to_dict()
    return {k: float(d[k]) for k in ("mAP", "CF1", "OF1") if k in d}
