#!/usr/bin/env python
"""Proposals per second of tools/make_datalist.py's pipeline (mlic.data.datalist_writer.build_datalist).

Writes COCO-sized JPEG images (640x480 by default: smoothed noise with filled shapes, so
selective search finds a realistic number of regions) into a temporary folder, then builds
the datalist with OpenCV's selective search (fast mode, image shrunk to 500 px, the
default of make_datalist.py) for each worker count, and once with precomputed proposals
(.npz) for comparison. Reports images/s, proposals/s (the bbox_num boxes written per image)
and the time the whole of COCO 2014 (123,287 images) would take at that rate.

Writes a JSON report (machine, versions, command, results) to
bench/results/proposals_<machine>.json (``--out`` to change).

    python bench/proposals.py                              # workers 1, 2, 4, ... up to the cores
    python bench/proposals.py --images 16 --workers 1,2 --out bench/results/proposals_cpu.json
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from mlic.data.datalist_writer import build_datalist  # noqa: E402
from mlic.data.labelsets import MultiLabelSet  # noqa: E402
from mlic.data.proposals import PrecomputedProposals, SelectiveSearchProposals, save_proposals_npz  # noqa: E402

import record  # noqa: E402  (bench/record.py, beside this file)

COCO_IMAGES = 123287  # train2014 + val2014


def make_images(folder, n, width, height, seed=0):
    rng = np.random.default_rng(seed)
    paths, sizes = [], []
    for k in range(n):
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(3, 9))):
            x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            w, h = int(rng.integers(20, width // 2)), int(rng.integers(20, height // 2))
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                cv2.rectangle(img, (x, y), (x + w, y + h), color, -1)
            else:
                cv2.ellipse(img, (x + w // 2, y + h // 2), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360,
                            color, -1)
        img = cv2.GaussianBlur(img, (5, 5), 1.5)
        name = f"img{k:05d}.jpg"
        cv2.imwrite(os.path.join(folder, name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(name)
        sizes.append((width, height))
    labels = (rng.random((n, 80)) < 0.05).astype(np.uint8)
    return MultiLabelSet(paths=paths, labels=labels, class_names=[f"c{i}" for i in range(80)], sizes=sizes)


def timed_build(labels, folder, out, source, bbox_num, size, workers):
    """(total seconds, steady images/s): the rate runs from the moment the first ``workers``
    images are done to the last one, leaving out the workers' start-up (paid once per run)."""
    stamps = []
    t = time.perf_counter()
    build_datalist(labels, out, bbox_num=bbox_num, new_width=size, new_height=size, proposals=source,
                   image_root=folder, workers=workers, restart=True,
                   progress=lambda done, total: stamps.append((done, time.perf_counter())))
    total = time.perf_counter() - t
    k0 = min(max(workers, 1), len(stamps) - 2)
    (d0, t0), (d1, t1) = stamps[k0], stamps[-1]
    return total, (d1 - d0) / (t1 - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--image-width", type=int, default=640)
    ap.add_argument("--image-height", type=int, default=480)
    ap.add_argument("--bbox-num", type=int, default=500)
    ap.add_argument("--size", type=int, default=672, help="frame the boxes are written in")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,2,4,... up to cores)")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per worker count (the best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON report path")
    args = ap.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = ([int(w) for w in args.workers.split(",")] if args.workers
              else [w for w in (1, 2, 4, 8, 16, 32) if w <= max(1, cores)])
    out = args.out or record.RESULTS / f"proposals_{record.kind()}.json"
    tmp = tempfile.mkdtemp(prefix="mlic_bench_proposals_")
    results = []
    try:
        labels = make_images(tmp, args.images, args.image_width, args.image_height, args.seed)
        ss = SelectiveSearchProposals(num=args.bbox_num)
        every = SelectiveSearchProposals(score="one")  # not cut at bbox_num: how many boxes it finds
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        # CPU seconds per image (one OpenCV thread): what the cores must supply, whatever else
        # runs on the machine; W free cores make about W / cpu_s images per second
        cv2.setNumThreads(1)
        raw, cpu = [], []
        for p in labels.paths:
            img = cv2.imread(os.path.join(tmp, p))
            c0 = time.process_time()
            raw.append(len(every(p, p, img)[0]))
            cpu.append(time.process_time() - c0)
        cv2.setNumThreads(-1)
        cpu_s = float(np.mean(cpu))
        print(f"selective search: {cpu_s:.2f} CPU s per image, {np.mean(raw):.0f} boxes found per image; "
              f"COCO 2014 = {COCO_IMAGES * cpu_s / 3600:.0f} CPU hours", flush=True)
        for w in counts:
            runs = [timed_build(labels, tmp, os.path.join(tmp, "list.txt"), ss, args.bbox_num, args.size, w)
                    for _ in range(args.repeat)]
            dt, rate = max(runs, key=lambda r: r[1])
            results.append({"source": "selective-search", "workers": w, "images_per_s": round(rate, 3),
                            "proposals_per_s": round(rate * args.bbox_num, 1), "seconds_total": round(dt, 2),
                            "coco_hours": round(COCO_IMAGES / rate / 3600, 1),
                            "all_runs_images_per_s": [round(r[1], 3) for r in runs]})
            print(f"selective search, workers={w:2d}: {rate:7.3f} images/s, {rate * args.bbox_num:8.1f} proposals/s, "
                  f"COCO 2014 in {COCO_IMAGES / rate / 3600:.1f} h", flush=True)
        # precomputed proposals: what a list costs when the boxes come from a file
        rng = np.random.default_rng(args.seed)
        boxes = []
        for _ in labels.paths:
            xy = rng.uniform(0, 500, (2000, 2))
            boxes.append(np.concatenate([xy, xy + rng.uniform(5, 140, (2000, 2))], 1))
        npz = os.path.join(tmp, "props.npz")
        save_proposals_npz(npz, labels.paths, boxes, [rng.random(2000) for _ in labels.paths])
        dt, rate = timed_build(labels, tmp, os.path.join(tmp, "list.txt"), PrecomputedProposals(npz),
                               args.bbox_num, args.size, 1)
        results.append({"source": "precomputed .npz (2000 boxes per image)", "workers": 1,
                        "images_per_s": round(rate, 2), "proposals_per_s": round(rate * args.bbox_num, 1),
                        "seconds_total": round(dt, 3), "coco_hours": round(COCO_IMAGES / rate / 3600, 2)})
        print(f"precomputed .npz:           {rate:7.1f} images/s, {rate * args.bbox_num:8.1f} proposals/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = next((r["images_per_s"] for r in results if r["source"] == "selective-search" and r["workers"] == 1), None)
    for r in results:
        if base and r["source"] == "selective-search" and r["workers"] > 1:
            r["speedup_vs_1"] = round(r["images_per_s"] / base, 3)
    report = {
        "benchmark": "datalist proposals (tools/make_datalist.py's pipeline)",
        "config": {"images": args.images, "source_image": f"{args.image_width}x{args.image_height} JPEG q90, "
                   "smoothed noise with 3-8 filled shapes", "bbox_num": args.bbox_num, "frame": args.size,
                   "selective_search": {"mode": "fast", "max_side": ss.max_side, "score": ss.score},
                   "selective_search_boxes_found_per_image": raw},
        "selective_search_cpu_s_per_image": round(cpu_s, 3),
        "coco_cpu_hours": round(COCO_IMAGES * cpu_s / 3600, 1),
        "results": results,
        "load_average_1_5_15min": {"before": load_before,
                                   "after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "notes": (f"{cores} cores were available; other processes may have shared them. Worker processes run "
                  "OpenCV single-threaded; workers=1 runs in this process. images_per_s is the steady rate, from the "
                  "moment the first `workers` images are done to the last (worker start-up, paid once per run, "
                  "is in seconds_total). coco_hours: 123,287 images at the "
                  "measured rate on this one machine (shards split it across machines)."),
    }
    record.write(report, out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
