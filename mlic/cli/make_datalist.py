"""Write a HumanAttData datalist (labels + scored proposals) for COCO 2014 or NUS-WIDE.

Examples:
  make_datalist.py coco --instances annotations/instances_train2014.json --image-prefix train2014/ \
      --image-root /data/coco/ --proposals edgeboxes_train2014.mat --out coco_train.txt
  make_datalist.py nuswide --root /data/NUS-WIDE --split test --image-prefix Flickr/ \
      --image-root /data/NUS-WIDE/ --selective-search --out nus_test.txt
  # on 4 machines (each with all its cores), then: cat part1.txt part2.txt part3.txt part4.txt
  make_datalist.py coco ... --selective-search --shard 2/4 --out part2.txt

An interrupted run continues where it stopped when started again with the same arguments
(finished lines wait in OUT.partial); --restart starts over.
"""
import argparse
import os
import sys
import time

from mlic.cli.common import run_tool
from mlic.data.datalist_writer import build_datalist
from mlic.data.labelsets import coco_multilabels, nuswide_multilabels
from mlic.data.proposals import (PAD_CHOICES, SS_SCORES, STRUCTURED_EDGE_MODEL_URL,
                                 EdgeBoxesProposals, PrecomputedProposals, SelectiveSearchProposals)
from mlic.engine.progress import Progress
from mlic.errors import UserInputError


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _shard(text: str):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 2/4), got {text!r}") from None
    if n < 1 or not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"expected i/n with 1 <= i <= n, got {text!r}")
    return i - 1, n


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="dataset", required=True)
    coco = sub.add_parser("coco", help="MS-COCO 2014 (instances JSON)")
    coco.add_argument("--instances", required=True, help="instances_train2014.json or instances_val2014.json")
    coco.add_argument("--drop-empty", action="store_true", help="drop images without annotations")
    nus = sub.add_parser("nuswide", help="NUS-WIDE (81 concepts)")
    nus.add_argument("--root", required=True, help="folder holding Concepts81.txt, ImageList/, Groundtruth/")
    nus.add_argument("--split", choices=("train", "test", "all"), default="train")
    nus.add_argument("--keep-empty", action="store_true", help="keep images with no concept")
    for p in (coco, nus):
        p.add_argument("--out", required=True, help="datalist file to write")
        p.add_argument("--class-names-out", metavar="FILE",
                       help="also write the class names, one per line in the list's label order (what "
                            "--class-names of tools/test.py and tools/convert_caffemodel.py read)")
        p.add_argument("--image-prefix", default="", help="prepended to every image path in the list")
        p.add_argument("--image-root", default="", help="where the listed paths are found (for reading images)")
        p.add_argument("--bbox-num", type=int, default=500, help="proposals per line (default 500, as released)")
        p.add_argument("--new-width", type=int, default=672, help="frame the boxes are written in (default 672)")
        p.add_argument("--new-height", type=int, default=672)
        p.add_argument("--pad", choices=PAD_CHOICES, default="repeat",
                       help="how to fill up images with fewer than bbox-num proposals")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--proposals", help="precomputed proposals (.mat as WSDDN's Edge Boxes, or .npz)")
        src.add_argument("--edgeboxes-model", metavar="MODEL_YML_GZ",
                         help="OpenCV Edge Boxes with this structured edge model: model.yml.gz from OpenCV's "
                              f"opencv_extra repository, testdata/cv/ximgproc/ ({STRUCTURED_EDGE_MODEL_URL})")
        src.add_argument("--selective-search", action="store_true",
                         help="OpenCV selective search (fast mode), scored by rank (see --ss-score)")
        p.add_argument("--ss-score", choices=SS_SCORES, default="rank",
                       help="selective search scores: 'rank' = (B - r) / B for rank r of B = bbox-num kept "
                            "(1 ... 1/B; RoI pooling multiplies each proposal's features by it), 'one' = 1 for all")
        p.add_argument("--box-order", choices=("xyxy", "yxyx"), help="coordinate order in --proposals")
        p.add_argument("--one-based", choices=("yes", "no"), help="whether --proposals boxes are 1-based")
        p.add_argument("--workers", type=int, default=_cores(),
                       help=f"processes reading images and computing proposals (default: every core, {_cores()})")
        p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                       help="write only the I-th of N contiguous blocks of the images (1 <= I <= N); the N lists "
                            "concatenated in order are the whole list")
        p.add_argument("--restart", action="store_true",
                       help="discard an unfinished earlier run (OUT.partial) instead of continuing it")
        p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return ap


def write_class_names(path: str, names) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{name}\n" for name in names)
    except OSError as exc:
        raise UserInputError(f"--class-names-out: cannot write {path} ({exc.strerror or exc})") from None


class ListProgress:
    """build_datalist's progress(done, total) as a Progress bar of images, after a line
    saying how many a resumed run has already done."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if done:
                print(f"resuming: {done} of {total} images already done", file=sys.stderr, flush=True)
            self.bar = Progress(total, initial=done, unit="images")
        else:
            self.bar.update(done - self.bar.count)

    def rate(self) -> float:
        return self.bar.rate() if self.bar is not None else 0.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make(args) -> None:
    if args.bbox_num < 1:
        raise UserInputError(f"--bbox-num must be at least 1 (the method pools features over proposals), "
                             f"got {args.bbox_num}")
    if args.workers < 1:
        raise UserInputError(f"--workers must be at least 1, got {args.workers}")
    if args.dataset == "coco":
        labels = coco_multilabels(args.instances, args.image_prefix, drop_empty=args.drop_empty)
    else:
        labels = nuswide_multilabels(args.root, args.split, args.image_prefix, drop_empty=not args.keep_empty)
    if args.class_names_out:
        write_class_names(args.class_names_out, labels.class_names)
    if args.proposals:
        one_based = None if args.one_based is None else args.one_based == "yes"
        source = PrecomputedProposals(args.proposals, order=args.box_order, one_based=one_based)
    elif args.edgeboxes_model:
        source = EdgeBoxesProposals(args.edgeboxes_model, max_boxes=args.bbox_num)
    else:
        source = SelectiveSearchProposals(score=args.ss_score, num=args.bbox_num)
    progress = ListProgress()
    t0 = time.monotonic()
    try:
        n = build_datalist(labels, args.out, bbox_num=args.bbox_num, new_width=args.new_width,
                           new_height=args.new_height, proposals=source, image_root=args.image_root, pad=args.pad,
                           progress=progress, workers=args.workers, shard=args.shard)
    finally:
        progress.close()
    shard = "" if args.shard[1] == 1 else f" (shard {args.shard[0] + 1}/{args.shard[1]} of {len(labels)} images)"
    print(f"wrote {n} lines{shard}, {len(labels.class_names)} labels, {args.bbox_num} boxes each -> {args.out} "
          f"({progress.rate():.2f} images/s over {time.monotonic() - t0:.0f} s with {args.workers} workers)")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return run_tool("make_datalist.py", lambda: make(args), debug=args.debug)
    except KeyboardInterrupt:
        partial = f"{args.out}.partial"
        kept = (f"the finished lines are kept in {partial}, and the same command continues from there"
                if os.path.exists(partial) else "no line was written yet")
        print(f"make_datalist.py: interrupted; {kept}", file=sys.stderr)
        return 130

