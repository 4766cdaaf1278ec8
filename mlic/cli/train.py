"""tools/train.py: its flags as a TrainConfig for mlic.training.train()."""
from __future__ import annotations

import argparse
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mlic.cli.common import run_tool
from mlic.errors import UserInputError
from mlic.solver import LR_POLICIES
from mlic.training.config import (DEFAULT_KEEP_CHECKPOINTS, RELEASED_SCALES, DataConfig, RunConfig, SolverConfig,
                                  TrainConfig)
from mlic.training.tasks import STAGES, Switches
from mlic.training.train import train
from prototxt_ports import NetConfig
from prototxt_ports.config import RELEASED_MULTIPLIERS

NO_ARGUMENTS = ("With no arguments, tools/train.py runs the embedded demo, as `make demo` does: the whole\n"
                "method on synthetic data, on the CPU (tools/demo.py --help gives its options).")


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("what to train")
    g.add_argument("--stage", choices=STAGES, help="wsddn (teacher), stage1, stage2 (KD), student (no-KD baseline)")
    g.add_argument("--prototxt", help="instead of --stage: train this Caffe net (phase TRAIN, run by mlic.caffe."
                   "CaffeNet) on its HumanAttData layer's settings; --datalist/--root-folder/--batch-size override "
                   "the layer's source/root_folder/batch_size")
    g.add_argument("--datalist", help="training datalist (image labels... x1 y1 x2 y2 s ...)")
    g.add_argument("--test-datalist", help="datalist evaluated every --eval-period iterations")
    g.add_argument("--root-folder", default="", help="prefix of the image paths (Caffe's root_folder)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="labels per datalist line (80 for COCO, 81 for NUS-WIDE); without it the count is "
                        "inferred from the numbers (logged), and lists it cannot tell apart are refused")
    g.add_argument("--out", help="output folder (checkpoints, logs, final weights)")
    g.add_argument("--weights", help="initial weights by Caffe layer name, comma-separated like Caffe's -weights a,b "
                   "(later files win): caffemodels, our checkpoints and .pt files, torchvision:vgg16 (torchvision's "
                   "local cache) or torchvision:PATH")
    g.add_argument("--teacher", help="KD nets (--stage stage1/stage2, or the released KD prototxts): the trained "
                   "WSDDN (our checkpoint or a caffemodel) for the teacher layers (*_wsd_*); loaded last")
    g.add_argument("--allow-untrained-teacher", action="store_true",
                   help="let a KD net's teacher layers keep their initial values (otherwise an error)")
    g = p.add_argument_group("network")
    g.add_argument("--input-size", type=int, default=672, help="new_width = new_height of the data layer (672)")
    g.add_argument("--student-size", type=int, default=224,
                   help="side the student resizes its input to inside the net (224)")
    g.add_argument("--width", type=float, default=1.0, help="VGG16 channel multiplier (small demos: 0.125)")
    g.add_argument("--fc-dim", type=int, default=None, help="fc6/fc7 width (default 4096 x width)")
    g.add_argument("--body", default=None, help="conv body, e.g. 'conv1_1:16,pool1,conv2_1:32,pool2' (default VGG16)")
    g.add_argument("--pooled-size", type=int, default=7, help="RoI pooling grid (= student_size / 32)")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout ratio of fc6/fc7 (released: 0.5)")
    g.add_argument("--lr-mult", action="append", default=[], metavar="KIND=LR[,DECAY]",
                   help="override the released lr_mult/decay_mult of a layer kind (conv, fc, head, temperature, "
                        "soft_scale); a bias keeps 2x the weight's lr_mult and no decay. Repeatable. "
                        "Training from scratch wants head=1 (the released 10x suits fine-tuning)")
    g = p.add_argument_group("data")
    g.add_argument("--batch-size", type=int, default=None, help="per process (released: 32 teacher, 28 stage 2)")
    g.add_argument("--test-batch-size", type=int, default=None, help="default: half the training batch")
    g.add_argument("--scales", default="released", help="'released' (5 scales), 'none', or comma-separated factors")
    g.add_argument("--no-mirror", action="store_true", help="no random horizontal mirroring of training images")
    g.add_argument("--input-scale", type=float, default=1.0,
                   help="transform_param scale: pixels (minus the BGR mean) times this (released: 1)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in this process)")
    g.add_argument("--image-cache-mb", type=int, default=0, metavar="MB",
                   help="keep up to MB MiB of decoded training images in memory (per process) instead of "
                        "decoding them again every epoch (default 0: none)")
    g = p.add_argument_group("solver (Caffe SGD)")
    g.add_argument("--solver", help="solver.prototxt (its net fields are ignored; its rates are used)")
    g.add_argument("--base-lr", type=float, default=None,
                   help="base learning rate (default per stage: 5e-5 wsddn, 1e-4 stage1/stage2, 1e-3 student)")
    g.add_argument("--lr-policy", default="fixed", choices=LR_POLICIES, help="Caffe's lr_policy")
    g.add_argument("--gamma", type=float, default=None, help="lr_policy step/exp/inv/multistep/sigmoid")
    g.add_argument("--stepsize", type=int, default=None, help="lr_policy step/sigmoid")
    g.add_argument("--stepvalue", default="", help="comma-separated iterations (lr_policy multistep)")
    g.add_argument("--power", type=float, default=None, help="lr_policy inv/poly")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    g.add_argument("--weight-decay", type=float, default=0.0005, help="L2 weight decay (0.0005)")
    g.add_argument("--max-iter", type=int, default=None, help="iterations (default 20000, or the solver file's)")
    g.add_argument("--iter-size", type=int, default=1, help="forward/backward passes per update")
    g = p.add_argument_group("method switches (SPEC section 8; defaults are the released code)")
    g.add_argument("--kd-loss", choices=("soft-ce", "l2"), default="soft-ce",
                   help="stage 2's prediction-level loss: soft-ce (released code) or l2 (paper)")
    g.add_argument("--stage1-train", choices=("convs+fc", "convs"), default="convs+fc",
                   help="what stage 1 trains: convs+fc (released code) or convs (paper)")
    g.add_argument("--teacher-mode", dest="teacher_mode", choices=("caffe-decay", "frozen"), default="caffe-decay",
                   help="KD stages: the teacher decays as Caffe's lr_mult 1 does (released) or stays frozen")
    g.add_argument("--regions", choices=("all", "topk"), default="all",
                   help="stage 1's regions: all (released code) or topk by teacher objectness (paper's R')")
    g.add_argument("--topk", type=int, default=50, help="regions kept with --regions topk")
    g = p.add_argument_group("run")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--checkpoint-period", type=int, default=1000,
                   help="iterations between checkpoints (0: only final.pt)")
    g.add_argument("--keep-checkpoints", type=int, default=DEFAULT_KEEP_CHECKPOINTS,
                   help=f"checkpoints kept on disk, newest first (0: all; default {DEFAULT_KEEP_CHECKPOINTS})")
    g.add_argument("--eval-period", type=int, default=0, help="0: only after the last iteration")
    g.add_argument("--log-period", type=int, default=1, help="iterations between rows of log.csv")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights, shuffling and dropout")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (and cudnn)")
    g.add_argument("--amp", action="store_true", help="mixed precision (fp32 is the faithful mode)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--memory-format", default="channels_last", choices=("channels_last", "contiguous"),
                   help="layout of a --stage net's activations (default channels_last, the faster one)")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs (log.csv is always written)")
    g.add_argument("--embed-teacher", action="store_true",
                   help="KD stages: final.pt (and, with --teacher-mode frozen, the checkpoints) carry the teacher's "
                        "weights; by default they refer to the --teacher file by path and SHA-256")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return p


def parse_scales(text: str) -> Tuple[float, ...]:
    if text == "released":
        return RELEASED_SCALES
    if text in ("none", ""):
        return ()
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise UserInputError(f"--scales: expected 'released', 'none' or comma-separated numbers, got {text!r}") from None


def parse_lr_mults(items: Sequence[str]) -> Dict[str, tuple]:
    """--lr-mult KIND=LR[,DECAY] items -> NetConfig.multipliers (released values elsewhere)."""
    mults = dict(RELEASED_MULTIPLIERS)
    for item in items:
        kind, eq, value = item.partition("=")
        kind = kind.strip()
        if not eq or kind not in mults or kind == "region_sum":
            raise UserInputError(f"--lr-mult {item!r}: expected KIND=LR[,DECAY] with KIND one of "
                                 f"{', '.join(k for k in mults if k != 'region_sum')}")
        try:
            nums = [float(v) for v in value.split(",")]
        except ValueError:
            nums = []
        if not 1 <= len(nums) <= 2 or not all(np.isfinite(nums)) or min(nums) < 0:
            raise UserInputError(f"--lr-mult {item!r}: LR and DECAY must be non-negative numbers")
        lr, decay = nums[0], nums[1] if len(nums) == 2 else nums[0]
        old = mults[kind]
        mults[kind] = ((lr, decay), (2.0 * lr, 0.0)) if len(old) == 2 else ((lr, decay),)
    return mults


def _parse_stepvalue(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserInputError(f"--stepvalue: expected comma-separated iterations, got {text!r}") from None


def net_from_args(args):
    """The NetConfig the network flags describe (counts: placeholders the datalist sets)."""
    kw = dict(input_size=args.input_size, student_size=args.student_size, width=args.width, fc_dim=args.fc_dim,
              dropout=args.dropout, pooled_size=args.pooled_size)
    if args.body:
        kw["body"] = tuple(s.strip() for s in args.body.split(",") if s.strip())
    if args.lr_mult:
        kw["multipliers"] = parse_lr_mults(args.lr_mult)
    try:
        return NetConfig(**kw)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None


def config_from_args(args) -> TrainConfig:
    """tools/train.py's flags as a TrainConfig."""
    return TrainConfig(
        out=args.out, stage=args.stage, prototxt=args.prototxt, weights=args.weights, teacher=args.teacher,
        allow_untrained_teacher=args.allow_untrained_teacher,
        net=None if args.prototxt else net_from_args(args),
        switches=Switches(kd_loss=args.kd_loss, stage1_train=args.stage1_train, teacher=args.teacher_mode,
                          regions=args.regions, topk=args.topk),
        data=DataConfig(train=args.datalist, test=args.test_datalist, root_folder=args.root_folder,
                        num_classes=args.num_classes, batch_size=args.batch_size,
                        test_batch_size=args.test_batch_size, scales=parse_scales(args.scales),
                        mirror=not args.no_mirror, input_scale=args.input_scale, workers=args.workers,
                        image_cache_mb=args.image_cache_mb),
        solver=SolverConfig(file=args.solver, base_lr=args.base_lr, lr_policy=args.lr_policy, gamma=args.gamma,
                            stepsize=args.stepsize, stepvalue=_parse_stepvalue(args.stepvalue), power=args.power,
                            momentum=args.momentum, weight_decay=args.weight_decay, max_iter=args.max_iter,
                            iter_size=args.iter_size),
        run=RunConfig(resume=args.resume, checkpoint_period=args.checkpoint_period,
                      keep_checkpoints=args.keep_checkpoints, eval_period=args.eval_period,
                      log_period=args.log_period, seed=args.seed, deterministic=args.deterministic, amp=args.amp,
                      memory_format=args.memory_format, device=args.device, tensorboard=not args.no_tensorboard, progress=not args.quiet,
                      embed_teacher=args.embed_teacher))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """tools/train.py: 0 on success, 2 for bad input (one sentence on stderr); with no
    arguments the embedded demo (mlic.cli.demo)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        from mlic.cli.demo import main as demo_main

        return demo_main([])
    p = add_train_arguments(argparse.ArgumentParser(description="Train a stage of the method (Caffe semantics).",
                                                    epilog=NO_ARGUMENTS))
    args = p.parse_args(argv)
    return run_tool("train.py", lambda: train(config_from_args(args)), debug=args.debug)
