"""The figures are written as valid PNGs of the expected size and show what they should."""
import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from mlic.visualization import plot_pr_curves, plot_qualitative, plot_training_curves, read_csv_log

NAMES = ["person", "dog", "cat", "car", "bus"]


def _png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20  # more than a blank canvas
    return arr


def _near(arr, hex_color, tol=40):
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(arr.astype(int) - rgb).max(-1) <= tol).sum())


def _qualitative(tmp_path, image, labels, name):
    boxes = np.array([[10, 10, 100, 80], [50, 40, 200, 150], [0, 0, 5, 5]], float)
    return plot_qualitative(image, boxes, [0.9, 0.5, 0.1], NAMES, scores_kd=[0.9, 0.8, 0.1, 0.2, 0.7],
                            scores_no_kd=[0.3, 0.9, 0.2, 0.6, 0.1], labels=labels, out_path=tmp_path / name,
                            num_proposals=2)


def test_qualitative_png(tmp_path):
    img = np.full((160, 240, 3), 128, np.uint8)  # grey: no blue or red of its own
    arr = _png(_qualitative(tmp_path, img, [1, 1, 0, 0, 0], "q.png"))
    # width 6.4 in at 100 dpi; height follows the image's aspect ratio (+ the label rows and the caption)
    assert arr.shape[1] == 640 and arr.shape[0] == round(100 * (6.2 * 160 / 240 + 1.3 + 0.1 + 0.55))
    plain = _png(plot_qualitative(img, [[0, 0, 5, 5]], [0.9], NAMES, [0.1] * 5, [0.1] * 5, [1, 0, 0, 0, 0],
                                  tmp_path / "plain.png", caption=False))
    assert plain.shape[0] == round(100 * (6.2 * 160 / 240 + 1.3 + 0.1))
    # top-3 without KD: dog (correct), car, person (correct); with KD: person, dog (correct), bus -> both colours
    assert _near(arr, "#1f4fd8") > 20 and _near(arr, "#d62728") > 20


def test_qualitative_colours_follow_the_labels(tmp_path):
    img = np.full((160, 240, 3), 128, np.uint8)
    every_top3_correct = [1, 1, 0, 1, 1]  # person, dog, car, bus: all six top-3 labels are positives
    arr = _png(_qualitative(tmp_path, img, every_top3_correct, "all_right.png"))
    assert _near(arr, "#1f4fd8") > 20 and _near(arr, "#d62728") == 0
    arr = _png(_qualitative(tmp_path, img, [0, 0, 1, 0, 0], "all_wrong.png"))
    assert _near(arr, "#1f4fd8") == 0 and _near(arr, "#d62728") > 20


def test_qualitative_from_path_and_box_frame(tmp_path):
    img = np.zeros((120, 90, 3), np.uint8)
    img[:, :, 0] = 200  # blue in BGR
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), img)
    out = plot_qualitative(path, [[0, 0, 671, 671]], [1.0], NAMES[:2], [0.9, 0.1], [0.2, 0.8], [1, 0],
                           tmp_path / "p.png", boxes_frame=(672, 672), title="an image")
    arr = _png(out)
    # the BGR image is shown as RGB: a strongly blue area exists
    blue = (arr[:, :, 2] > 150) & (arr[:, :, 0] < 60) & (arr[:, :, 1] < 60)
    assert blue.sum() > 1000


def test_qualitative_bad_inputs(tmp_path):
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="image: expected a BGR uint8"):
        plot_qualitative(img.astype(np.float32), [[0, 0, 1, 1]], [1], ["a"], [1], [1], [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="image: cannot read"):
        plot_qualitative(tmp_path / "none.jpg", [[0, 0, 1, 1]], [1], ["a"], [1], [1], [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="objectness: expected 1 values, got 2"):
        plot_qualitative(img, [[0, 0, 1, 1]], [1, 2], ["a"], [1], [1], [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="scores_kd: .*non-finite"):
        plot_qualitative(img, [[0, 0, 1, 1]], [1], ["a"], [np.nan], [1], [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="PNG"):
        plot_qualitative(img, [[0, 0, 1, 1]], [1], ["a"], [1], [1], [1], tmp_path / "x.jpg")


def test_pr_curves_png(tmp_path):
    rng = np.random.default_rng(0)
    s = rng.random((80, 5))
    y = (rng.random((80, 5)) < s * 0.7).astype(int)
    y[:, 4] = 0  # no positives: left out of the default selection
    arr = _png(plot_pr_curves(s, y, tmp_path / "pr.png", class_names=NAMES, ncols=3))
    # 4 classes with positives + overall = 5 panels -> 3 columns x 2 rows of 2.6 x 2.5 in
    assert arr.shape[:2] == (500, 780)
    arr = _png(plot_pr_curves(s, y, tmp_path / "pr2.png", class_names=NAMES, classes=["cat", 0], ncols=4))
    assert arr.shape[:2] == (250, 780)  # 3 panels in one row
    with pytest.raises(ValueError, match="unknown class name 'horse'"):
        plot_pr_curves(s, y, tmp_path / "pr3.png", class_names=NAMES, classes=["horse"])
    with pytest.raises(ValueError, match="no class has a positive"):
        plot_pr_curves(s, np.zeros_like(y), tmp_path / "pr4.png")


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_training_curves_png(tmp_path):
    log = tmp_path / "log.csv"
    _write_csv(log, ["iter", "loss", "lr", "note", "img_per_s"],
               [[i, 1.0 / i, 0.001 if i < 20 else 0.0001, "text", "" if i % 3 else 25.0] for i in range(1, 41)])
    ev = tmp_path / "eval.csv"
    _write_csv(ev, ["iter", "loss", "mAP"], [[10, 0.5, 0.4], [20, 0.4, 0.5], [30, 0.35, 0.55], [40, 0.3, 0.6]])
    header, data = read_csv_log(log)
    assert header == ["iter", "loss", "lr", "note", "img_per_s"]
    assert np.isnan(data["note"]).all() and np.isnan(data["img_per_s"][0]) and data["img_per_s"][2] == 25.0
    # numeric columns besides iter: loss (both files), lr, mAP; throughput left out -> 3 subplots in a row
    arr = _png(plot_training_curves([log, ev], tmp_path / "curves.png"))
    assert arr.shape[:2] == (260, 1020)
    arr = _png(plot_training_curves(log, tmp_path / "loss.png", columns=["loss"]))
    assert arr.shape[:2] == (260, 340)
    # a rate that never changes is left out too; a title adds a line
    _write_csv(log, ["iter", "loss", "lr"], [[i, 1.0 / i, 0.01] for i in range(1, 41)])
    arr = _png(plot_training_curves(log, tmp_path / "one.png", title="stage 2", smooth=5))
    assert arr.shape[:2] == (295, 340)


def test_running_mean_matches_numpy():
    from mlic.visualization.figures import _running_mean

    y = np.random.default_rng(0).normal(size=50)
    k = 7
    ref = [y[max(0, i - k + 1): i + 1].mean() for i in range(len(y))]
    np.testing.assert_allclose(_running_mean(y, k), ref, rtol=1e-12)


def test_training_curves_bad_inputs(tmp_path):
    p = tmp_path / "log.csv"
    _write_csv(p, ["step", "loss"], [[1, 0.5]])
    with pytest.raises(ValueError, match=r"log\.csv: no 'iter' column"):
        plot_training_curves(p, tmp_path / "c.png")
    _write_csv(p, ["iter", "loss"], [[1, 0.5]])
    with pytest.raises(ValueError, match=r"columns: no numeric data for \['mAP'\]"):
        plot_training_curves(p, tmp_path / "c.png", columns=["mAP"])
    _write_csv(p, ["iter", "note"], [[1, "x"]])
    with pytest.raises(ValueError, match="no numeric column"):
        plot_training_curves(p, tmp_path / "c.png")
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "none.csv", tmp_path / "c.png")
    p.write_text("iter,loss\n1,0.5,7\n")
    with pytest.raises(ValueError, match=r"log\.csv:2: 3 fields"):
        read_csv_log(p)
