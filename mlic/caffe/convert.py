"""Weight file conversion (the logic of tools/convert_caffemodel.py).

The input is any weight file the project reads (mlic.caffe.weight_files: caffemodel,
param dict, tools/train.py checkpoint, student export, torchvision VGG16). The output:

    OUT.caffemodel            the weights written for the net of --prototxt (its layers, by
                              name; what Caffe's CopyTrainedLayersFrom reads)
    OUT.pt / OUT.pth          a param dict {'layer/i': tensor}; with --prototxt, only that
                              net's layers, loaded into it first (shape checks)
    OUT.pt --student          a student export (mlic.caffe.student_export): the classifier
                              without the teacher, its class names and input settings
"""
from __future__ import annotations

import os
from pathlib import Path

from mlic.caffe import torchvision_vgg as tv
from mlic.caffe.errors import CaffeError
from mlic.caffe.net import CaffeNet
from mlic.caffe.student_export import save_student, student_export
from mlic.caffe.torchvision_vgg import InputTransform
from mlic.caffe.weight_files import read_weight_file, save_caffemodel, save_param_dict
from mlic.caffe.weights import initialize_weights
from mlic.errors import OutputError

TORCH_EXT = (".pt", ".pth")


def _net_transform(net, mean, scale):
    """The input transform for torchvision weights: the flags, else the net's data layer."""
    if mean is None:
        data = [lp for lp in net.layer_params if lp.type == "HumanAttData"]
        if data and len(data[0].transform_param.mean_value):
            tp = data[0].transform_param
            return InputTransform.from_values(tp.mean_value, tp.scale if tp.HasField("scale") else 1.0)
        return None
    return InputTransform.from_values(mean, 1.0 if scale is None else scale)


def read_class_names(path) -> list:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeError(f"{path}: cannot read the class names ({exc})") from None
    names = [l.strip() for l in lines if l.strip()]
    if not names:
        raise CaffeError(f"{path}: no class names in it (one per line)")
    return names


def check_output(src, dst: Path) -> None:
    """Refuses, before any work, an output that cannot be written or that is the input."""
    if dst.is_dir():
        raise OutputError(f"{dst}: a folder; the output must be a file")
    if not dst.parent.is_dir():
        raise OutputError(f"{dst}: the folder {dst.parent} does not exist")
    if not dst.exists():
        return
    source = tv.resolve(os.fspath(src)) if tv.is_torchvision_spec(os.fspath(src)) else os.fspath(src)
    if os.path.exists(source) and os.path.samefile(source, dst):
        raise OutputError(f"{dst}: this is the input file {src}; writing it would replace the weights being "
                          "converted: choose another output")


def convert(src, dst, prototxt=None, phase="TEST", *, strict=False, student=False, class_names=None,
            allow_untrained_teacher=False, mean=None, scale=None, log=print, warn=None) -> None:
    warn = warn or (lambda m: log(f"warning: {m}"))
    dst = Path(dst)
    to_torch = dst.suffix in TORCH_EXT
    if not to_torch and dst.suffix != ".caffemodel":
        raise CaffeError(f"{dst}: the output must end in .caffemodel, .pt or .pth")
    check_output(src, dst)
    if student:
        if not to_torch:
            raise CaffeError(f"{dst}: a student export is a torch file (.pt or .pth)")
        names = read_class_names(class_names) if class_names else None
        exp = student_export(read_weight_file(src), class_names=names, prototxt=prototxt)
        save_student(exp, dst)
        log(f"{src} -> {dst}: student {', '.join(sorted({k.rpartition('/')[0] for k in exp['params']}))}; "
            f"{exp['net']['num_classes']} classes{'' if exp['class_names'] else ' (no class names)'}")
        return
    if class_names:
        raise CaffeError("--class-names goes into a student export (--student)")
    if prototxt is None:
        if not to_torch:
            raise CaffeError(f"{dst}: writing a caffemodel needs --prototxt (the net whose layers to write)")
        wf = read_weight_file(src, None if mean is None else InputTransform.from_values(mean, scale or 1.0))
        save_param_dict(wf.params, dst)
        log(f"{wf.describe()} -> {dst}: {len(wf.params)} blob(s)")
        return
    net = CaffeNet(prototxt, phase)
    report = initialize_weights(net, [src], allow_untrained_teacher=allow_untrained_teacher,
                                transform=_net_transform(net, mean, scale), strict=strict)
    for line in report.lines():
        log(line)
    if report.warning():
        warn(report.warning())
    if to_torch:
        save_param_dict(net.param_dict(), dst)
    else:
        save_caffemodel(net, dst)
    log(f"wrote {dst}")
