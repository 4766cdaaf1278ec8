"""Label sets of COCO and NUS-WIDE from tiny stand-ins of their files."""
import json

import pytest

from mlic.data.datalist import DatasetFormatError
from mlic.data.labelsets import coco_multilabels, nuswide_multilabels
from tests.data.helpers import write_coco, write_nuswide


def test_coco_labels_in_category_id_order(tmp_path):
    ls = coco_multilabels(str(write_coco(tmp_path)), image_prefix="train2014/")
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


@pytest.mark.parametrize("with_tt", [True, False])
def test_nuswide_clean_split(tmp_path, with_tt):
    write_nuswide(tmp_path, with_tt)
    tr = nuswide_multilabels(str(tmp_path), "train", image_prefix="Flickr/")
    # image 5 (boat) has no concept and is dropped
    assert tr.paths == ["Flickr/actor/0001_1.jpg", "Flickr/zebra/0003_3.jpg"]
    assert tr.class_names == ["sky", "dog", "car"]
    assert tr.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    te = nuswide_multilabels(str(tmp_path), "test", drop_empty=False)
    assert te.paths == ["actor/0002_2.jpg", "zebra/0004_4.jpg"] and te.labels.tolist() == [[0, 0, 0], [1, 0, 0]]
    assert len(nuswide_multilabels(str(tmp_path), "all")) == 3


def test_nuswide_errors(tmp_path):
    write_nuswide(tmp_path, with_tt=False)
    (tmp_path / "Groundtruth" / "AllLabels" / "Labels_dog.txt").write_text("0\n1\n")
    with pytest.raises(DatasetFormatError, match="Labels_dog.txt: 2 label lines, expected 5"):
        nuswide_multilabels(str(tmp_path), "train")
    (tmp_path / "Groundtruth" / "AllLabels" / "Labels_dog.txt").write_text("0\n0\n2\n0\n0\n")
    with pytest.raises(DatasetFormatError, match=r"Labels_dog.txt:3: label must be 0 or 1"):
        nuswide_multilabels(str(tmp_path), "all")
    with pytest.raises(DatasetFormatError, match="neither .* nor .* exists"):
        nuswide_multilabels(str(tmp_path / "missing"), "train")
