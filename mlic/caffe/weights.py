"""Weights: caffemodel <-> CaffeNet <-> plain parameter dicts.

A caffemodel's layers are matched to the net's by name (the last net layer of that
name, as Caffe's CopyTrainedLayersFrom does). Blob shapes must match exactly; blobs
written with the legacy num/channels/height/width fields match when the net's shape,
padded with leading 1s to 4 axes, is the same (an InnerProduct weight stored as
1 x 1 x out x in, a bias as 1 x 1 x 1 x out) and are reshaped on load.

The plain parameter dict ("param dict") maps ``'<layer>/<i>'`` to the i-th learnable
blob of that layer (Caffe's order: weight, then bias), the key convention of the
reference cases; it is saved with torch.save.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

from mlic.caffe import proto
from mlic.caffe.errors import CaffemodelError
from mlic.caffe.io import (StoredLayer, array_to_blob, blob_to_array, caffemodel_layers, is_legacy_blob,
                           read_caffemodel, write_binary)
from mlic.errors import OutputError
from mlic.integrity import write_with_hash


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


def _renamed(stored: List[StoredLayer], rename) -> List[StoredLayer]:
    fn = name_map(rename)
    if fn is None:
        return stored
    return [StoredLayer(fn(sl.name), sl.type, sl.blobs) for sl in stored]


def load_caffemodel(net, source, strict: bool = False, rename=None) -> LoadReport:
    """Copy the blobs of a caffemodel (path or NetParameter) into `net`.

    `rename`: a dict or callable mapping the file's layer names to the net's (e.g. to
    load a WSDDN model into the teacher layers conv_wsd_* of the KD nets)."""
    if isinstance(source, proto.NetParameter):
        name, msg = "<NetParameter>", source
    else:
        name = os.fspath(source)
        msg = read_caffemodel(name)
    stored = _renamed(caffemodel_layers(msg), rename)
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


def net_to_caffemodel(net) -> "proto.NetParameter":
    """The net as a NetParameter with its layers (as built: phase-filtered, with splits)
    and their learnable blobs, as Caffe's Net::ToProto writes it."""
    out = proto.NetParameter()
    out.name = net.name
    for lp, module in zip(net.layer_params, net.layers.values()):
        layer = out.layer.add()
        layer.CopyFrom(lp)
        del layer.blobs[:]
        for p in module.caffe_blobs():
            array_to_blob(p.detach().cpu().numpy(), layer.blobs.add())
    return out


def save_caffemodel(net, path) -> None:
    write_binary(net_to_caffemodel(net), path)


# ----------------------------------------------------------------------------- param dicts


def _normalize_legacy(layer_type: str, index: int, shape: tuple, legacy: bool) -> tuple:
    """Modern shape of a legacy 4-D blob, without a net to ask: InnerProduct weights
    become (out, in), biases (out,); other blobs keep their 4-D shape."""
    if not legacy:
        return shape
    if layer_type == "InnerProduct" and index == 0 and shape[0] == 1 and shape[1] == 1:
        return (shape[2], shape[3])
    if index == 1 and layer_type in ("InnerProduct", "Convolution", "Deconvolution") and shape[:3] == (1, 1, 1):
        return (shape[3],)
    return shape


def caffemodel_to_param_dict(source) -> "OrderedDict[str, torch.Tensor]":
    """{'layer/i': tensor} straight from a caffemodel (no net needed)."""
    if isinstance(source, proto.NetParameter):
        name, msg = "<NetParameter>", source
    else:
        name = os.fspath(source)
        msg = read_caffemodel(name)
    out = OrderedDict()
    for sl in caffemodel_layers(msg):
        for i, b in enumerate(sl.blobs):
            a = blob_to_array(b, f"{name}: layer '{sl.name}' blob {i}")
            shape = _normalize_legacy(sl.type, i, tuple(a.shape), is_legacy_blob(b))
            out[f"{sl.name}/{i}"] = torch.from_numpy(a.reshape(shape).copy())
    return out


def save_param_dict(d, path) -> None:
    """torch.save of the dict, atomically and with its SHA-256 beside it (mlic.integrity)."""
    d = OrderedDict((k, v.detach().cpu()) for k, v in d.items())
    write_with_hash(path, lambda f: torch.save(d, f), OutputError)


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
