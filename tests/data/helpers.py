"""Tiny COCO-like and NUS-WIDE-like data sets the data tests build lists from."""
import json

import cv2
import numpy as np


def write_coco(tmp_path):
    """A COCO instances file and its three images under tmp_path; returns the file."""
    # category ids deliberately out of order and non-contiguous, as in COCO
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    images = [{"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 40, "height": 20},
              {"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 30, "height": 30},
              {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 20, "height": 40}]
    anns = [{"id": 1, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 90, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 1},
            {"id": 4, "image_id": 42, "category_id": 3, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 0}]
    p = tmp_path / "instances_train2014.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    img_dir = tmp_path / "train2014"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for im in images:
        cv2.imwrite(str(img_dir / im["file_name"]),
                    rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8))
    return p


def write_nuswide(root, with_tt=True):
    """NUS-WIDE's label files for five images under root (with the train/test label files or not)."""
    concepts = ["sky", "dog", "car"]
    all_imgs = ["C:\\ImageData\\Flickr\\actor\\0001_1.jpg", "C:\\ImageData\\Flickr\\actor\\0002_2.jpg",
                "C:\\ImageData\\Flickr\\zebra\\0003_3.jpg", "C:\\ImageData\\Flickr\\zebra\\0004_4.jpg",
                "C:\\ImageData\\Flickr\\boat\\0005_5.jpg"]
    train = ["actor\\0001_1.jpg", "zebra\\0003_3.jpg", "boat\\0005_5.jpg"]
    test = ["actor\\0002_2.jpg", "zebra\\0004_4.jpg"]
    lab = {"sky": [1, 0, 0, 1, 0], "dog": [0, 0, 1, 0, 0], "car": [1, 0, 0, 0, 0]}
    (root / "ImageList").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("\n".join(concepts) + "\n")
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(all_imgs) + "\r\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text("\n".join(train) + "\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("\n".join(test) + "\n")
    (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
    for c in concepts:
        (root / "Groundtruth" / "AllLabels" / f"Labels_{c}.txt").write_text("\n".join(map(str, lab[c])) + "\n")
    if with_tt:
        (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
        for c in concepts:
            tr = [lab[c][k] for k in (0, 2, 4)]
            te = [lab[c][k] for k in (1, 3)]
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_Train.txt").write_text(
                "\n".join(map(str, tr)) + "\n")
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_Test.txt").write_text(
                "\n".join(map(str, te)) + "\n")
