"""Dataset builders on tiny COCO-like and NUS-WIDE-like fixtures made here."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from mlic.data import read_datalist
from mlic.data.builders import (DatasetFormatError, EdgeBoxesProposals, PrecomputedProposals,
                                SelectiveSearchProposals, build_datalist, coco_multilabels,
                                edge_boxes_from_edges, format_line, map_boxes_to_frame, nuswide_multilabels,
                                save_proposals_npz, select_proposals)

REPO = Path(__file__).resolve().parents[2]


def _coco_fixture(tmp_path):
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


def test_coco_labels_in_category_id_order(tmp_path):
    ls = coco_multilabels(str(_coco_fixture(tmp_path)), image_prefix="train2014/")
    assert ls.class_names == ["person", "car", "toothbrush"]  # ids 1, 3, 90
    assert ls.paths == ["train2014/COCO_train2014_000000000007.jpg", "train2014/COCO_train2014_000000000009.jpg",
                        "train2014/COCO_train2014_000000000042.jpg"]
    assert ls.labels.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    assert ls.sizes == [(30, 30), (20, 40), (40, 20)]
    no_crowd = coco_multilabels(str(tmp_path / "instances_train2014.json"), include_crowd=False, drop_empty=True)
    assert no_crowd.labels.tolist() == [[0, 1, 1]]


def test_coco_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="not found"):
        coco_multilabels(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetFormatError):
        coco_multilabels(str(bad))


def _nus_fixture(root, with_tt=True):
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


@pytest.mark.parametrize("with_tt", [True, False])
def test_nuswide_clean_split(tmp_path, with_tt):
    _nus_fixture(tmp_path, with_tt)
    tr = nuswide_multilabels(str(tmp_path), "train", image_prefix="Flickr/")
    # image 5 (boat) has no concept and is dropped
    assert tr.paths == ["Flickr/actor/0001_1.jpg", "Flickr/zebra/0003_3.jpg"]
    assert tr.class_names == ["sky", "dog", "car"]
    assert tr.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    te = nuswide_multilabels(str(tmp_path), "test", drop_empty=False)
    assert te.paths == ["actor/0002_2.jpg", "zebra/0004_4.jpg"] and te.labels.tolist() == [[0, 0, 0], [1, 0, 0]]
    assert len(nuswide_multilabels(str(tmp_path), "all")) == 3


def test_nuswide_errors(tmp_path):
    _nus_fixture(tmp_path, with_tt=False)
    (tmp_path / "Groundtruth" / "AllLabels" / "Labels_dog.txt").write_text("0\n1\n")
    with pytest.raises(DatasetFormatError, match="Labels_dog.txt: 2 label lines, expected 5"):
        nuswide_multilabels(str(tmp_path), "train")
    (tmp_path / "Groundtruth" / "AllLabels" / "Labels_dog.txt").write_text("0\n0\n2\n0\n0\n")
    with pytest.raises(DatasetFormatError, match=r"Labels_dog.txt:3: label must be 0 or 1"):
        nuswide_multilabels(str(tmp_path), "all")
    with pytest.raises(DatasetFormatError, match="neither .* nor .* exists"):
        nuswide_multilabels(str(tmp_path / "missing"), "train")


def test_map_and_select_proposals_hand_values():
    b = map_boxes_to_frame(np.array([[10, 5, 39, 19], [-3, 0, 50, 25]]), 40, 20, 80, 60)
    np.testing.assert_allclose(b, [[20, 15, 78, 57], [0, 0, 79, 59]])
    boxes = np.array([[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 7, 7], [5, 5, 1, 1]])  # last is degenerate
    scores = np.array([0.2, 0.9, 0.5, 1.0])
    top2 = select_proposals(boxes, scores, 2, 10, 10)
    np.testing.assert_array_equal(top2, [[1, 1, 6, 6, 0.9], [2, 2, 7, 7, 0.5]])
    rep = select_proposals(boxes, scores, 5, 10, 10, pad="repeat")
    np.testing.assert_array_equal(rep[:, 4], [0.9, 0.5, 0.2, 0.9, 0.5])
    whole = select_proposals(boxes, scores, 4, 10, 10, pad="whole")
    np.testing.assert_array_equal(whole[3], [0, 0, 9, 9, 1])
    zero = select_proposals(np.zeros((0, 4)), None, 2, 10, 8, pad="zero")
    np.testing.assert_array_equal(zero, [[0, 0, 9, 7, 0]] * 2)
    # no scores: all 1, source order kept
    ns = select_proposals(boxes[:3], None, 3, 10, 10)
    np.testing.assert_array_equal(ns[:, :4], boxes[:3])
    np.testing.assert_array_equal(ns[:, 4], [1, 1, 1])


def test_format_line_rejects_spaces():
    assert format_line("a.jpg", [1, 0], np.array([[1, 2, 3, 4, 0.5]])) == "a.jpg 1 0 1.00 2.00 3.00 4.00 0.5000"
    with pytest.raises(ValueError, match="whitespace"):
        format_line("my pic.jpg", [1], np.zeros((1, 5)))


def test_precomputed_mat_wsddn_layout(tmp_path):
    # WSDDN/Fast R-CNN .mat: cells, 1-based (y1, x1, y2, x2)
    images = np.empty((1, 2), dtype=object)
    images[0, 0], images[0, 1] = np.array(["000005"]), np.array(["000007"])
    boxes = np.empty((1, 2), dtype=object)
    boxes[0, 0] = np.array([[2.0, 11.0, 6.0, 21.0], [1.0, 1.0, 20.0, 40.0]])
    boxes[0, 1] = np.zeros((0, 4))
    scores = np.empty((1, 2), dtype=object)
    scores[0, 0] = np.array([[0.3], [0.7]])
    scores[0, 1] = np.zeros((0, 1))
    scipy.io.savemat(tmp_path / "eb.mat", {"images": images, "boxes": boxes, "boxScores": scores})
    src = PrecomputedProposals(str(tmp_path / "eb.mat"))
    b, s = src("JPEGImages/000005.jpg", "JPEGImages/000005.jpg")
    np.testing.assert_array_equal(b, [[10, 1, 20, 5], [0, 0, 39, 19]])
    np.testing.assert_array_equal(s, [0.3, 0.7])
    assert len(src("000007", "x")[0]) == 0
    with pytest.raises(DatasetFormatError, match="no proposals for image '000009.jpg'"):
        src("000009.jpg", "x")


def test_precomputed_npz_and_build_coco_datalist(tmp_path):
    inst = _coco_fixture(tmp_path)
    names = ["COCO_train2014_000000000007.jpg", "COCO_train2014_000000000009.jpg", "COCO_train2014_000000000042.jpg"]
    save_proposals_npz(str(tmp_path / "p.npz"), names,
                       [np.array([[0, 0, 29, 29], [3, 3, 10, 10], [5, 6, 7, 8]]), np.zeros((0, 4)),
                        np.array([[4, 2, 39, 19]])],
                       [np.array([0.1, 0.8, 0.5]), np.zeros(0), np.array([0.9])])
    out = tmp_path / "train.txt"
    ls = coco_multilabels(str(inst), image_prefix="train2014/")
    n = build_datalist(ls, str(out), bbox_num=2, new_width=60, new_height=40,
                       proposals=PrecomputedProposals(str(tmp_path / "p.npz")), image_root=str(tmp_path))
    assert n == 3
    dl = read_datalist(out, root_folder=str(tmp_path) + "/")
    assert (dl.att_num, dl.bbox_num) == (3, 2)
    # image 7 (30x30 -> 60x40): top-2 by score: (3,3,10,10) s .8 -> (6, 4, 20, 13.33); (5,6,7,8) s .5
    np.testing.assert_allclose(dl.boxes[0], [[6, 4, 20, 13.33, 0.8], [10, 8, 14, 10.67, 0.5]], atol=1e-5)
    # image 9 has none: whole frame, score 1
    np.testing.assert_allclose(dl.boxes[1], [[0, 0, 59, 39, 1]] * 2)
    # image 42 (40x20 -> 60x40): one box, repeated
    np.testing.assert_allclose(dl.boxes[2], [[6, 4, 58.5, 38, 0.9]] * 2)
    assert dl.labels.tolist() == ls.labels.tolist()


def test_build_nuswide_with_selective_search(tmp_path):
    _nus_fixture(tmp_path)
    rng = np.random.default_rng(1)
    for rel in ("actor/0001_1.jpg", "zebra/0003_3.jpg"):
        p = tmp_path / "Flickr" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img = np.full((30, 40, 3), 30, np.uint8)
        cv2.rectangle(img, (5, 5), (20, 22), tuple(int(v) for v in rng.integers(100, 255, 3)), -1)
        cv2.imwrite(str(p), img)
    ls = nuswide_multilabels(str(tmp_path), "train", image_prefix="Flickr/")
    out = tmp_path / "nus.txt"
    build_datalist(ls, str(out), bbox_num=4, new_width=80, new_height=60,
                   proposals=SelectiveSearchProposals(num=4), image_root=str(tmp_path))
    dl = read_datalist(out, root_folder=str(tmp_path) + "/")
    assert (len(dl), dl.att_num, dl.bbox_num) == (2, 3, 4)
    # scores from the rank: (B - r) / B for B = 4
    np.testing.assert_allclose(dl.boxes[..., 4], [[1, 0.75, 0.5, 0.25]] * 2)
    assert (dl.boxes[..., 0] <= dl.boxes[..., 2]).all() and (dl.boxes[..., 2] <= 79).all()
    # the drawn rectangle (5..20, 5..22 in 40x30) maps to about (10..41, 10..45): some box finds it
    iou = []
    for b in dl.boxes[0]:
        ix = max(0, min(b[2], 41) - max(b[0], 10) + 1) * max(0, min(b[3], 45) - max(b[1], 10) + 1)
        area = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + 32 * 36 - ix
        iou.append(ix / area)
    assert max(iou) > 0.7


def test_edge_boxes_from_an_edge_map():
    img = np.zeros((60, 80), np.float32)
    cv2.rectangle(img, (20, 10), (49, 39), 1.0, -1)
    gx, gy = cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1)
    mag = np.sqrt(gx ** 2 + gy ** 2)
    mag /= mag.max()
    ori = np.mod(np.arctan2(gy, gx), np.pi).astype(np.float32)
    boxes, scores = edge_boxes_from_edges(mag, ori, max_boxes=10)
    assert len(boxes) >= 1 and len(scores) == len(boxes)
    assert (np.diff(scores) <= 1e-6).all()  # best first
    b = boxes[0]
    assert abs(b[0] - 20) <= 4 and abs(b[1] - 10) <= 4 and abs(b[2] - 49) <= 4 and abs(b[3] - 39) <= 4


def test_edge_boxes_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="model.yml.gz.* not found; Edge Boxes needs OpenCV's structured edge "
                                                 "model .* from OpenCV's opencv_extra repository, "
                                                 "testdata/cv/ximgproc/model.yml.gz"):
        EdgeBoxesProposals(str(tmp_path / "model.yml.gz"))


def test_make_datalist_cli(tmp_path):
    inst = _coco_fixture(tmp_path)
    out = tmp_path / "cli.txt"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_datalist.py"), "coco", "--instances", str(inst),
                        "--image-prefix", "train2014/", "--image-root", str(tmp_path), "--selective-search",
                        "--bbox-num", "3", "--new-width", "32", "--new-height", "32", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    dl = read_datalist(out, root_folder=str(tmp_path) + "/")
    assert (len(dl), dl.att_num, dl.bbox_num) == (3, 3, 3)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_datalist.py"), "coco", "--instances", str(inst),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--selective-search" in r.stderr
