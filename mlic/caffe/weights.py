"""Weights into a net by layer name: a caffemodel's or a param dict's layers are matched to
the net's (a CaffeNet's ``params``, a port's ``caffe_params()``) by name (the last net
layer of that name, as Caffe's CopyTrainedLayersFrom does). Blob shapes must match
exactly; blobs written with the legacy num/channels/height/width fields match when the
net's shape, padded with leading 1s to 4 axes, is the same (an InnerProduct weight stored
as 1 x 1 x out x in, a bias as 1 x 1 x 1 x out) and are reshaped on load.

The plain parameter dict ("param dict") maps ``'<layer>/<i>'`` to the i-th learnable
blob of that layer (Caffe's order: weight, then bias), the key convention of the
reference cases; mlic.caffe.weight_files reads any weight file as one.

:func:`initialize_weights` is what training does with ``--weights a,b --teacher t``:
the files load in order by layer name (later files win, as Caffe's ``-weights a,b``),
then the teacher onto the KD net's teacher layers (``*_wsd_*``), and the report says
which layer came from which file.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from mlic.caffe import proto
from mlic.caffe import torchvision_vgg as tv
from mlic.caffe.errors import CaffemodelError
from mlic.caffe.io import StoredLayer, blob_to_array, caffemodel_layers, is_legacy_blob, read_caffemodel
from mlic.caffe.teacher import TEACHER_MARK, is_teacher_layer, referenced_teacher_file
from mlic.caffe.weight_files import WeightFile, layer_of, read_weight_file, split_sources, teacher_params


@dataclass
class LoadReport:
    """What a weight load did: layers loaded, net layers with parameters that the file
    lacks (kept at their initial values), file layers with blobs that the net lacks
    (ignored)."""

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    def __str__(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} layer(s)"]
        if self.missing:
            lines.append(f"  missing (kept their initial values): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {', '.join(self.unexpected)}")
        return "\n".join(lines)


def _legacy_matches(target: tuple, stored: tuple) -> bool:
    if len(target) > 4:
        return False
    padded = (1,) * (4 - len(target)) + tuple(target)
    return padded == tuple(stored)


def _copy_blobs(net, layer_name: str, arrays: List[np.ndarray], legacy: List[bool], source: str) -> None:
    targets = net.params[layer_name]
    if len(arrays) != len(targets):
        raise CaffemodelError(
            f"{source}: layer '{layer_name}' has {len(arrays)} blob(s) in the file but {len(targets)} in the net "
            f"(incompatible number of blobs)"
        )
    for i, (a, p, leg) in enumerate(zip(arrays, targets, legacy)):
        tshape = tuple(p.shape)
        if leg:
            ok = _legacy_matches(tshape, a.shape)
        else:
            ok = tuple(a.shape) == tshape
        if not ok:
            raise CaffemodelError(
                f"{source}: cannot copy blob {i} of layer '{layer_name}': shape mismatch, the file has "
                f"{list(a.shape)}{' (legacy num/channels/height/width)' if leg else ''}, the net expects "
                f"{list(tshape)}"
            )
    with torch.no_grad():
        for a, p in zip(arrays, targets):
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)).reshape(p.shape).to(p.dtype))


def name_map(rename):
    """A `rename` argument (None, a dict or a callable) as a callable or None."""
    if rename is None or callable(rename):
        return rename
    return lambda n: rename.get(n, n)


def _renamed_layers(stored: List[StoredLayer], rename) -> List[StoredLayer]:
    fn = name_map(rename)
    if fn is None:
        return stored
    return [StoredLayer(fn(sl.name), sl.type, sl.blobs) for sl in stored]


def _renamed_params(d, rename):
    fn = name_map(rename)
    if fn is None:
        return d
    out = OrderedDict()
    for k, v in d.items():
        layer, _, i = k.rpartition("/")
        out[f"{fn(layer)}/{i}"] = v
    return out


def load_caffemodel(net, source, strict: bool = False, rename=None) -> LoadReport:
    """Copy the blobs of a caffemodel (path or NetParameter) into `net`.

    `rename`: a dict or callable mapping the file's layer names to the net's (e.g. to
    load a WSDDN model into the teacher layers conv_wsd_* of the KD nets)."""
    if isinstance(source, proto.NetParameter):
        name, msg = "<NetParameter>", source
    else:
        name = os.fspath(source)
        msg = read_caffemodel(name)
    stored = _renamed_layers(caffemodel_layers(msg), rename)
    by_name: Dict[str, StoredLayer] = {}
    for sl in stored:
        by_name[sl.name] = sl  # like Caffe, a later layer of the same name wins
    report = LoadReport(name)
    for sl in stored:
        if not sl.blobs:
            continue
        if sl.name not in net.params:
            if sl.name not in report.unexpected:
                report.unexpected.append(sl.name)
    for layer_name in net.params:
        sl = by_name.get(layer_name)
        if sl is None or not sl.blobs:
            report.missing.append(layer_name)
            continue
        arrays = [blob_to_array(b, f"{name}: layer '{layer_name}' blob {i}") for i, b in enumerate(sl.blobs)]
        legacy = [is_legacy_blob(b) for b in sl.blobs]
        _copy_blobs(net, layer_name, arrays, legacy, name)
        report.loaded.append(layer_name)
    if strict and (report.missing or report.unexpected):
        raise CaffemodelError(f"strict load failed:\n{report}")
    return report


def load_param_dict(net, d, source: str = "<param dict>", strict: bool = False) -> LoadReport:
    """Copy {'layer/i': tensor} into `net` (exact shapes; legacy-padded 4-D shapes are
    accepted like in a caffemodel)."""
    grouped: Dict[str, Dict[int, torch.Tensor]] = OrderedDict()
    for k, v in d.items():
        layer, sep, idx = k.rpartition("/")
        if not sep or not idx.isdigit():
            raise CaffemodelError(f"{source}: key {k!r} is not of the form 'layer/index'")
        grouped.setdefault(layer, {})[int(idx)] = v
    report = LoadReport(source)
    for layer in grouped:
        if layer not in net.params:
            report.unexpected.append(layer)
    for layer in net.params:
        blobs = grouped.get(layer)
        if blobs is None:
            report.missing.append(layer)
            continue
        if sorted(blobs) != list(range(len(blobs))):
            raise CaffemodelError(f"{source}: layer '{layer}' has blob indices {sorted(blobs)}, expected 0..n-1")
        arrays = [blobs[i].detach().cpu().numpy() for i in range(len(blobs))]
        legacy = [a.ndim == 4 and tuple(a.shape) != tuple(p.shape) for a, p in zip(arrays, net.params[layer])]
        _copy_blobs(net, layer, arrays, legacy, source)
        report.loaded.append(layer)
    if strict and (report.missing or report.unexpected):
        raise CaffemodelError(f"strict load failed:\n{report}")
    return report


def load_weights(net, source, strict: bool = False, rename=None) -> LoadReport:
    """Copy weights into `net` (anything with ``params`` = {layer: [blobs]}) by layer
    name: a caffemodel (path or NetParameter), a {'layer/i': tensor} dict, or any weight
    file. `rename` maps the file's layer names to the net's (a dict or a callable)."""
    if isinstance(source, proto.NetParameter):
        rep = load_caffemodel(net, source, strict, rename)
    elif isinstance(source, dict):
        rep = load_param_dict(net, _renamed_params(source, rename), strict=strict)
    else:
        wf = read_weight_file(source)
        rep = load_param_dict(net, _renamed_params(wf.params, rename), wf.source, strict)
    if not rep.loaded and rep.unexpected:
        raise _shares_no_layer(rep.source, "weights", rep.unexpected, list(net.params))
    return rep


def net_params(model) -> "OrderedDict[str, list]":
    """{Caffe layer: [blobs]} of a port (caffe_params()) or a CaffeNet (params)."""
    if hasattr(model, "caffe_params"):
        return model.caffe_params()
    params = getattr(model, "params", None)
    if isinstance(params, dict):
        return params
    raise TypeError(f"{type(model).__name__} has no Caffe layer names (expected a prototxt port or a CaffeNet)")


class _View:
    def __init__(self, params):
        self.params = params


def load_port(port, source, strict: bool = False, rename=None) -> LoadReport:
    """load_weights into a prototxt port (prototxt_ports) by Caffe layer name: a
    caffemodel (path or NetParameter), any weight file, or a {'layer/i': tensor} dict.
    `rename` maps the file's layer names to the port's (e.g. wsddn_to_kd_name to load a
    WSDDN into a KD net's teacher). Shapes must match (legacy 4-D blobs are reshaped like
    Caffe does); `strict` raises on missing or unexpected layers."""
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"{os.fspath(source)}: no such weights file")
    return load_weights(_View(port.caffe_params()), source, strict=strict, rename=rename)


@dataclass
class Loaded:
    """One file's part in an initialisation."""

    file: WeightFile
    role: str               # "weights" or "teacher"
    layers: List[str]       # net layers it wrote
    ignored: List[str]      # its layers the net lacks
    how: str = ""           # e.g. how teacher names were mapped


@dataclass
class InitReport:
    """Which file each layer of the net came from, and which kept their initial values."""

    loads: List[Loaded] = field(default_factory=list)
    origin: "OrderedDict[str, str]" = field(default_factory=OrderedDict)
    initial: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        out = []
        for ld in self.loads:
            won = [l for l in ld.layers if self.origin.get(l) == ld.file.source]
            lost = [l for l in ld.layers if l not in won]
            s = f"{ld.role} {ld.file.describe()}: {len(won)} layer(s): {', '.join(won) or '-'}"
            if ld.how:
                s += f" [{ld.how}]"
            if lost:
                s += f"; later files replaced {', '.join(lost)}"
            if ld.ignored:
                s += f"; not in this net (ignored): {', '.join(ld.ignored)}"
            out.append(s)
        return out

    def warning(self) -> Optional[str]:
        """Which layers kept their initial values (when weights were given, or the teacher's)."""
        untrained = [l for l in self.initial if is_teacher_layer(l)]
        if not self.initial or not (self.loads or untrained):
            return None
        return (f"{len(self.initial)} layer(s) kept their initial values (their fillers; no weight file has them): "
                f"{', '.join(self.initial)}" + ("; the teacher among them is untrained, as allowed" if untrained
                                                 else ""))

    def __str__(self) -> str:
        w = self.warning()
        return "\n".join(self.lines() + ([w] if w else []))


def load_file(model_or_params, wf: WeightFile, role: str = "weights", params=None, how: str = "") -> Loaded:
    """Copy `wf` (or the given subset `params`) into the net by layer name; a file that
    shares no layer with the net is an error."""
    target = model_or_params if isinstance(model_or_params, dict) else net_params(model_or_params)
    d = wf.params if params is None else params
    file_layers = list(OrderedDict.fromkeys(layer_of(k) for k in d))
    if not any(l in target for l in file_layers):
        raise _shares_no_layer(wf.source, role, file_layers, list(target))
    rep = load_param_dict(_View(target), d, wf.source)
    return Loaded(wf, role, rep.loaded, rep.unexpected, how)


def _shares_no_layer(source: str, role: str, file_layers, net_layers) -> CaffemodelError:
    return CaffemodelError(f"{source}: shares no layer name with the net ({role}); the file has "
                           f"{_few(file_layers) or 'no layers'}, the net {_few(net_layers) or 'no learnable layers'}")


def _few(names: Sequence[str], n: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def initialize_weights(model, weights=None, teacher=None, *, allow_untrained_teacher: bool = False,
                       transform: Optional[tv.InputTransform] = None, strict: bool = False) -> InitReport:
    """Initialise a port or CaffeNet from weight files.

    weights: 'a,b' or a list; loaded in order by layer name, later files win.
    teacher: a trained WSDDN (our checkpoint, a caffemodel, a KD file's teacher) for the
      teacher layers (*_wsd_*) of a KD net; loaded last.
    A KD net whose teacher layers keep their initial values is an error unless
    `allow_untrained_teacher`. `transform` is the net's input transform (for
    torchvision weights). `strict`: every layer of the net must come from a file."""
    target = net_params(model)
    report = InitReport()
    for src in split_sources(weights):
        wf = read_weight_file(src, transform)
        report.loads.append(load_file(target, wf, "weights"))
    if teacher is not None:
        if not any(is_teacher_layer(l) for l in target):
            raise CaffemodelError(f"{os.fspath(teacher)}: a teacher was given but this net has no teacher layers "
                                  f"(*{TEACHER_MARK}*); the teacher is for the KD nets")
        wf = read_weight_file(teacher, transform)
        params, how = teacher_params(wf)
        report.loads.append(load_file(target, wf, "teacher", params, how))
    for ld in report.loads:
        for l in ld.layers:
            report.origin[l] = ld.file.source
            report.origin.move_to_end(l)
    report.initial = [l for l in target if l not in report.origin]
    untrained = [l for l in report.initial if is_teacher_layer(l)]
    if untrained and not allow_untrained_teacher:
        raise CaffemodelError(
            f"the teacher layers of this KD net would keep their initial values ({_few(untrained)}): give the "
            f"trained WSDDN as the teacher (--teacher: our checkpoint or a caffemodel), or allow an untrained "
            f"teacher explicitly (--allow-untrained-teacher)")
    if strict and report.initial:
        raise CaffemodelError(f"strict: no weight file has the layer(s) {_few(report.initial)}")
    return report


def load_referenced_teacher(model, ref: dict, what: str) -> InitReport:
    """Loads the teacher a KD checkpoint refers to (by path) into the net's teacher layers,
    after checking that the file is still the one it was trained with (SHA-256)."""
    return initialize_weights(model, None, referenced_teacher_file(ref, what))
