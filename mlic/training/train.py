"""Training driver behind tools/train.py: datalists -> HumanAttData batches -> a stage's
port -> Caffe SGD, with checkpoints, resume, evaluation and logs."""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from mlic.engine import distributed as D
from mlic.engine import EvalHook, MetricsWriter, PeriodicCheckpointer, Trainer, latest_checkpoint, load_checkpoint
from mlic.engine.checkpoint import atomic_save
from mlic.training.tasks import STAGES, Switches, build_task

log = logging.getLogger("mlic.train")

RELEASED_SCALES = (0.714286, 0.857143, 1.0, 1.095239, 1.238096)
BGR_MEAN = (103.52, 116.28, 123.675)


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("what to train")
    g.add_argument("--stage", choices=STAGES, help="wsddn (teacher), stage1, stage2 (KD), student (no-KD baseline)")
    g.add_argument("--prototxt", help="instead of --stage: train this Caffe net (phase TRAIN, run by mlic.caffe."
                   "CaffeNet) on its HumanAttData layer's settings; --datalist/--root-folder/--batch-size override "
                   "the layer's source/root_folder/batch_size")
    g.add_argument("--datalist", help="training datalist (image labels... x1 y1 x2 y2 s ...)")
    g.add_argument("--test-datalist", help="datalist evaluated every --eval-period iterations")
    g.add_argument("--root-folder", default="", help="prefix of the image paths (Caffe's root_folder)")
    g.add_argument("--out", help="output folder (checkpoints, logs, final weights)")
    g.add_argument("--weights", help="initial weights: a .caffemodel (by layer name) or one of our checkpoints")
    g.add_argument("--teacher", help="KD stages: the trained teacher (checkpoint or caffemodel, WSDDN names)")
    g = p.add_argument_group("network")
    g.add_argument("--input-size", type=int, default=672, help="new_width = new_height of the data layer")
    g.add_argument("--student-size", type=int, default=224)
    g.add_argument("--width", type=float, default=1.0, help="VGG16 channel multiplier (small demos: 0.125)")
    g.add_argument("--fc-dim", type=int, default=None, help="fc6/fc7 width (default 4096 x width)")
    g.add_argument("--body", default=None, help="conv body, e.g. 'conv1_1:16,pool1,conv2_1:32,pool2' (default VGG16)")
    g.add_argument("--pooled-size", type=int, default=7, help="RoI pooling grid (= student_size / 32)")
    g.add_argument("--dropout", type=float, default=0.5)
    g.add_argument("--lr-mult", action="append", default=[], metavar="KIND=LR[,DECAY]",
                   help="override the released lr_mult/decay_mult of a layer kind (conv, fc, head, temperature, "
                        "soft_scale); a bias keeps 2x the weight's lr_mult and no decay. Repeatable. "
                        "Training from scratch wants head=1 (the released 10x suits fine-tuning)")
    g = p.add_argument_group("data")
    g.add_argument("--batch-size", type=int, default=None, help="per process (released: 32 teacher, 28 stage 2)")
    g.add_argument("--test-batch-size", type=int, default=None)
    g.add_argument("--scales", default="released", help="'released' (5 scales), 'none', or comma-separated factors")
    g.add_argument("--no-mirror", action="store_true")
    g.add_argument("--input-scale", type=float, default=1.0,
                   help="transform_param scale: pixels (minus the BGR mean) times this (released: 1)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("solver (Caffe SGD)")
    g.add_argument("--solver", help="solver.prototxt (its net fields are ignored; its rates are used)")
    g.add_argument("--base-lr", type=float, default=None)
    g.add_argument("--lr-policy", default="fixed")
    g.add_argument("--gamma", type=float, default=None)
    g.add_argument("--stepsize", type=int, default=None)
    g.add_argument("--stepvalue", default="", help="comma-separated (multistep)")
    g.add_argument("--power", type=float, default=None)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=0.0005)
    g.add_argument("--max-iter", type=int, default=None)
    g.add_argument("--iter-size", type=int, default=1, help="forward/backward passes per update")
    g = p.add_argument_group("method switches (SPEC section 8; defaults are the released code)")
    g.add_argument("--kd-loss", choices=("soft-ce", "l2"), default="soft-ce")
    g.add_argument("--stage1-train", choices=("convs+fc", "convs"), default="convs+fc")
    g.add_argument("--teacher-mode", dest="teacher_mode", choices=("caffe-decay", "frozen"), default="caffe-decay")
    g.add_argument("--regions", choices=("all", "topk"), default="all")
    g.add_argument("--topk", type=int, default=50)
    g = p.add_argument_group("run")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--checkpoint-period", type=int, default=1000)
    g.add_argument("--eval-period", type=int, default=0, help="0: only after the last iteration")
    g.add_argument("--log-period", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (and cudnn)")
    g.add_argument("--amp", action="store_true", help="mixed precision (fp32 is the faithful mode)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--no-tensorboard", action="store_true")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


STAGE_DEFAULTS = {  # batch, base_lr, max_iter
    "wsddn": (32, 5e-5, 20000),
    "stage1": (32, 1e-4, 20000),
    "stage2": (28, 1e-4, 20000),
    "student": (32, 1e-3, 20000),
}


def _scales(text: str):
    if text == "released":
        return RELEASED_SCALES
    if text in ("none", ""):
        return ()
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise SystemExit(f"--scales: expected 'released', 'none' or comma-separated numbers, got {text!r}")


def net_config(args, att_num: int, bbox_num: int):
    from prototxt_ports import NetConfig

    kw = dict(num_classes=att_num, num_rois=bbox_num, input_size=args.input_size, student_size=args.student_size,
              width=args.width, fc_dim=args.fc_dim, dropout=args.dropout, pooled_size=args.pooled_size)
    if args.body:
        kw["body"] = tuple(s.strip() for s in args.body.split(",") if s.strip())
    if args.lr_mult:
        kw["multipliers"] = parse_lr_mults(args.lr_mult)
    return NetConfig(**kw)


def parse_lr_mults(items: Sequence[str]) -> Dict[str, tuple]:
    """--lr-mult KIND=LR[,DECAY] items -> NetConfig.multipliers (released values elsewhere)."""
    from prototxt_ports.config import RELEASED_MULTIPLIERS

    mults = dict(RELEASED_MULTIPLIERS)
    for item in items:
        kind, eq, value = item.partition("=")
        kind = kind.strip()
        if not eq or kind not in mults or kind == "region_sum":
            raise SystemExit(f"--lr-mult {item!r}: expected KIND=LR[,DECAY] with KIND one of "
                             f"{', '.join(k for k in mults if k != 'region_sum')}")
        try:
            nums = [float(v) for v in value.split(",")]
        except ValueError:
            nums = []
        if not 1 <= len(nums) <= 2 or not all(np.isfinite(nums)) or min(nums) < 0:
            raise SystemExit(f"--lr-mult {item!r}: LR and DECAY must be non-negative numbers")
        lr, decay = nums[0], nums[1] if len(nums) == 2 else nums[0]
        old = mults[kind]
        mults[kind] = ((lr, decay), (2.0 * lr, 0.0)) if len(old) == 2 else ((lr, decay),)
    return mults


def data_config(args, source: str, batch: int, train: bool, att_num: int, bbox_num: int):
    from mlic.data import HumanAttDataConfig

    return HumanAttDataConfig(source=source, root_folder=args.root_folder, batch_size=batch, shuffle=train,
                              new_width=args.input_size, new_height=args.input_size,
                              scale_factors=_scales(args.scales) if train else (), att_num=att_num,
                              bbox_num=bbox_num, mirror=train and not args.no_mirror, mean_values=BGR_MEAN,
                              scale=args.input_scale)


def load_weights_into(model, path: str, what: str, rename=None) -> None:
    """A .caffemodel (by layer name) or one of our checkpoints/state dicts."""
    path = str(path)
    if not os.path.isfile(path):
        raise SystemExit(f"{what}: {path} does not exist")
    if path.endswith(".caffemodel"):
        if hasattr(model, "load_caffe_weights"):
            report = model.load_caffe_weights(path, rename=rename)
        else:  # a CaffeNet (--prototxt)
            from mlic.caffe.weights import load_caffemodel

            report = load_caffemodel(model, path, rename=rename)
        log.info("%s: loaded %s (%s)", what, path, report)
        return
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    target = model
    student = getattr(model, "student", None)
    own = set(model.state_dict())
    if isinstance(student, torch.nn.Module) and not own.intersection(state) and \
            set(student.state_dict()).intersection(state):
        # a classifier's weights (the student or its initialisation) for a KD stage
        target, what = student, f"{what} (into the student)"
    missing, unexpected = target.load_state_dict(state, strict=False)
    loaded = len(state) - len(unexpected)
    if loaded == 0:
        raise SystemExit(f"{what}: no parameter of {path} matches the model (unexpected: {unexpected[:5]} ...)")
    log.info("%s: loaded %d tensors from %s; missing %d, unexpected %d", what, loaded, path, len(missing),
             len(unexpected))


def build_prototxt_task(args, device: str):
    """(Task, HumanAttDataConfig) for --prototxt: a CaffeNet in phase TRAIN whose objective
    (sum of loss_weight x loss tops) is minimised, fed by its HumanAttData layer's settings."""
    from mlic.caffe import CaffeNet
    from mlic.data import HumanAttDataConfig
    from mlic.training.tasks import Task

    path = args.prototxt
    if not os.path.isfile(path):
        raise SystemExit(f"--prototxt: {path} does not exist")
    try:
        net = CaffeNet(path, "TRAIN")
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"--prototxt: {e}")
    data_layers = [lp for lp in net.layer_params if lp.type == "HumanAttData"]
    if len(data_layers) != 1 or len(data_layers[0].top) != 2:
        raise SystemExit(f"--prototxt {path}: training needs exactly one HumanAttData layer (tops: data, label_roi) "
                         f"in phase TRAIN; found {len(data_layers)}")
    if not net.loss_tops:
        raise SystemExit(f"--prototxt {path}: the net has no loss (no top with a loss_weight) in phase TRAIN")
    lp = data_layers[0]
    overrides = {}
    if args.datalist:
        overrides["source"] = args.datalist
    if args.root_folder:
        overrides["root_folder"] = args.root_folder
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    try:
        data = HumanAttDataConfig.from_layer(lp, **overrides)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"--prototxt {path}: layer '{lp.name}': {e}")
    if not data.source:
        raise SystemExit(f"--prototxt {path}: layer '{lp.name}' names no source; give --datalist")
    if not os.path.isabs(data.source) and not os.path.isfile(data.source):
        near = os.path.join(os.path.dirname(os.path.abspath(path)), data.source)
        if os.path.isfile(near):
            data = replace(data, source=near)
    top_data, top_label = lp.top

    def step(m, b):
        m(**{top_data: b.data, top_label: b.label_roi})
        return {"loss": m.objective}

    describe = f"{path} (net '{net.name}', losses {dict(net.loss_tops)})"
    return Task("prototxt", net.to(device), step, None, describe), data


def teacher_rename(key: str) -> str:
    """WSDDN names -> the KD nets' teacher names (conv1_1 -> conv_wsd_1_1, fc6 -> fc_wsd_6, ...)."""
    from prototxt_ports.wsddn import wsddn_to_kd_name

    layer, _, rest = key.partition(".")
    return f"{wsddn_to_kd_name(layer)}.{rest}" if rest else wsddn_to_kd_name(layer)


def evaluate_model(task, model, loader, max_batches: Optional[int] = None) -> Dict[str, float]:
    from mlic.evaluation import evaluate_multilabel

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


def run_training(args) -> Path:
    from mlic.data import build_loader, read_datalist
    from mlic.solver import CaffeSGD

    if args.prototxt and args.stage:
        raise SystemExit("--stage and --prototxt exclude each other: a stage trains our port, --prototxt a Caffe net")
    if args.prototxt:
        if not args.out:
            raise SystemExit("--prototxt needs --out")
    elif not args.stage or not args.datalist or not args.out:
        raise SystemExit("--stage, --datalist and --out are required (run tools/demo.py for the embedded demo)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if D.init_distributed(device) and device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    out = Path(args.out)
    if D.is_main():
        out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("mlic").setLevel(logging.INFO)
    file_log = None
    if D.is_main():
        file_log = logging.FileHandler(out / "train.log")
        file_log.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logging.getLogger("mlic").addHandler(file_log)
    try:
        return _run(args, device, out)
    finally:
        if file_log is not None:
            logging.getLogger("mlic").removeHandler(file_log)
            file_log.close()


def _run(args, device: str, out: Path) -> Path:
    from mlic.data import build_loader, read_datalist
    from mlic.solver import CaffeSGD

    # Same seed on every rank for the initial weights (also broadcast below); each rank
    # then gets its own stream for dropout.
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    for flag, value in (("--max-iter", args.max_iter), ("--batch-size", args.batch_size),
                        ("--test-batch-size", args.test_batch_size)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag} must be at least 1, got {value}")
    cfg, switches, layer_data = None, None, None
    if args.prototxt:
        task, layer_data = build_prototxt_task(args, device)
        train_list = read_datalist(layer_data.source, att_num=layer_data.att_num, bbox_num=layer_data.bbox_num,
                                   root_folder=layer_data.root_folder)
        att_num, bbox_num = train_list.att_num, train_list.bbox_num
        layer_data = replace(layer_data, att_num=att_num, bbox_num=bbox_num)
        _, lr_default, iters_default = STAGE_DEFAULTS["wsddn"]  # the teacher's rates unless given
        batch = layer_data.batch_size
    else:
        train_list = read_datalist(args.datalist, root_folder=args.root_folder)
        att_num, bbox_num = train_list.att_num, train_list.bbox_num
        batch_default, lr_default, iters_default = STAGE_DEFAULTS[args.stage]
        batch = args.batch_size or batch_default
        cfg = net_config(args, att_num, bbox_num)
        switches = Switches(kd_loss=args.kd_loss, stage1_train=args.stage1_train, teacher=args.teacher_mode,
                            regions=args.regions, topk=args.topk)
        task = build_task(args.stage, cfg, switches, device)
        log.info("switches: %s", switches.describe())
        log.info("net: %s", cfg)
    model = task.model
    log.info("stage %s: %s", task.stage, task.describe)
    if args.weights:
        load_weights_into(model, args.weights, "--weights")
    if args.stage in ("stage1", "stage2"):
        if not args.teacher:
            raise SystemExit(f"--stage {args.stage} needs --teacher (the trained WSDDN)")
        load_weights_into(model.teacher, args.teacher, "--teacher", rename=teacher_rename)

    D.broadcast_parameters(model)
    if D.rank() > 0:
        torch.manual_seed(args.seed + 1000003 * D.rank())
    if args.solver:
        from mlic.caffe.io import read_solver

        sp, _ = read_solver(args.solver)
        solver = CaffeSGD.from_solver_param(sp, model.param_groups())
        max_iter = args.max_iter or sp.max_iter
    else:
        solver = CaffeSGD(model.param_groups(), base_lr=args.base_lr if args.base_lr is not None else lr_default,
                          momentum=args.momentum, weight_decay=args.weight_decay, lr_policy=args.lr_policy,
                          gamma=args.gamma, power=args.power, stepsize=args.stepsize,
                          stepvalue=[int(s) for s in args.stepvalue.split(",") if s.strip()],
                          max_iter=args.max_iter or iters_default, iter_size=args.iter_size)
        max_iter = args.max_iter or iters_default
    iter_size = solver.iter_size

    train_data = layer_data if layer_data is not None else data_config(args, args.datalist, batch, True, att_num,
                                                                        bbox_num)
    train_loader = build_loader(train_data, seed=args.seed,
                                num_workers=args.workers, num_replicas=D.world_size(), rank=D.rank(),
                                datalist=train_list, pin_memory=device.startswith("cuda"))

    def batches(start):
        for b in train_loader.iter_steps(start):
            yield b.to(device, non_blocking=True)

    hooks = []
    if args.test_datalist and task.predict is not None:
        test_list = read_datalist(args.test_datalist, att_num=att_num, bbox_num=bbox_num,
                                  root_folder=args.root_folder)
        test_loader = build_loader(
            data_config(args, args.test_datalist, args.test_batch_size or max(1, batch // 2), False, att_num,
                        bbox_num), datalist=test_list)

        def eval_fn(trainer):
            if not D.is_main():
                return {}
            return evaluate_model(task, trainer.model, test_loader)

        hooks.append(EvalHook(args.eval_period, eval_fn))
    hooks += [PeriodicCheckpointer(args.checkpoint_period),
              MetricsWriter(period=args.log_period, tensorboard=not args.no_tensorboard, progress=not args.quiet)]
    meta = {"stage": task.stage, "net": asdict(cfg) if cfg is not None else None, "input_scale": args.input_scale,
            "switches": asdict(switches) if switches is not None else None, "args": vars(args),
            "world_size": D.world_size()}
    if args.prototxt:
        meta["prototxt"] = str(Path(args.prototxt).resolve())
    trainer = Trainer(model, solver, batches, task.step, max_iter, str(out), iter_size=iter_size, hooks=hooks,
                      images_per_batch=batch, log=log.info, amp=args.amp, device=device, meta=meta)
    if args.resume:
        ck = latest_checkpoint(out)
        if ck is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", out)
        else:
            trainer.load_state_dict(load_checkpoint(ck))
            log.info("resumed from %s at iteration %d", ck, trainer.iter)
    trainer.train()
    final = out / "final.pt"
    if D.is_main():
        atomic_save({"model": model.state_dict(), "meta": meta}, final)
        log.info("final weights: %s", final)
    D.barrier()
    return final


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = add_train_arguments(argparse.ArgumentParser(description="Train a stage of the method (Caffe semantics)."))
    args = p.parse_args(argv)
    try:
        run_training(args)
    finally:
        D.cleanup()
    return 0
