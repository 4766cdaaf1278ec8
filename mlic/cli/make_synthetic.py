"""Generate the embedded synthetic multi-label detection benchmark (see mlic/data/synthetic.py).

Example: make_synthetic.py --out data/synthetic --seed 0
Then train with source=<out>/train.txt and root_folder=<out>/ (new_width/new_height = the frame size).
"""
import argparse
import time

from mlic.data.synthetic import SHAPES, SyntheticConfig, generate_dataset


def main(argv=None):
    d = SyntheticConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--num-classes", type=int, default=d.num_classes, help=f"1..{len(SHAPES)}")
    ap.add_argument("--image-size", type=int, default=d.image_size)
    ap.add_argument("--frame-width", type=int, help="datalist frame width (default: image size)")
    ap.add_argument("--frame-height", type=int, help="datalist frame height (default: image size)")
    ap.add_argument("--num-train", type=int, default=d.num_train)
    ap.add_argument("--num-test", type=int, default=d.num_test)
    ap.add_argument("--bbox-num", type=int, default=d.bbox_num)
    ap.add_argument("--min-objects", type=int, default=d.min_objects)
    ap.add_argument("--max-objects", type=int, default=d.max_objects)
    ap.add_argument("--workers", type=int, default=0, help="rendering processes (output is identical)")
    args = ap.parse_args(argv)
    cfg = SyntheticConfig(num_classes=args.num_classes, image_size=args.image_size, frame_width=args.frame_width,
                          frame_height=args.frame_height, num_train=args.num_train, num_test=args.num_test,
                          bbox_num=args.bbox_num, min_objects=args.min_objects, max_objects=args.max_objects,
                          seed=args.seed)
    t = time.time()
    files = generate_dataset(args.out, cfg, workers=args.workers)
    print(f"wrote {cfg.num_train} train / {cfg.num_test} test images, {cfg.num_classes} classes, "
          f"{cfg.bbox_num} proposals in a {cfg.frame_width}x{cfg.frame_height} frame in {time.time() - t:.1f} s")
    for k, v in files.items():
        print(f"  {k}: {v}")
    return 0

