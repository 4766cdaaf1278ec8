"""Every weight file the project reads or writes, read as one thing: a param dict
``{'layer/i': tensor}`` under the released Caffe layer names (blob i of that layer in
Caffe's order: weight, then bias). What the file is, is told by its content:

  caffemodel    a binary NetParameter, current or legacy V1 form (Caffe, or our export)
  param-dict    torch.save of {'layer/i': tensor} (tools/convert_caffemodel.py OUT.pt)
  checkpoint    torch.save of {'model': state_dict, 'meta': {...}}: tools/train.py's
                final.pt and checkpoints, from --stage runs (our ports) and --prototxt
                runs (CaffeNet) alike; one that refers to its teacher (meta['teacher']:
                path and SHA-256) gets the teacher's layers from that file
  student       a student-only export (mlic.caffe.student_export): {'format': 'mlic-student', ...}
  state-dict    a module's state_dict saved by itself
  torchvision   torchvision's VGG16 ('torchvision:vgg16', 'torchvision:PATH', or such a
                file by content): mapped onto the released names with its input
                convention folded into conv1_1 (mlic.caffe.torchvision_vgg)

A state dict becomes Caffe names by the rule both our ports and CaffeNet follow: a
Caffe layer is a module attribute named after the layer, holding ``weight`` (blob 0)
and ``bias`` (blob 1), so ``teacher.conv_wsd_1_1.weight`` is ``conv_wsd_1_1/0`` and
``layers.fc7.bias`` is ``fc7/1``.

A caffemodel read as a param dict keeps its blobs' shapes, except legacy 4-D
num/channels/height/width blobs: an InnerProduct weight becomes (out, in), an InnerProduct
or convolution bias (out,). The writers here put a net's or a port's blobs into a caffemodel, and a param
dict into a torch.save file with its SHA-256 beside it. Loading into a net by layer name
is mlic.caffe.weights.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from mlic.caffe import proto
from mlic.caffe import torchvision_vgg as tv
from mlic.caffe.errors import CaffemodelError
from mlic.caffe.io import array_to_blob, blob_to_array, caffemodel_layers, is_legacy_blob, read_caffemodel, write_binary
from mlic.caffe.teacher import belongs_to_teacher, is_teacher_layer, referenced_teacher_file
from mlic.errors import OutputError
from mlic.integrity import verify_file, warn_unverified, write_with_hash
from prototxt_ports.wsddn import wsddn_to_kd_name

STUDENT_FORMAT = "mlic-student"


def layer_of(key: str) -> str:
    return key.rpartition("/")[0]


@dataclass
class WeightFile:
    """A weight file read as a param dict; ``source`` is what the user gave."""

    source: str
    kind: str
    params: "OrderedDict[str, torch.Tensor]"
    meta: dict = field(default_factory=dict)
    note: str = ""

    @property
    def layers(self) -> List[str]:
        return list(OrderedDict.fromkeys(layer_of(k) for k in self.params))

    def describe(self) -> str:
        return f"{self.source} ({self.kind}{', ' + self.note if self.note else ''})"


# ----------------------------------------------------------------------------- reading


def _is_torch_file(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"  # zip (torch >= 1.6) or a legacy pickle


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def torch_load(path: str, label: Optional[str] = None):
    """torch.load of a file the user named, after checking the hash recorded beside it
    (a checkpoint of tools/train.py without one is read with a warning), with every
    failure as one sentence naming it. (Full unpickling: checkpoints hold RNG states and
    metadata besides tensors.)"""
    label = label or path
    recorded = verify_file(path, label)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, UnpicklingError ...
        raise CaffemodelError(f"{label}: cannot read this torch.save file; it is truncated or corrupt "
                              f"({_reason(exc)})") from None
    if recorded is None and isinstance(obj, dict) and "model" in obj and "meta" in obj:
        warn_unverified(path, label)
    return obj


def check_finite(params, source: str) -> None:
    """Refuses weights holding nan or inf, naming the file and the layer."""
    for key, value in params.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            layer, _, i = key.rpartition("/")
            what = f"layer '{layer}' blob {i}" if layer and i.isdigit() else f"entry {key!r}"
            raise CaffemodelError(f"{source}: {what} holds {bad} non-finite value(s) (nan or inf); weights must "
                                  "be finite numbers")


def _is_param_dict(d) -> bool:
    return bool(d) and all(isinstance(k, str) and re.fullmatch(r".+/\d+", k) and isinstance(v, torch.Tensor)
                           for k, v in d.items())


def state_dict_to_param_dict(state, source: str = "<state dict>") -> "OrderedDict[str, torch.Tensor]":
    """A port's or CaffeNet's state dict under Caffe names (see the module docstring)."""
    per_layer: "OrderedDict[str, Dict[str, torch.Tensor]]" = OrderedDict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CaffemodelError(f"{source}: entry {key!r} is not a tensor; not a state dict of weights")
        path, _, kind = key.rpartition(".")
        layer = path.rpartition(".")[2]
        if kind not in ("weight", "bias") or not layer:
            raise CaffemodelError(f"{source}: entry {key!r} is not '<layer>.weight' or '<layer>.bias'; "
                                  f"not a state dict of Caffe-named layers")
        blobs = per_layer.setdefault(layer, {})
        if kind in blobs:
            raise CaffemodelError(f"{source}: two entries give layer '{layer}' a {kind} (the second is {key!r})")
        blobs[kind] = value
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for layer, blobs in per_layer.items():
        for i, kind in enumerate(k for k in ("weight", "bias") if k in blobs):
            out[f"{layer}/{i}"] = blobs[kind].detach().cpu()
    return out


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


def read_weight_file(source, transform: Optional[tv.InputTransform] = None) -> WeightFile:
    """Any weight file (see the module docstring) as a :class:`WeightFile`.

    ``transform``: the net's input transform, needed to fold torchvision's input
    convention into conv1_1 (only read for torchvision files)."""
    label = os.fspath(source)
    path = tv.resolve(label) if tv.is_torchvision_spec(label) else label
    if not os.path.exists(path):
        raise CaffemodelError(f"{label}: no such weights file")
    if os.path.isdir(path):
        raise CaffemodelError(f"{label}: a folder, not a weights file")
    if os.path.getsize(path) == 0:
        raise CaffemodelError(f"{label}: empty file, not a weights file")
    if not _is_torch_file(path):
        if tv.is_torchvision_spec(label):
            raise CaffemodelError(f"{label}: {path} is not a torch.save file")
        verify_file(path, label)
        return WeightFile(label, "caffemodel", caffemodel_to_param_dict(path))  # non-finite blobs refused there
    wf = _read_torch_weights(label, path, transform)
    check_finite(wf.params, label)
    return wf


def _read_torch_weights(label: str, path: str, transform) -> WeightFile:
    obj = torch_load(path, label)
    if tv.looks_like_vgg16(obj):
        if transform is None:
            raise CaffemodelError(f"{label}: torchvision VGG16 weights need the net's input transform (mean, "
                                  f"scale) to fold their RGB / [0,1] / mean-std convention into conv1_1")
        return WeightFile(label, "torchvision", tv.vgg16_param_dict(obj, transform, label),
                          note=f"torchvision VGG16, its input convention folded into conv1_1 for BGR minus "
                               f"{list(transform.mean_bgr)} times {transform.scale:g}")
    if tv.is_torchvision_spec(label):
        raise CaffemodelError(f"{label}: {path} is not torchvision's VGG16 state dict")
    if isinstance(obj, dict) and obj.get("format") == STUDENT_FORMAT:
        params = obj.get("params")
        if not _is_param_dict(params):
            raise CaffemodelError(f"{label}: a student export without its 'params' ('layer/i' -> tensor)")
        return WeightFile(label, "student", OrderedDict(params), dict(obj))
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        stage = meta.get("stage")
        wf = WeightFile(label, "checkpoint", state_dict_to_param_dict(obj["model"], label), meta,
                        note=f"stage {stage}" if stage else "")
        return _with_referenced_teacher(wf)
    if isinstance(obj, dict) and _is_param_dict(obj):
        return WeightFile(label, "param-dict", OrderedDict(obj))
    if isinstance(obj, dict) and obj:
        return WeightFile(label, "state-dict", state_dict_to_param_dict(obj, label))
    raise CaffemodelError(f"{label}: a torch.save file but not weights (expected a checkpoint of tools/train.py, "
                          f"a 'layer/i' param dict, a student export or a state dict)")


def _with_referenced_teacher(wf: WeightFile) -> WeightFile:
    """A KD checkpoint that refers to its teacher (meta["teacher"]: the --teacher file's
    path and SHA-256) instead of holding it gets the teacher's layers from that file,
    which must still be the one it was trained with."""
    ref = wf.meta.get("teacher")
    if not isinstance(ref, dict) or ref.get("embedded") or any(is_teacher_layer(l) for l in wf.layers):
        return wf
    path = referenced_teacher_file(ref, wf.source)
    teacher, _ = teacher_params(read_weight_file(path))
    layers = ref.get("layers")  # the teacher layers the run took from the file (a stage-1 net has no heads)
    params = OrderedDict(wf.params)
    params.update((k, v) for k, v in teacher.items() if layers is None or layer_of(k) in layers)
    return WeightFile(wf.source, wf.kind, params, wf.meta, f"{wf.note + ', ' if wf.note else ''}teacher from {path}")


def teacher_params(wf: WeightFile) -> Tuple["OrderedDict[str, torch.Tensor]", str]:
    """The teacher part of `wf` under the KD nets' names: a KD file's teacher layers as
    they are, or a WSDDN's layers renamed (conv1_1 -> conv_wsd_1_1, fc6 -> fc_wsd_6, ...)."""
    if any(is_teacher_layer(l) for l in wf.layers):
        return (OrderedDict((k, v) for k, v in wf.params.items() if belongs_to_teacher(layer_of(k))),
                "its teacher layers (KD names)")
    out = OrderedDict()
    for k, v in wf.params.items():
        layer, _, i = k.rpartition("/")
        out[f"{wsddn_to_kd_name(layer)}/{i}"] = v
    return out, "a WSDDN: conv1_1 -> conv_wsd_1_1, fc6 -> fc_wsd_6, ..."


def split_sources(weights) -> List[str]:
    """'a,b' (Caffe's -weights form) or a list -> ['a', 'b']."""
    if weights is None:
        return []
    items = weights.split(",") if isinstance(weights, str) else [os.fspath(w) for w in weights]
    items = [w.strip() for w in items]
    if any(not w for w in items):
        raise CaffemodelError(f"--weights {weights!r}: an empty name in the comma-separated list")
    return items


# ----------------------------------------------------------------------------- writing


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


def port_to_caffemodel(port, name: Optional[str] = None) -> "proto.NetParameter":
    """A NetParameter holding every learnable blob of a port under its layer name and
    type (what Caffe's CopyTrainedLayersFrom reads)."""
    net = proto.NetParameter()
    net.name = name or type(port).__name__
    for e in port.caffe_entries():
        layer = net.layer.add()
        layer.name, layer.type = e.name, e.type
        for p in e.blobs:
            array_to_blob(p.detach().cpu().float().numpy(), layer.blobs.add())
    return net


def save_port_caffemodel(port, path, name: Optional[str] = None) -> None:
    write_binary(port_to_caffemodel(port, name), path)


def save_param_dict(d, path) -> None:
    """torch.save of the dict, atomically and with its SHA-256 beside it (mlic.integrity)."""
    d = OrderedDict((k, v.detach().cpu()) for k, v in d.items())
    write_with_hash(path, lambda f: torch.save(d, f), OutputError)
