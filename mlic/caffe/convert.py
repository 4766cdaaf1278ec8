"""Weight file conversion (the logic of tools/convert_caffemodel.py).

    caffemodel -> param dict (.pt/.pth): {'layer/i': tensor}; with --prototxt the weights
                  are first loaded into that net (shape-checked, legacy shapes reshaped)
    param dict -> caffemodel: needs --prototxt (the layers to write)
    caffemodel -> caffemodel: needs --prototxt (e.g. a V1 model rewritten in the current form)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlic.caffe.errors import CaffeError

TORCH_EXT = (".pt", ".pth")


def convert(src, dst, prototxt=None, phase="TEST", strict=False, log=print) -> None:
    from mlic.caffe.net import CaffeNet
    from mlic.caffe.weights import (caffemodel_to_param_dict, load_weights, save_caffemodel,
                                    save_param_dict)

    src, dst = Path(src), Path(dst)
    to_torch = dst.suffix in TORCH_EXT
    if not to_torch and dst.suffix != ".caffemodel":
        raise CaffeError(f"{dst}: output must end in .caffemodel, .pt or .pth")
    if prototxt is None:
        if not to_torch:
            raise CaffeError(f"{dst}: writing a caffemodel needs --prototxt (the net whose layers to write)")
        if src.suffix in TORCH_EXT:
            raise CaffeError(f"{src}: already a parameter dict; give --prototxt to check it against a net")
        d = caffemodel_to_param_dict(src)
        save_param_dict(d, dst)
        log(f"{src} -> {dst}: {len(d)} blob(s)")
        return
    net = CaffeNet(prototxt, phase)
    report = load_weights(net, src, strict=strict)
    log(str(report))
    if to_torch:
        save_param_dict(net.param_dict(), dst)
    else:
        save_caffemodel(net, dst)
    log(f"wrote {dst}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Convert weights between caffemodel and parameter-dict (torch.save) files.")
    ap.add_argument("src", help="input .caffemodel (current or V1/legacy form) or .pt/.pth parameter dict")
    ap.add_argument("dst", help="output .caffemodel or .pt/.pth")
    ap.add_argument("--prototxt", help="network definition: load into it (shape checks) before writing")
    ap.add_argument("--phase", default="TEST", choices=["TRAIN", "TEST"])
    ap.add_argument("--strict", action="store_true", help="fail when the file and the net do not cover each other")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.dst, args.prototxt, args.phase, args.strict)
    except (CaffeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
