#!/usr/bin/env python
"""Write a HumanAttData datalist (labels + scored proposals) for COCO 2014 or NUS-WIDE.

Examples:
  make_datalist.py coco --instances annotations/instances_train2014.json --image-prefix train2014/ \
      --image-root /data/coco/ --proposals edgeboxes_train2014.mat --out coco_train.txt
  make_datalist.py nuswide --root /data/NUS-WIDE --split test --image-prefix Flickr/ \
      --image-root /data/NUS-WIDE/ --selective-search --out nus_test.txt
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlic.data.builders import (PAD_CHOICES, EdgeBoxesProposals, PrecomputedProposals,  # noqa: E402
                                SelectiveSearchProposals, build_datalist, coco_multilabels,
                                nuswide_multilabels)


def main(argv=None):
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
        p.add_argument("--image-prefix", default="", help="prepended to every image path in the list")
        p.add_argument("--image-root", default="", help="where the listed paths are found (for reading images)")
        p.add_argument("--bbox-num", type=int, default=500)
        p.add_argument("--new-width", type=int, default=672)
        p.add_argument("--new-height", type=int, default=672)
        p.add_argument("--pad", choices=PAD_CHOICES, default="repeat",
                       help="how to fill up images with fewer than bbox-num proposals")
        src = p.add_mutually_exclusive_group()
        src.add_argument("--proposals", help="precomputed proposals (.mat as WSDDN's Edge Boxes, or .npz)")
        src.add_argument("--edgeboxes-model", help="structured edge model (model.yml.gz) for OpenCV Edge Boxes")
        src.add_argument("--selective-search", action="store_true", help="OpenCV selective search (fast mode)")
        p.add_argument("--box-order", choices=("xyxy", "yxyx"), help="coordinate order in --proposals")
        p.add_argument("--one-based", choices=("yes", "no"), help="whether --proposals boxes are 1-based")
    args = ap.parse_args(argv)

    if args.dataset == "coco":
        labels = coco_multilabels(args.instances, args.image_prefix, drop_empty=args.drop_empty)
    else:
        labels = nuswide_multilabels(args.root, args.split, args.image_prefix, drop_empty=not args.keep_empty)
    if args.proposals:
        one_based = None if args.one_based is None else args.one_based == "yes"
        source = PrecomputedProposals(args.proposals, order=args.box_order, one_based=one_based)
    elif args.edgeboxes_model:
        source = EdgeBoxesProposals(args.edgeboxes_model, max_boxes=max(args.bbox_num, 1))
    elif args.selective_search:
        source = SelectiveSearchProposals()
    else:
        source = None
        if args.bbox_num:
            ap.error("give a proposal source (--proposals, --edgeboxes-model, --selective-search) or --bbox-num 0")

    def progress(i, n):
        if i == n or i % 1000 == 0:
            print(f"\r{i}/{n}", end="\n" if i == n else "", file=sys.stderr, flush=True)

    n = build_datalist(labels, args.out, bbox_num=args.bbox_num, new_width=args.new_width,
                       new_height=args.new_height, proposals=source, image_root=args.image_root,
                       pad=args.pad, progress=progress)
    print(f"wrote {n} lines, {len(labels.class_names)} labels, {args.bbox_num} boxes each -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
