"""The student-only weights file ("student export"): the deployable classifier without the
teacher, with what a user needs to run it.

A student export (``tools/convert_caffemodel.py RUN/final.pt student.pt --student``) holds
what the classifier needs and nothing of the teacher:

    {"format": "mlic-student", "version": 1,
     "params": {'conv1_1/0': ..., 'fc8_mscoco/1': ...},    # Caffe-named blobs
     "net": NetConfig fields (body, fc width, classes, input and student sizes),
     "class_names": [...] or None,
     "input": {"size": [H, W], "mean_bgr": [B, G, R], "scale": s},   # the data layer's transform
     "source": the file it came from}

It is made from any weight file that holds a student (a --stage student or stage2
checkpoint, a --prototxt train_stage2 run, a caffemodel of such a net); the sizes come
from the checkpoint's metadata or from the prototxt the net was trained with.
``tools/predict.py`` (mlic.deploy) and ``tools/test.py`` load it (or any such file
directly) without the teacher.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mlic.caffe.errors import CaffemodelError, NetBuildError, PrototxtError
from mlic.caffe.io import load_net_spec
from mlic.caffe.layers import human_att_data_config
from mlic.caffe.teacher import belongs_to_teacher
from mlic.caffe.weight_files import STUDENT_FORMAT, WeightFile, layer_of, read_weight_file
from mlic.caffe.weights import load_file
from mlic.errors import OutputError
from mlic.integrity import write_with_hash
from prototxt_ports import NetConfig, Student
from prototxt_ports.config import RELEASED_MEAN_BGR

_CONV = re.compile(r"conv(\d+)_(\d+)")
_POOL = re.compile(r"pool(\d+)")


@dataclass
class StudentInfo:
    """What a student export says besides its weights."""

    cfg: NetConfig
    class_names: Optional[List[str]]
    size: Tuple[int, int]          # (height, width) the image is resized to
    mean_bgr: Tuple[float, ...]
    scale: float
    source: str = ""

    def name(self, c: int) -> str:
        return self.class_names[c] if self.class_names else f"class {c}"


def _student_layers(wf: WeightFile, head: Optional[str]) -> Tuple[List[str], str]:
    layers = [l for l in wf.layers if not belongs_to_teacher(l)]
    convs = [l for l in layers if _CONV.fullmatch(l)]
    if not convs or "fc6" not in layers or "fc7" not in layers:
        raise CaffemodelError(f"{wf.source}: holds no student classifier (conv*_*, fc6, fc7 and a head)")
    if {"fc8_c", "fc8_d"} <= set(layers) and head not in layers:
        raise CaffemodelError(f"{wf.source}: a WSDDN teacher (fc8_c, fc8_d), not a student classifier")
    if head is None:
        rest = [l for l in layers if l not in convs and l not in ("fc6", "fc7") and not l.endswith("_soft")
                and wf.params[f"{l}/0"].dim() == 2]
        if len(rest) != 1:
            raise CaffemodelError(f"{wf.source}: " + (f"no classifier head after fc7 (a stage-1 file?)" if not rest
                                                      else f"several candidate heads after fc7: {', '.join(rest)}"))
        head = rest[0]
    elif head not in layers:
        raise CaffemodelError(f"{wf.source}: no classifier head '{head}' (a stage-1 file has none)")
    return convs + ["fc6", "fc7", head], head


def _sizes_from_prototxt(path) -> Dict[str, object]:
    """input size, student size, transform, body and box count of a released-style net."""
    spec = load_net_spec(path)
    out: Dict[str, object] = {}
    body: List[str] = []
    student_started = False
    for lp in spec.param.layer:
        if lp.type == "HumanAttData" and "input_size" not in out:
            data = human_att_data_config(lp, spec.file or "<net>", source=lp.human_att_data_param.source or "-")
            out.update(input_size=data.new_width, input_height=data.new_height, num_rois=data.bbox_num,
                       mean_bgr=data.mean_values, scale=data.scale)
        elif lp.type == "Interp" and "student_size" not in out:
            out["student_size"] = int(lp.interp_param.height)
            student_started = True
        elif student_started and lp.type == "Convolution" and _CONV.fullmatch(lp.name):
            body.append(f"{lp.name}:{lp.convolution_param.num_output}")
        elif student_started and lp.type == "Pooling" and _POOL.fullmatch(lp.name):
            body.append(lp.name)
    while body and _POOL.fullmatch(body[-1]):  # the student's last pool (pool5) follows the body
        body.pop()
    if body:
        out["body"] = tuple(body)
    return out


def student_export(wf: WeightFile, *, class_names: Optional[Sequence[str]] = None, prototxt=None) -> dict:
    """The student part of `wf` as a student export (see the module docstring).

    Sizes come from `wf`'s checkpoint metadata (--stage runs), else from `prototxt` (or
    the prototxt a --prototxt run recorded)."""
    if wf.kind == "student":
        exp = dict(wf.meta)
        if class_names is not None:
            exp["class_names"] = list(class_names)
        return exp
    meta_net = wf.meta.get("net") if isinstance(wf.meta.get("net"), dict) else None
    head = meta_net.get("student_head") if meta_net else None
    layers, head = _student_layers(wf, head)
    params = OrderedDict((k, v) for k, v in wf.params.items() if layer_of(k) in layers)
    proto = prototxt or wf.meta.get("prototxt")
    if meta_net is not None:
        cfg = net_config(meta_net)
        mean, scale = RELEASED_MEAN_BGR, float(wf.meta.get("input_scale", 1.0))
        size = (cfg.input_size, cfg.input_size)
    elif proto is not None:
        try:
            sizes = _sizes_from_prototxt(proto)
        except (PrototxtError, NetBuildError, OSError) as exc:
            raise CaffemodelError(f"{wf.source}: cannot read the sizes of its net from {proto}: {exc}") from None
        missing = [k for k in ("input_size", "student_size", "body") if k not in sizes]
        if missing or not sizes["num_rois"]:
            raise CaffemodelError(f"{proto}: not a net with a student (a HumanAttData layer with bbox_num, an "
                                  f"Interp to the student's size, then convB_I/poolB layers); found no "
                                  f"{', '.join(missing) or 'bbox_num'}")
        cfg = NetConfig(input_size=sizes["input_size"], student_size=sizes["student_size"], body=sizes["body"],
                        num_rois=sizes["num_rois"], fc_dim=int(params["fc6/0"].shape[0]),
                        num_classes=int(params[f"{head}/0"].shape[0]), student_head=head)
        mean, scale = sizes["mean_bgr"], sizes["scale"]
        size = (sizes["input_height"], sizes["input_size"])
    else:
        raise CaffemodelError(f"{wf.source}: the student's sizes are unknown (not a checkpoint of tools/train.py "
                              f"--stage); give the prototxt it was trained with")
    names = list(class_names) if class_names is not None else wf.meta.get("class_names")
    if names is not None and len(names) != cfg.num_classes:
        raise CaffemodelError(f"{len(names)} class names for a student with {cfg.num_classes} classes")
    exp = {"format": STUDENT_FORMAT, "version": 1, "params": params, "net": asdict(cfg),
           "class_names": names, "input": {"size": list(size), "mean_bgr": [float(m) for m in mean],
                                           "scale": scale},
           "source": wf.source}
    build_student(exp)  # every blob must fit the described net
    return exp


def net_config(fields: dict) -> NetConfig:
    """A NetConfig from its asdict() form (lists where it has tuples are accepted)."""
    net = dict(fields)
    net["body"] = tuple(net["body"])
    if "multipliers" in net:
        net["multipliers"] = {k: tuple(tuple(x) for x in v) for k, v in net["multipliers"].items()}
    return NetConfig(**net)


def _info(exp: dict) -> StudentInfo:
    inp = exp["input"]
    return StudentInfo(net_config(exp["net"]), exp.get("class_names"), tuple(inp["size"]), tuple(inp["mean_bgr"]),
                       float(inp["scale"]), exp.get("source", ""))


def build_student(exp: dict, device="cpu") -> Tuple[Student, StudentInfo]:
    """The Student port (eval mode) with the export's weights."""
    info = _info(exp)
    model = Student(info.cfg)
    wf = WeightFile(exp.get("source") or "<student export>", "student", OrderedDict(exp["params"]))
    loaded = load_file(model, wf)
    missing = [l for l in model.caffe_params() if l not in loaded.layers and not l.endswith("_soft")]
    if missing:
        raise CaffemodelError(f"{wf.source}: the student export lacks {', '.join(missing)}")
    return model.to(device).eval(), info


def save_student(exp: dict, path) -> None:
    """torch.save of the export, atomically and with its SHA-256 beside it (mlic.integrity)."""
    write_with_hash(path, lambda f: torch.save(exp, f), OutputError)


def load_student(source, device="cpu", prototxt=None) -> Tuple[Student, StudentInfo]:
    """A student export, or any weight file holding a student, as (model, info)."""
    wf = read_weight_file(source)
    return build_student(student_export(wf, prototxt=prototxt), device)

