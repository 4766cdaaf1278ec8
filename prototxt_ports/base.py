"""Caffe bookkeeping shared by the ports: which module holds the learnable blobs of
which Caffe layer, their lr_mult/decay_mult, and weight loading/saving by layer name.

A port registers each Caffe layer that has learnable blobs (Convolution, InnerProduct,
Scale) under its released layer name; the blobs are the module's ``weight`` and, when
present, ``bias`` (Caffe's blob order). ``caffe_param_map`` is the one place that maps
Caffe's (layer name, blob index) to our parameters.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from mlic.ops import geometry

Mults = Tuple[Tuple[float, float], ...]


@dataclass
class CaffeLayerEntry:
    name: str            # Caffe layer name
    type: str            # Caffe layer type (for a written caffemodel)
    module: nn.Module    # holds .weight (and .bias)
    mults: Mults         # (lr_mult, decay_mult) per blob, as the prototxt gives them
    override: Optional[Tuple[float, float]] = None  # (lr, decay) for every blob, e.g. frozen

    @property
    def blobs(self) -> List[nn.Parameter]:
        out = [self.module.weight]
        if getattr(self.module, "bias", None) is not None:
            out.append(self.module.bias)
        return out

    def multipliers(self) -> List[Tuple[float, float]]:
        blobs = self.blobs
        if len(self.mults) < len(blobs):
            raise AssertionError(f"layer {self.name}: {len(self.mults)} multipliers for {len(blobs)} blobs")
        if self.override is not None:
            return [self.override] * len(blobs)
        return list(self.mults[: len(blobs)])


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


class CaffePort(nn.Module):
    """Base of the ports: Caffe layer registry, param_specs, weight I/O."""

    # layout of the conv bodies' activations and weights (set_memory_format); the values
    # are the same in either, the speed is not
    memory_format = torch.contiguous_format

    def __init__(self):
        super().__init__()
        self._caffe_entries: "OrderedDict[str, CaffeLayerEntry]" = OrderedDict()

    def set_memory_format(self, name: str) -> "CaffePort":
        """Runs the conv bodies in `name`: "channels_last" (N x H x W x C in memory: the
        layout oneDNN's CPU convolutions and pooling, and cuDNN's fast paths, want) or
        "contiguous" (N x C x H x W). Converts the 4-D weights; returns self."""
        if name not in MEMORY_FORMATS:
            raise ValueError(f"memory format must be one of {', '.join(MEMORY_FORMATS)}, got {name!r}")
        fmt = MEMORY_FORMATS[name]
        for m in self.modules():
            if isinstance(m, CaffePort):
                m.memory_format = fmt
        return self.to(memory_format=fmt)

    # -- registration
    def _add_caffe_layer(self, name: str, type_: str, module: nn.Module, mults: Mults) -> nn.Module:
        if name in self._caffe_entries:
            raise ValueError(f"Caffe layer {name!r} registered twice")
        setattr(self, name, module)
        self._caffe_entries[name] = CaffeLayerEntry(name, type_, module, tuple(mults))
        self._apply_mults(self._caffe_entries[name])
        return module

    @staticmethod
    def _apply_mults(entry: CaffeLayerEntry) -> None:
        for p, (lr, dm) in zip(entry.blobs, entry.multipliers()):
            p.lr_mult, p.decay_mult = float(lr), float(dm)
            p.requires_grad_(lr != 0)
        for i, p in enumerate(entry.blobs):
            p.caffe_name = f"{entry.name}/{i}"

    def caffe_entries(self) -> List[CaffeLayerEntry]:
        """The Caffe layers with learnable blobs, in prototxt order (sub-ports included)."""
        return list(self._caffe_entries.values())

    def set_multipliers(self, lr_mult: float, decay_mult: float, layers=None) -> None:
        """Override (lr_mult, decay_mult) of every blob of `layers` (names; default all);
        lr_mult 0 also sets requires_grad False."""
        wanted = None if layers is None else set(layers)
        for e in self.caffe_entries():
            if wanted is None or e.name in wanted:
                e.override = (float(lr_mult), float(decay_mult))
                self._apply_mults(e)

    # -- views
    def caffe_param_map(self) -> "OrderedDict[Tuple[str, int], nn.Parameter]":
        """{(Caffe layer name, blob index): parameter}, in prototxt order."""
        out = OrderedDict()
        for e in self.caffe_entries():
            for i, p in enumerate(e.blobs):
                out[(e.name, i)] = p
        return out

    def caffe_params(self) -> "OrderedDict[str, List[nn.Parameter]]":
        """{layer: [blobs]} (the shape mlic.caffe.weights works on)."""
        return OrderedDict((e.name, e.blobs) for e in self.caffe_entries())

    def param_specs(self) -> List[Tuple[str, nn.Parameter, float, float]]:
        """[('layer/i', parameter, lr_mult, decay_mult)] for every learnable blob of the
        net, lr_mult 0 ones included, in prototxt order."""
        out = []
        for e in self.caffe_entries():
            for i, (p, (lr, dm)) in enumerate(zip(e.blobs, e.multipliers())):
                out.append((f"{e.name}/{i}", p, lr, dm))
        return out

    def param_groups(self, only_learnable: bool = False) -> List[dict]:
        """One param group per blob, {'params': [p], 'lr_mult', 'decay_mult', 'name'},
        the format of CaffeNet.param_groups (for mlic.solver.CaffeSGD)."""
        return [{"params": [p], "lr_mult": lr, "decay_mult": dm, "name": name}
                for name, p, lr, dm in self.param_specs() if not (only_learnable and lr == 0)]

    def param_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """{'layer/i': tensor} (detached), the key convention of mlic.caffe param dicts."""
        return OrderedDict((f"{layer}/{i}", p.detach()) for (layer, i), p in self.caffe_param_map().items())


def caffe_param_map(module: CaffePort) -> "OrderedDict[Tuple[str, int], nn.Parameter]":
    """{(Caffe layer name, blob index): parameter} of a port (see CaffePort)."""
    return module.caffe_param_map()


# ----------------------------------------------------------------------------- small layers


def caffe_conv(in_ch: int, out_ch: int, init: str) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
    with torch.no_grad():
        if init == "xavier":
            geometry.xavier_(conv.weight)
        else:
            conv.weight.zero_()
        conv.bias.zero_()
    return conv


def caffe_linear(in_f: int, out_f: int) -> nn.Linear:
    """InnerProduct with the prototxts' fillers: xavier weight, constant 0 bias."""
    fc = nn.Linear(in_f, out_f)
    geometry.xavier_(fc.weight)
    with torch.no_grad():
        fc.bias.zero_()
    return fc


class CaffeScale(nn.Module):
    """Caffe's Scale layer with one learnable blob (no bias): top = bottom * weight, the
    weight covering axes [axis, axis + weight.dim()) and broadcast over the rest."""

    def __init__(self, shape: Tuple[int, ...], axis: int, value: float):
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.full(tuple(shape), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.reshape(geometry.scale_view_shape(x.shape, self.axis, self.weight.shape))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}, axis={self.axis}"


class RegionSum(nn.Module):
    """The layer 'image_level_score': a 1x1 Convolution with one output and no bias over
    the N x B x C x 1 region-class scores; weight (1, B, 1, 1), filled with ones."""

    def __init__(self, num_rois: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, num_rois, 1, 1))
        self._ones_cache: Optional[Tuple[int, int, bool]] = None

    def is_ones(self) -> bool:
        """True while the weight is all ones (then the fused head's region sum is it)."""
        w = self.weight
        key = (w._version, w.data_ptr())
        if self._ones_cache is None or self._ones_cache[:2] != key:
            self._ones_cache = key + (bool(torch.all(w.detach() == 1)),)
        return self._ones_cache[2]

    def forward(self, region: torch.Tensor) -> torch.Tensor:
        """region [N, B, C] -> [N, C]: sum over b of weight[b] * region[:, b, :]."""
        w = self.weight.reshape(-1)
        if w.shape[0] != region.shape[1]:
            raise ValueError(f"image_level_score: weight has {w.shape[0]} regions, the scores {region.shape[1]}")
        return torch.einsum("nbc,b->nc", region, w.to(region.dtype))
