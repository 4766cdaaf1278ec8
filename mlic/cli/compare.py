"""tools/compare_caffe.py: mlic.compare's comparison against recorded Caffe outputs."""
from __future__ import annotations

import argparse
import sys

from mlic.caffe.errors import CaffeError
from mlic.compare import check_inputs, compare_case


def main(argv=None) -> int:
    """tools/compare_caffe.py: 0 when every compared key is within tolerance, 1 when one
    is not, 2 for input that cannot be read (one sentence on stderr)."""
    ap = argparse.ArgumentParser(description="Compare the project's nets against recorded Caffe outputs (.npz cases).")
    ap.add_argument("cases", nargs="+", help="reference case files (.npz)")
    ap.add_argument("--prototxt", help="network definition to use instead of the case's own")
    ap.add_argument("--caffemodel", help="weights to load instead of the case's param/ keys")
    ap.add_argument("--phase", choices=["TRAIN", "TEST"], help="net phase (default: the case's meta, else TEST)")
    ap.add_argument("--device", default=None, help="torch device (default cpu)")
    ap.add_argument("--data-dir", help="folder of a data-layer case's list and images (default <case>_images/)")
    args = ap.parse_args(argv)
    try:
        check_inputs(args.cases, args.prototxt, args.caffemodel)
    except CaffeError as exc:
        print(f"compare_caffe.py: error: {exc}", file=sys.stderr)
        return 2
    ok = True
    for c in args.cases:
        r = compare_case(c, prototxt=args.prototxt, caffemodel=args.caffemodel, phase=args.phase,
                         device=args.device, data_dir=args.data_dir)
        sys.stdout.write(r.table())
        ok = ok and r.ok
    return 0 if ok else 1
