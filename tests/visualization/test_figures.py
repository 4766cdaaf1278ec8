"""The figures are written as valid PNGs of the expected size and show what they should."""
import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from matplotlib.backends.backend_agg import FigureCanvasAgg

from mlic.visualization import (plot_pr_curves, plot_qualitative, plot_training_curves, read_csv_log,
                                training_curves_figure)

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


STUDENTS = ("student without KD", "student, KD as released (soft cross-entropy)")


def _qualitative(tmp_path, image, labels, name):
    boxes = np.array([[10, 10, 100, 80], [50, 40, 200, 150], [0, 0, 5, 5]], float)
    return plot_qualitative(image, boxes, [0.9, 0.5, 0.1], NAMES,
                            {STUDENTS[0]: [0.3, 0.9, 0.2, 0.6, 0.1], STUDENTS[1]: [0.9, 0.8, 0.1, 0.2, 0.7]},
                            labels=labels, out_path=tmp_path / name, num_proposals=2)


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


def test_qualitative_png(tmp_path):
    img = np.full((160, 240, 3), 128, np.uint8)  # grey: no blue or red of its own
    arr = _png(_qualitative(tmp_path, img, [1, 1, 0, 0, 0], "q.png"))
    # top-3 without KD: dog (correct), car, person (correct); with KD: person, dog (correct), bus -> both colours
    assert _near(arr, "#1f4fd8") > 20 and _near(arr, "#d62728") > 20


def test_qualitative_names_each_student_and_keeps_the_image_unstretched():
    from mlic.visualization import qualitative_figure

    for h, w in ((160, 240), (300, 120)):
        img = np.full((h, w, 3), 128, np.uint8)
        fig = qualitative_figure(img, [[0, 0, 20, 20]], [0.9], NAMES,
                                 {STUDENTS[0]: [0.1] * 5, STUDENTS[1]: [0.2] * 5, "a third": [0.3] * 5},
                                 [1, 0, 0, 0, 0], title="test image 3, the first with 1 class")
        texts = _texts(fig)
        for name in STUDENTS:  # each column headed by its student's name (wrapped to its width)
            assert any(" ".join(t.split()) == name for t in texts), (name, texts)
        assert any(" ".join(t.split()) == "a third" for t in texts)
        assert "the first with 1 class" in " ".join(fig.get_suptitle().split())
        renderer = FigureCanvasAgg(fig).get_renderer()
        image_ax = next(ax for ax in fig.axes if ax.images)
        image_ax.apply_aspect()
        box = image_ax.get_window_extent(renderer)
        assert box.width / box.height == pytest.approx(w / h, rel=0.02)  # as predict.py's picture: not square
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_qualitative_box_tags_do_not_overlap():
    from mlic.visualization import qualitative_figure

    img = np.full((130, 143, 3), 128, np.uint8)
    # five boxes sharing corners, as a teacher's top proposals often do
    boxes = [[10, 10, 60, 60], [11, 11, 59, 61], [10, 9, 61, 60], [0, 0, 142, 129], [9, 10, 60, 61]]
    fig = qualitative_figure(img, boxes, [0.61, 0.6, 0.3, 0.05, 0.02], NAMES, {STUDENTS[0]: [0.1] * 5},
                             [1, 0, 0, 0, 0], num_proposals=5)
    renderer = FigureCanvasAgg(fig).get_renderer()
    image_ax = next(ax for ax in fig.axes if ax.images)
    tags = [t for t in image_ax.texts if t.get_text().isdigit()]
    assert sorted(t.get_text() for t in tags) == ["1", "2", "3", "4", "5"]
    boxes_px = []
    for t in tags:
        t.draw(renderer)
        boxes_px.append(t.get_bbox_patch().get_window_extent(renderer))
    for i, a in enumerate(boxes_px):
        for b in boxes_px[i + 1:]:
            assert not a.overlaps(b), (a, b)
    # the key below the image gives each tag's objectness, in rank order
    key = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert key == ["1: 0.61", "2: 0.60", "3: 0.30", "4: 0.05", "5: 0.02"]


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
    out = plot_qualitative(path, [[0, 0, 671, 671]], [1.0], NAMES[:2], {"a": [0.9, 0.1], "b": [0.2, 0.8]}, [1, 0],
                           tmp_path / "p.png", boxes_frame=(672, 672), title="an image")
    arr = _png(out)
    # the BGR image is shown as RGB: a strongly blue area exists
    blue = (arr[:, :, 2] > 150) & (arr[:, :, 0] < 60) & (arr[:, :, 1] < 60)
    assert blue.sum() > 1000


def test_qualitative_bad_inputs(tmp_path):
    img = np.zeros((10, 10, 3), np.uint8)
    one = {"s": [1]}
    with pytest.raises(ValueError, match="image: expected a BGR uint8"):
        plot_qualitative(img.astype(np.float32), [[0, 0, 1, 1]], [1], ["a"], one, [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="image: cannot read"):
        plot_qualitative(tmp_path / "none.jpg", [[0, 0, 1, 1]], [1], ["a"], one, [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="objectness: expected 1 values, got 2"):
        plot_qualitative(img, [[0, 0, 1, 1]], [1, 2], ["a"], one, [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="scores of 's': .*non-finite"):
        plot_qualitative(img, [[0, 0, 1, 1]], [1], ["a"], {"s": [np.nan]}, [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one student"):
        plot_qualitative(img, [[0, 0, 1, 1]], [1], ["a"], {}, [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="PNG"):
        plot_qualitative(img, [[0, 0, 1, 1]], [1], ["a"], one, [1], tmp_path / "x.jpg")


def test_pr_comparison_overlays_every_model_with_its_ap():
    from mlic.evaluation.classification import average_precision
    from mlic.visualization import pr_comparison_figure

    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < 0.4).astype(int)
    y[:, 3] = 0  # a class without positives gets a panel that says so
    models = {"teacher (WSDDN)": y + rng.normal(0, 0.3, y.shape), "student without KD": rng.random(y.shape),
              "student, KD as released (soft cross-entropy)": y + rng.normal(0, 0.8, y.shape)}
    fig = pr_comparison_figure(models, y, class_names=NAMES[:4], title="seed 0: every model",
                               styles={"teacher (WSDDN)": dict(color="black", ls="--")})
    panels = [ax for ax in fig.axes]
    assert [ax.get_title() for ax in panels] == [f"class {n}" for n in NAMES[:4]] + [
        "all classes pooled (legend: pooled AP / mAP)"]
    assert "seed 0: every model" in fig.get_suptitle()
    for c, ax in enumerate(panels[:3]):
        assert len(ax.get_lines()) == 3 and ax.get_xlabel() == "recall" and ax.get_ylabel() == "precision"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        want = [f"{m}: AP {100 * average_precision(np.asarray(s)[:, c], y[:, c]):.1f}" for m, s in models.items()]
        assert legend == want
    assert not panels[3].get_lines() and panels[3].texts[0].get_text() == "no positives"
    assert len(panels[4].get_lines()) == 3
    teacher = panels[0].get_lines()[0]
    assert teacher.get_linestyle() == "--" and teacher.get_color() == "black"
    assert len({line.get_color() for line in panels[0].get_lines()}) == 3
    with pytest.raises(ValueError, match="shape"):
        pr_comparison_figure({"a": rng.random((60, 3))}, y)
    with pytest.raises(ValueError, match="at least one model"):
        pr_comparison_figure({}, y)


def test_pr_curves_png(tmp_path):
    rng = np.random.default_rng(0)
    s = rng.random((80, 5))
    y = (rng.random((80, 5)) < s * 0.7).astype(int)
    y[:, 4] = 0  # no positives: left out of the default selection
    two_rows = _png(plot_pr_curves(s, y, tmp_path / "pr.png", class_names=NAMES, ncols=3))
    one_row = _png(plot_pr_curves(s, y, tmp_path / "pr2.png", class_names=NAMES, classes=["cat", 0], ncols=4))
    # 4 classes with positives + overall = 5 panels in 3 columns (2 rows); 2 classes + overall:
    # 3 panels of the same size in one row
    assert one_row.shape[1] == two_rows.shape[1] and 2 * one_row.shape[0] == two_rows.shape[0]
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
    _png(plot_training_curves([log, ev], tmp_path / "curves.png"))
    # numeric columns besides iter: loss (both files), lr, mAP; throughput left out -> 3 panels in a row
    fig = training_curves_figure([log, ev])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "lr", "mAP"]
    assert len({round(ax.get_position().y0, 6) for ax in fig.axes}) == 1
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 1, 1]
    assert [ax.get_title() for ax in training_curves_figure(log, columns=["loss"]).axes] == ["loss"]
    # a rate that never changes is left out too
    _write_csv(log, ["iter", "loss", "lr"], [[i, 1.0 / i, 0.01] for i in range(1, 41)])
    _png(plot_training_curves(log, tmp_path / "one.png", title="stage 2", smooth=5))
    fig = training_curves_figure(log, title="stage 2", smooth=5)
    assert [ax.get_title() for ax in fig.axes] == ["loss (running mean of 5, raw faint)"]


def test_training_curves_title_fits_and_panels_are_captioned(tmp_path):
    log = tmp_path / "log.csv"
    _write_csv(log, ["iter", "loss", "grad_norm"], [[i, 1.0 / i, 2.0 + i % 3] for i in range(1, 41)])
    title = ("ImageNet stand-in: training (600 iterations of Adam, batch-normalised; folded into plain weights "
             "afterwards)")
    fig = training_curves_figure(log, columns=["loss"], title=title,
                                 captions={"loss": "cross-entropy of the single-object classifier"})
    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height  # nothing cut off
    assert " ".join(fig.get_suptitle().split()) == title
    assert fig.axes[0].get_title() == "loss\ncross-entropy of the single-object classifier"


def test_training_curves_of_several_runs_share_one_legend_and_draw_bands(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for p, k in ((a, 1.0), (b, 2.0)):
        _write_csv(p, ["iter", "soft_scale", "soft_scale_min", "soft_scale_max", "grad_fc8_cos"],
                   [[i, k * i, k * i - 1, k * i + 1, 0.5] for i in range(1, 41)])
    fig = training_curves_figure([a, b], columns=["soft_scale", "grad_fc8_cos"], labels=["KD as released", "KD, L2"],
                                 bands={"soft_scale": ("soft_scale_min", "soft_scale_max")}, ncols=2)
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["KD as released", "KD, L2"]
    assert len(fig.axes[0].collections) == 2 and not fig.axes[1].collections  # one band per run, where asked
    with pytest.raises(ValueError, match="labels: 1 names for 2 files"):
        training_curves_figure([a, b], labels=["one"])


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
