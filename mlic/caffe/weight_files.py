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

:func:`initialize_weights` is what training does with ``--weights a,b --teacher t``:
the files load in order by layer name (later files win, as Caffe's ``-weights a,b``),
then the teacher onto the KD net's teacher layers (``*_wsd_*``), and the report says
which layer came from which file.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mlic.caffe import proto
from mlic.caffe import torchvision_vgg as tv
from mlic.caffe.errors import CaffemodelError
from mlic.caffe.io import array_to_blob, write_binary
from mlic.caffe.weights import LoadReport, caffemodel_to_param_dict, load_caffemodel, load_param_dict, name_map
from mlic.integrity import file_sha256, verify_file, warn_unverified
from prototxt_ports.wsddn import wsddn_to_kd_name

STUDENT_FORMAT = "mlic-student"
# The KD nets' teacher: its learned layers carry _wsd_ in their names (conv_wsd_1_1,
# fc_wsd_6, ...); the temperature Scale layers and the region sum belong to it too.
TEACHER_MARK = "_wsd_"
TEACHER_CONSTANT_LAYERS = ("temp_branch1_learn", "temp_branch2_learn", "image_level_score")


def is_teacher_layer(name: str) -> bool:
    """A layer whose weights must come from a trained teacher (conv_wsd_*, fc_wsd_*)."""
    return TEACHER_MARK in name


def belongs_to_teacher(name: str) -> bool:
    return is_teacher_layer(name) or name in TEACHER_CONSTANT_LAYERS


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
    path = ref.get("path")
    if not path or not os.path.isfile(path):
        raise CaffemodelError(f"{wf.source}: refers to its teacher {path}, which does not exist (a KD checkpoint "
                              f"keeps the teacher's path and hash, not its weights)")
    got = file_sha256(path)
    if got != ref.get("sha256"):
        raise CaffemodelError(f"{wf.source}: refers to its teacher {path}, which has changed since (SHA-256 "
                              f"{got[:16]}... instead of {str(ref.get('sha256'))[:16]}...)")
    teacher, _ = teacher_params(read_weight_file(path))
    layers = ref.get("layers")  # the teacher layers the run took from the file (a stage-1 net has no heads)
    params = OrderedDict(wf.params)
    params.update((k, v) for k, v in teacher.items() if layers is None or layer_of(k) in layers)
    return WeightFile(wf.source, wf.kind, params, wf.meta, f"{wf.note + ', ' if wf.note else ''}teacher from {path}")


def split_sources(weights) -> List[str]:
    """'a,b' (Caffe's -weights form) or a list -> ['a', 'b']."""
    if weights is None:
        return []
    items = weights.split(",") if isinstance(weights, str) else [os.fspath(w) for w in weights]
    items = [w.strip() for w in items]
    if any(not w for w in items):
        raise CaffemodelError(f"--weights {weights!r}: an empty name in the comma-separated list")
    return items


# ----------------------------------------------------------------------------- loading into a net


def load_weights(net, source, strict: bool = False, rename=None) -> LoadReport:
    """Copy weights into `net` (anything with ``params`` = {layer: [blobs]}) by layer
    name: a caffemodel (path or NetParameter), a {'layer/i': tensor} dict, or any weight
    file. `rename` maps the file's layer names to the net's (a dict or a callable)."""
    if isinstance(source, proto.NetParameter):
        rep = load_caffemodel(net, source, strict, rename)
    elif isinstance(source, dict):
        rep = load_param_dict(net, _renamed(source, rename), strict=strict)
    else:
        wf = read_weight_file(source)
        rep = load_param_dict(net, _renamed(wf.params, rename), wf.source, strict)
    if not rep.loaded and rep.unexpected:
        raise _shares_no_layer(rep.source, "weights", rep.unexpected, list(net.params))
    return rep


def _renamed(d, rename):
    fn = name_map(rename)
    if fn is None:
        return d
    out = OrderedDict()
    for k, v in d.items():
        layer, _, i = k.rpartition("/")
        out[f"{fn(layer)}/{i}"] = v
    return out


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
