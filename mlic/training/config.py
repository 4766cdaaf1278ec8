"""The configuration of a training or test run: what `train(cfg)` and `evaluate(cfg)` take.

The command-line tools map their flags onto these objects; a notebook builds them directly:

    from prototxt_ports import NetConfig
    from mlic.training import DataConfig, EvalConfig, SolverConfig, TrainConfig, evaluate, train

    final = train(TrainConfig(stage="wsddn", out="runs/teacher",
                              data=DataConfig(train="train.txt", test="test.txt"),
                              solver=SolverConfig(base_lr=5e-5, max_iter=40000),
                              weights="VGG_ILSVRC_16_layers.caffemodel"))
    metrics = evaluate(EvalConfig(weights=final, datalist="test.txt", multiscale=True))
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

from mlic.errors import UserInputError
from mlic.solver import LR_POLICIES
from mlic.training.tasks import STAGES, Switches
from prototxt_ports.base import MEMORY_FORMATS
from prototxt_ports.config import RELEASED_MEAN_BGR

# The data layer's scale factors of the released training (SPEC section 2).
RELEASED_SCALES = (0.714286, 0.857143, 1.0, 1.095239, 1.238096)
BGR_MEAN = RELEASED_MEAN_BGR

STAGE_DEFAULTS = {  # batch, base_lr, max_iter
    "wsddn": (32, 5e-5, 20000),
    "stage1": (32, 1e-4, 20000),
    "stage2": (28, 1e-4, 20000),
    "student": (32, 1e-3, 20000),
}
# --prototxt nets take the teacher's rates unless given
PROTOTXT_DEFAULTS = STAGE_DEFAULTS["wsddn"]
DEFAULT_KEEP_CHECKPOINTS = 2


@dataclass
class DataConfig:
    """The datalists and the data layer's settings (the net's input_size is the resize side).

    train / test: datalists (image labels... x1 y1 x2 y2 score ...); test is evaluated every
      RunConfig.eval_period iterations and after the last one.
    batch_size: images per process (None: the stage's released value); with --prototxt it
      overrides the HumanAttData layer's batch_size, as train/root_folder override its
      source/root_folder.
    scales: the scale factors drawn per batch (RELEASED_SCALES; () for none).
    num_classes: labels per datalist line (None: read from the datalist's layout).
    image_cache_mb: decoded training images kept in memory so that later epochs do not
      decode them again (0: none; the embedded runs keep them all).
    """

    train: Optional[str] = None
    test: Optional[str] = None
    root_folder: str = ""
    num_classes: Optional[int] = None
    batch_size: Optional[int] = None
    test_batch_size: Optional[int] = None
    scales: Tuple[float, ...] = RELEASED_SCALES
    mirror: bool = True
    input_scale: float = 1.0
    workers: int = 0
    image_cache_mb: int = 0


@dataclass
class SolverConfig:
    """Caffe SGD. `file`: a solver.prototxt whose rates, policy, momentum, weight decay,
    iter_size and max_iter are used (its net fields are ignored); the other fields then
    stay unused, except max_iter, which overrides the file's. base_lr / max_iter None: the
    stage's default."""

    file: Optional[str] = None
    base_lr: Optional[float] = None
    lr_policy: str = "fixed"
    gamma: Optional[float] = None
    stepsize: Optional[int] = None
    stepvalue: Tuple[int, ...] = ()
    power: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 0.0005
    max_iter: Optional[int] = None
    iter_size: int = 1


@dataclass
class RunConfig:
    """How the run is carried out. memory_format: the layout of the ports' conv bodies
    ("channels_last", the faster one on CPUs and GPUs, or "contiguous"; the same values
    either way, up to the convolution's order of sums). checkpoint_period: iterations between checkpoints (0:
    none before final.pt); keep_checkpoints: how many of them stay on disk (0: all);
    eval_period: 0 evaluates only after the last iteration; embed_teacher: a KD stage's
    final.pt (and with a frozen teacher its checkpoints) carry the teacher's weights instead
    of referring to the --teacher file by path and SHA-256."""

    resume: bool = False
    checkpoint_period: int = 1000
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS
    eval_period: int = 0
    log_period: int = 1
    seed: int = 0
    deterministic: bool = False
    amp: bool = False
    device: Optional[str] = None
    memory_format: str = "channels_last"
    tensorboard: bool = True
    progress: bool = True
    embed_teacher: bool = False


@dataclass
class TrainConfig:
    """One training run: a stage of the method (`stage`) or a Caffe net (`prototxt`).

    net: the port's sizes (prototxt_ports.NetConfig; None: the released sizes). Its
      num_classes and num_rois come from the training datalist: a net whose counts differ
      from both the data and NetConfig's defaults is refused as a contradiction.
    weights: initial weights by Caffe layer name, comma-separated like Caffe's -weights a,b
      (later files win): caffemodels, our checkpoints and .pt files, torchvision:vgg16
      (mlic.caffe.weight_files);
    teacher: the trained WSDDN of a KD net (checkpoint or caffemodel), mapped onto its
      teacher layers (*_wsd_*) and loaded last; a KD net whose teacher layers keep their
      initial values is refused unless allow_untrained_teacher.
    """

    out: Optional[str] = None
    stage: Optional[str] = None
    prototxt: Optional[str] = None
    weights: Optional[str] = None
    teacher: Optional[str] = None
    allow_untrained_teacher: bool = False
    net: Optional[object] = None
    switches: Switches = field(default_factory=Switches)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Raise UserInputError for the first inconsistent field (CLI flag names in brackets)."""
        if self.prototxt and self.stage:
            raise UserInputError("--stage and --prototxt exclude each other: a stage trains our port, "
                                 "--prototxt a Caffe net")
        if not self.out:
            raise UserInputError("--out is required (the folder for checkpoints, logs and final.pt)")
        if not self.prototxt:
            if not self.stage:
                raise UserInputError("--stage or --prototxt is required (run tools/demo.py for the embedded demo)")
            if self.stage not in STAGES:
                raise UserInputError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
            if not self.data.train:
                raise UserInputError(f"--stage {self.stage} needs --datalist (the training datalist)")
        if self.stage in ("stage1", "stage2") and not self.teacher and not self.allow_untrained_teacher:
            raise UserInputError(f"--stage {self.stage} needs --teacher (the trained WSDDN), or "
                                 f"--allow-untrained-teacher")
        positive = (("--max-iter", self.solver.max_iter), ("--batch-size", self.data.batch_size),
                    ("--test-batch-size", self.data.test_batch_size), ("--iter-size", self.solver.iter_size))
        for flag, value in positive:
            if value is not None and value < 1:
                raise UserInputError(f"{flag} must be at least 1, got {value}")
        for flag, value in (("--checkpoint-period", self.run.checkpoint_period),
                            ("--keep-checkpoints", self.run.keep_checkpoints),
                            ("--eval-period", self.run.eval_period), ("--workers", self.data.workers),
                            ("--image-cache-mb", self.data.image_cache_mb)):
            if value < 0:
                raise UserInputError(f"{flag} must be 0 or more, got {value}")
        if self.run.log_period < 1:
            raise UserInputError(f"--log-period must be at least 1, got {self.run.log_period}")
        s = self.solver
        for flag, value in (("--base-lr", s.base_lr), ("--momentum", s.momentum),
                            ("--weight-decay", s.weight_decay)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserInputError(f"{flag} must be a finite number >= 0, got {value}")
        if s.lr_policy not in LR_POLICIES:
            raise UserInputError(f"--lr-policy must be one of {', '.join(LR_POLICIES)}, got {s.lr_policy!r}")
        if any(not (math.isfinite(f) and f > 0) for f in self.data.scales):
            raise UserInputError(f"--scales: every factor must be a positive number, got {self.data.scales}")
        if not (math.isfinite(self.data.input_scale) and self.data.input_scale > 0):
            raise UserInputError(f"--input-scale must be a positive number, got {self.data.input_scale}")
        if self.run.memory_format not in MEMORY_FORMATS:
            raise UserInputError(f"--memory-format must be one of {', '.join(MEMORY_FORMATS)}, "
                                 f"got {self.run.memory_format!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.net is not None:
            d["net"] = asdict(self.net)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The inverse of to_dict (e.g. after a JSON round trip, which turns tuples into lists)."""
        from prototxt_ports import NetConfig

        d = dict(d)
        net = d.pop("net", None)
        if net is not None:
            net = dict(net, body=tuple(net["body"]),
                       multipliers={k: tuple(tuple(x) for x in v) for k, v in net["multipliers"].items()})
            net = NetConfig(**net)
        data, solver = dict(d.pop("data")), dict(d.pop("solver"))
        data["scales"], solver["stepvalue"] = tuple(data["scales"]), tuple(solver["stepvalue"])
        return cls(net=net, switches=Switches(**d.pop("switches")), data=DataConfig(**data),
                   solver=SolverConfig(**solver), run=RunConfig(**d.pop("run")), **d)


@dataclass
class EvalConfig:
    """One test run (tools/test.py).

    weights: final.pt or a checkpoint written by train(); datalist: the test datalist;
    out: folder for scores.csv, metrics.json and figures (None: nothing written);
    multiscale: fuse the 5 training scales and their mirrors; gt: ground-truth boxes for
    CorLoc / detection AP (teacher only); class_names: text file, one name per line.
    """

    weights: Optional[str] = None
    datalist: Optional[str] = None
    root_folder: str = ""
    out: Optional[str] = None
    batch_size: int = 8
    multiscale: bool = False
    gt: Optional[str] = None
    class_names: Optional[str] = None
    figures: bool = False
    device: Optional[str] = None
    progress: bool = True

    def validate(self) -> None:
        if not self.weights:
            raise UserInputError("--weights is required (final.pt or a checkpoint written by tools/train.py)")
        if not self.datalist:
            raise UserInputError("--datalist is required (the test datalist)")
        if self.batch_size < 1:
            raise UserInputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.figures and not self.out:
            raise UserInputError("--figures needs --out (the folder the figures are written to)")
