"""The base of the Caffe layers: Layer (Caffe's SetUp and the bottom/top rules), the
registry of layer types, Caffe's fillers and the build context."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch import nn

from mlic.caffe import proto
from mlic.caffe.errors import NetBuildError
from mlic.ops import geometry

Shape = Tuple[int, ...]

# ----------------------------------------------------------------------------- fillers

SUPPORTED_FILLERS = ("constant", "gaussian", "uniform", "xavier", "msra", "positive_unitball")


def fill_(t: torch.Tensor, filler, where: str) -> torch.Tensor:
    """Fill `t` in place as Caffe's filler `filler` would (drawing from torch's RNG)."""
    kind = filler.type
    shape = tuple(t.shape)
    with torch.no_grad():
        if kind == "constant":
            t.fill_(filler.value)
        elif kind == "uniform":
            t.uniform_(filler.min, filler.max)
        elif kind == "gaussian":
            t.normal_(filler.mean, filler.std)
            if filler.sparse >= 0:
                if len(shape) < 1 or shape[0] < 1:
                    raise NetBuildError(f"{where}: sparse gaussian filler needs a blob with a first axis")
                p = filler.sparse / shape[0]
                t.mul_(torch.bernoulli(torch.full_like(t, min(max(p, 0.0), 1.0))))
        elif kind == "xavier":
            geometry.xavier_(t, proto.enum_name(filler, "variance_norm"))
        elif kind == "msra":
            geometry.msra_(t, proto.enum_name(filler, "variance_norm"))
        elif kind == "positive_unitball":
            t.uniform_(0, 1)
            if len(shape) >= 1 and shape[0]:
                flat = t.view(shape[0], -1)
                flat.div_(flat.sum(1, keepdim=True))
        else:
            raise NetBuildError(f"{where}: unknown filler type {kind!r}; supported: {', '.join(SUPPORTED_FILLERS)}")
    return t


def _constant_filler(value: float):
    f = proto.FillerParameter()
    f.type = "constant"
    f.value = value
    return f


# ----------------------------------------------------------------------------- helpers


def canonical_axis(axis: int, num_axes: int, what: str) -> int:
    if not -num_axes <= axis < max(num_axes, 1) or (num_axes == 0 and axis not in (0, -1)):
        raise ValueError(f"{what}: axis {axis} is out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: Optional[int] = None) -> int:
    end = len(shape) if end is None else end
    return int(np.prod(shape[start:end], dtype=np.int64)) if end > start else 1


# ----------------------------------------------------------------------------- base class


class Layer(nn.Module):
    """One Caffe layer. Subclasses set TYPE, the bottom/top count rules, and implement
    setup() (shapes and parameter blobs) and forward()."""

    TYPE = ""
    MIN_BOTTOMS, MAX_BOTTOMS = 0, None
    MIN_TOPS, MAX_TOPS = 0, None
    IS_LOSS = False
    # bottoms that never receive a gradient (Caffe's LossLayer refuses to backpropagate to
    # its label input; AllowForceBackward is false for them)
    LABEL_BOTTOMS: Tuple[int, ...] = ()
    # forward result is exact / within 1e-5 of Caffe given the same inputs (compare tool)
    EXACT = False
    TIGHT = True

    def __init__(self, lp, bottom_shapes: List[Shape], ctx):
        super().__init__()
        self.lp = lp
        self.layer_name = lp.name
        self.bottom_names = list(lp.bottom)
        self.top_names = list(lp.top)
        self.phase = ctx.phase
        self._where = ctx.where
        self._check_counts()
        self.top_shapes: List[Shape] = list(self.setup([tuple(s) for s in bottom_shapes], ctx))
        if len(self.top_shapes) != len(self.top_names):
            raise AssertionError(f"{self.TYPE}.setup returned {len(self.top_shapes)} shapes")

    # -- errors
    def error(self, msg: str) -> NetBuildError:
        return NetBuildError(f"{self._where}: layer '{self.layer_name}' (type {self.TYPE}): {msg}")

    def runtime_error(self, msg: str) -> ValueError:
        return ValueError(f"{self._where}: layer '{self.layer_name}' (type {self.TYPE}): {msg}")

    def _check_counts(self):
        nb, nt = len(self.bottom_names), len(self.top_names)
        if nb < self.MIN_BOTTOMS or (self.MAX_BOTTOMS is not None and nb > self.MAX_BOTTOMS):
            raise self.error(f"takes {self._range(self.MIN_BOTTOMS, self.MAX_BOTTOMS)} bottom(s), got {nb}")
        if nt < self.MIN_TOPS or (self.MAX_TOPS is not None and nt > self.MAX_TOPS):
            raise self.error(f"takes {self._range(self.MIN_TOPS, self.MAX_TOPS)} top(s), got {nt}")

    @staticmethod
    def _range(lo, hi):
        if hi is None:
            return f"at least {lo}"
        return str(lo) if lo == hi else f"{lo} to {hi}"

    # -- parameters
    def caffe_blobs(self) -> List[nn.Parameter]:
        """The learnable blobs in Caffe order."""
        return [p for p in (getattr(self, "weight", None), getattr(self, "bias", None)) if p is not None]

    def blob_keys(self) -> List[str]:
        """Names of caffe_blobs() as module attributes ('weight', 'bias')."""
        return [k for k in ("weight", "bias") if getattr(self, k, None) is not None]

    def _new_param(self, shape: Shape, filler, what: str) -> nn.Parameter:
        t = torch.empty(shape, dtype=torch.float32)
        fill_(t, filler, f"{self._where}: layer '{self.layer_name}' {what}")
        return nn.Parameter(t)

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom not in self.LABEL_BOTTOMS

    def setup(self, bottom_shapes: List[Shape], ctx) -> List[Shape]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.layer_name!r}, bottoms={self.bottom_names}, tops={self.top_names}"


LAYERS: Dict[str, Type[Layer]] = {}


def register(cls: Type[Layer]) -> Type[Layer]:
    LAYERS[cls.TYPE] = cls
    return cls


def supported_layer_types() -> List[str]:
    return sorted(LAYERS)


class BuildContext:
    """What a layer is built with: the phase, where it is defined (for messages), the
    mlic.ops back end its ops run on (one of mlic.ops.BACKENDS), and the data layer's
    folder and seed."""

    def __init__(self, phase: int, where: str = "<net>", ops_backend: str = "auto", data_dir=None, data_seed=0):
        self.phase = phase
        self.where = where
        self.ops_backend = ops_backend
        self.data_dir = data_dir
        self.data_seed = data_seed
