"""The embedded synthetic benchmark: determinism, format, ground truth, proposals."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlic.data import HumanAttDataConfig, build_loader, read_datalist
from mlic.data.synthetic import SHAPES, SyntheticConfig, generate_dataset, make_sample, objectness

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(num_train=16, num_test=6, image_size=64, bbox_num=12)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def test_deterministic_per_seed(tmp_path):
    a = _files(Path(generate_dataset(tmp_path / "a", SyntheticConfig(seed=3, **SMALL))["root_folder"]))
    b = _files(Path(generate_dataset(tmp_path / "b", SyntheticConfig(seed=3, **SMALL), workers=2)["root_folder"]))
    c = _files(Path(generate_dataset(tmp_path / "c", SyntheticConfig(seed=4, **SMALL))["root_folder"]))
    assert a == b
    assert a[Path("train.txt")] != c[Path("train.txt")]
    assert len([k for k in a if k.suffix == ".png"]) == 22


def test_datalist_reads_back_and_matches_ground_truth(tmp_path):
    cfg = SyntheticConfig(seed=1, frame_width=80, frame_height=48, **SMALL)
    files = generate_dataset(tmp_path, cfg)
    for split, n in (("train", 16), ("test", 6)):
        dl = read_datalist(files[split], att_num=cfg.num_classes, bbox_num=cfg.bbox_num,
                           root_folder=files["root_folder"])
        gt = json.loads(Path(files[f"gt_{split}"]).read_text())
        assert len(dl) == n == len(gt["images"])
        assert gt["classes"] == list(SHAPES[:10]) and gt["frame"] == {"width": 80, "height": 48}
        b = dl.boxes
        assert (b[..., 0] >= 0).all() and (b[..., 2] <= 79).all() and (b[..., 3] <= 47).all()
        assert (b[..., 0] <= b[..., 2]).all() and (b[..., 1] <= b[..., 3]).all()
        assert ((b[..., 4] > 0) & (b[..., 4] < 1)).all()
        assert (np.diff(b[..., 4], axis=1) <= 1e-4).all()  # kept best-first
        for k, im in enumerate(gt["images"]):
            assert dl.paths[k] == im["path"] and im["path"].startswith(split + "/")
            assert 1 <= len(im["objects"]) <= 4
            assert dl.labels[k].tolist() == im["labels"]
            assert set(np.nonzero(im["labels"])[0]) == {o["class"] for o in im["objects"]}
            img = cv2.imread(dl.image_path(k))
            assert img.shape[:2] == (im["height"], im["width"])
            for o in im["objects"]:
                x1, y1, x2, y2 = o["box_image"]
                fx, fy = 80 / im["width"], 48 / im["height"]
                want = [x1 * fx, y1 * fy, min(x2 * fx, 79), min(y2 * fy, 47)]  # scaled, clipped to the frame
                np.testing.assert_allclose(o["box"], want, atol=0.006)


def test_objects_span_small_to_large_and_proposals_find_them(tmp_path):
    cfg = SyntheticConfig(seed=0, num_train=60, num_test=0, image_size=96, bbox_num=30)
    files = generate_dataset(tmp_path, cfg)
    dl = read_datalist(files["train"], att_num=10, bbox_num=30, root_folder=files["root_folder"])
    gt = json.loads(Path(files["gt_train"]).read_text())
    sizes, found, pos, neg = [], [], [], []
    for k, im in enumerate(gt["images"]):
        for o in im["objects"]:
            sizes.append(max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) + 1)
            found.append(max(_iou(o["box"], p) for p in dl.boxes[k]) >= 0.5)
        for p in dl.boxes[k]:
            (pos if max(_iou(o["box"], p) for o in im["objects"]) >= 0.5 else neg).append(p[4])
    sizes = np.array(sizes) / 96
    assert sizes.min() < 0.12 and sizes.max() > 0.35
    assert 0.6 < np.mean(found) < 1.0  # good but imperfect recall, like a real method
    assert np.mean(pos) > np.mean(neg) + 0.05  # objectness prefers objects
    assert len(neg) > len(pos)  # most proposals are background


def test_objectness_prefers_a_tight_box():
    img = np.full((64, 64, 3), 90, np.uint8)
    cv2.rectangle(img, (20, 16), (43, 39), (20, 200, 240), -1)
    s = objectness(img, np.array([[20, 16, 43, 39], [0, 0, 15, 15], [26, 22, 37, 33], [10, 6, 53, 49]]))
    assert s[0] == s.max() and s[0] > 0.9 and s[1] < 0.6


def test_sample_is_a_pure_function():
    cfg = SyntheticConfig(**SMALL)
    a, b = make_sample(cfg, "test", 5), make_sample(cfg, "test", 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.proposals, b.proposals)
    assert not np.array_equal(make_sample(cfg, "train", 5).proposals, a.proposals)


def test_loader_runs_on_the_benchmark(tmp_path):
    files = generate_dataset(tmp_path, SyntheticConfig(**SMALL))
    cfg = HumanAttDataConfig(source=files["train"], root_folder=files["root_folder"], batch_size=4,
                             new_width=64, new_height=64, scale_factors=(0.75, 1.0), mirror=True, shuffle=True,
                             att_num=10, bbox_num=12, mean_values=(103.52, 116.28, 123.675))
    batches = list(build_loader(cfg, seed=0))
    assert len(batches) == 4
    assert all(b.rois.shape == (48, 6) and b.labels.shape == (4, 10) for b in batches)


def test_config_validation():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig(num_classes=len(SHAPES) + 1)
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=16)


def test_cli(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic.py"), "--out", str(tmp_path),
                        "--num-train", "3", "--num-test", "2", "--bbox-num", "5", "--image-size", "48"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(read_datalist(tmp_path / "train.txt", root_folder=str(tmp_path) + "/")) == 3
