"""Ground truth from COCO instances JSON, VOC XML and the synthetic benchmark, in the network's frame."""
import json

import numpy as np
import pytest

from mlic.data import parse_datalist_text
from mlic.data.annotations import VOC_CLASSES, read_ground_truth
from mlic.data.datalist import DatasetFormatError
from mlic.data.labelsets import coco_multilabels

# COCO 2014's 80 category ids: 1..90 with gaps
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _coco(tmp_path, annotations, images=None):
    images = images or [
        {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 640, "height": 480},
        {"id": 4, "file_name": "COCO_val2014_000000000004.jpg", "width": 500, "height": 375},
        {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 100, "height": 100},
    ]
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": f"cat{i}", "supercategory": "x"} for i in reversed(COCO_IDS)]}
    p = tmp_path / "instances_val2014.json"
    p.write_text(json.dumps(data))
    return p


def _list(paths, att=80, source="test.txt"):
    text = "".join(f"{p} " + " ".join(["0"] * att) + " 0 0 5 5 0.5\n" for p in paths)
    return parse_datalist_text(text, source, att_num=att, bbox_num=1)


def test_coco_boxes_in_the_network_frame_and_real_category_ids(tmp_path):
    anns = [
        {"id": 1, "image_id": 9, "category_id": 90, "bbox": [10, 20, 30, 40], "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 1, "bbox": [0, 0, 640, 480], "iscrowd": 1},
        {"id": 3, "image_id": 4, "category_id": 67, "bbox": [100.5, 50, 10, 20]},
    ]
    p = _coco(tmp_path, anns)
    dl = _list(["val2014/COCO_val2014_000000000004.jpg", "val2014/COCO_val2014_000000000009.jpg",
                "val2014/COCO_val2014_000000000007.jpg"])
    gt = read_ground_truth(p, dl, (672, 672), num_classes=80)
    assert gt.format == "coco" and len(gt) == 3
    assert gt.class_names[:3] == ["cat1", "cat2", "cat3"] and gt.class_names[-1] == "cat90"
    # line 1 is image 4 (500 x 375): [x, y, w, h] = [100.5, 50, 10, 20] -> inclusive corners
    # (100.5, 50, 109.5, 69) -> x * 672/500, y * 672/375; category 67 is the 61st id -> column 60
    np.testing.assert_allclose(gt[0]["boxes"], [[100.5 * 1.344, 50 * 1.792, 109.5 * 1.344, 69 * 1.792]])
    assert gt[0]["labels"].tolist() == [COCO_IDS.index(67)] == [60]
    # line 2 is image 9 (640 x 480): (10, 20, 39, 59) * (1.05, 1.4); the crowd box is difficult
    # and clipped to the frame (639 * 1.05 = 670.95, 479 * 1.4 = 670.6)
    np.testing.assert_allclose(gt[1]["boxes"], [[10.5, 28, 40.95, 82.6], [0, 0, 670.95, 670.6]])
    assert gt[1]["labels"].tolist() == [79, 0] and gt[1]["difficult"].tolist() == [False, True]
    assert gt[2]["boxes"].shape == (0, 4) and gt[2]["labels"].shape == (0,)


def test_coco_labels_agree_with_the_datalist_builder(tmp_path):
    rng = np.random.default_rng(0)
    anns = [{"id": k, "image_id": int(rng.choice([4, 7, 9])), "category_id": int(rng.choice(COCO_IDS)),
             "bbox": [1, 2, 3, 4], "iscrowd": 0} for k in range(40)]
    p = _coco(tmp_path, anns)
    labels = coco_multilabels(str(p), "val2014/")
    gt = read_ground_truth(p, _list(labels.paths), (224, 224))
    assert gt.class_names == labels.class_names
    for i in range(len(labels)):
        assert sorted(set(gt[i]["labels"].tolist())) == np.flatnonzero(labels.labels[i]).tolist()


def test_coco_class_order_from_names_and_count_check(tmp_path):
    p = _coco(tmp_path, [{"id": 1, "image_id": 9, "category_id": 3, "bbox": [0, 0, 2, 2]}])
    names = [f"cat{i}" for i in reversed(COCO_IDS)]
    gt = read_ground_truth(p, _list(["COCO_val2014_000000000009.jpg"]), (640, 480), class_names=names)
    assert gt[0]["labels"].tolist() == [names.index("cat3")]
    np.testing.assert_allclose(gt[0]["boxes"], [[0, 0, 1, 1]])
    with pytest.raises(DatasetFormatError, match="80 classes, but the network has 20"):
        read_ground_truth(p, _list(["COCO_val2014_000000000009.jpg"], att=20), (640, 480), num_classes=20)
    with pytest.raises(DatasetFormatError, match="class 'cat1' is not among the 2 class names"):
        read_ground_truth(p, _list(["COCO_val2014_000000000009.jpg"]), (640, 480), class_names=["a", "b"])


def test_coco_errors_name_the_file_and_the_datalist_line(tmp_path):
    p = _coco(tmp_path, [])
    dl = _list(["a/COCO_val2014_000000000009.jpg", "a/missing.jpg"], source="my_list.txt")
    with pytest.raises(DatasetFormatError, match=r"instances_val2014.json: no annotation for 'a/missing.jpg' "
                                                 r"\(my_list.txt:2\)"):
        read_ground_truth(p, dl, (672, 672))
    bad = _coco(tmp_path, [{"id": 5, "image_id": 9, "category_id": 12, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(DatasetFormatError, match="annotation 5: unknown category_id 12"):
        read_ground_truth(bad, dl, (672, 672))
    bad = _coco(tmp_path, [{"id": 6, "image_id": 9, "category_id": 1, "bbox": [0, 0, -1, 1]}])
    with pytest.raises(DatasetFormatError, match="annotation 6: negative"):
        read_ground_truth(bad, dl, (672, 672))
    dup = _coco(tmp_path, [], images=[{"id": 1, "file_name": "x/a.jpg", "width": 9, "height": 9},
                                      {"id": 2, "file_name": "y/a.jpg", "width": 9, "height": 9}])
    with pytest.raises(DatasetFormatError, match="2 annotated images are named 'a.jpg'"):
        read_ground_truth(dup, _list(["z/a.jpg"]), (9, 9))
    assert read_ground_truth(dup, _list(["y/a.jpg"]), (9, 9)).format == "coco"  # the exact path decides


def _voc_xml(folder, stem, width, height, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    (folder / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objs}</annotation>")


def test_voc_xml(tmp_path):
    ann = tmp_path / "VOC2007" / "Annotations"
    ann.mkdir(parents=True)
    _voc_xml(ann, "000001", 353, 500, [("dog", (48, 240, 195, 371), False), ("person", (8, 12, 352, 498), True)])
    _voc_xml(ann, "000002", 335, 500, [("train", (139, 200, 207, 301), False)])
    dl = _list(["JPEGImages/000002.jpg", "JPEGImages/000001.jpg"], att=20)
    for where in (ann, tmp_path / "VOC2007"):  # the Annotations folder or the VOC root
        gt = read_ground_truth(where, dl, (353, 500))
        assert gt.format == "voc" and gt.class_names == list(VOC_CLASSES)
        # 1-based inclusive -> 0-based; the frame is image 000001's own size
        np.testing.assert_allclose(gt[1]["boxes"], [[47, 239, 194, 370], [7, 11, 351, 497]])
        assert gt[1]["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
        assert gt[1]["difficult"].tolist() == [False, True]
        np.testing.assert_allclose(gt[0]["boxes"], [[138 * 353 / 335, 199, 206 * 353 / 335, 300]])
    # into a 672 x 672 frame
    gt = read_ground_truth(ann, dl, (672, 672))
    np.testing.assert_allclose(gt[1]["boxes"][0], [47 * 672 / 353, 239 * 672 / 500, 194 * 672 / 353,
                                                   370 * 672 / 500])
    with pytest.raises(DatasetFormatError, match=r"no annotation 000003.xml for 'x/000003.jpg' \(test.txt:1\)"):
        read_ground_truth(ann, _list(["x/000003.jpg"], att=20), (672, 672))
    _voc_xml(ann, "000004", 10, 10, [("unicorn", (1, 1, 2, 2), False)])
    with pytest.raises(DatasetFormatError, match="000004.xml: object class 'unicorn' is not one of the 20"):
        read_ground_truth(ann, _list(["000004.jpg"], att=20), (672, 672))
    with pytest.raises(DatasetFormatError, match="20 classes, but the network has 80"):
        read_ground_truth(ann, _list(["000001.jpg"]), (672, 672), num_classes=80)


def test_synthetic_gt_and_format_detection(tmp_path):
    data = {"classes": ["circle", "square"], "frame": {"width": 64, "height": 64}, "split": "test",
            "images": [{"path": "test/000000.png", "width": 128, "height": 64, "labels": [1, 1],
                        "objects": [{"class": 1, "box": [2, 4, 10, 20], "box_image": [4, 4, 20, 20]},
                                    {"class": 0, "box": [0, 0, 5, 5], "box_image": [0, 0, 10, 5]}]}]}
    p = tmp_path / "gt_test.json"
    p.write_text(json.dumps(data))
    dl = _list(["test/000000.png"], att=2)
    gt = read_ground_truth(p, dl, (64, 64))
    assert gt.format == "synthetic" and gt.class_names == ["circle", "square"]
    np.testing.assert_allclose(gt[0]["boxes"], [[2, 4, 10, 20], [0, 0, 5, 5]])
    assert gt[0]["labels"].tolist() == [1, 0]
    # another frame: the boxes are mapped from the original image's
    np.testing.assert_allclose(read_ground_truth(p, dl, (256, 128))[0]["boxes"], [[8, 8, 40, 40], [0, 0, 20, 10]])
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DatasetFormatError, match="unknown ground truth format: expected COCO instances JSON"):
        read_ground_truth(tmp_path / "other.json", dl, (64, 64))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetFormatError, match="broken.json: not a JSON file"):
        read_ground_truth(tmp_path / "broken.json", dl, (64, 64))
    with pytest.raises(DatasetFormatError, match="ground truth not found"):
        read_ground_truth(tmp_path / "nope.json", dl, (64, 64))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="holds no VOC .xml annotations"):
        read_ground_truth(tmp_path / "empty", dl, (64, 64))
