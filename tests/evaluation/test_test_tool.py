"""tools/test.py end to end: --gt in the COCO, VOC and synthetic formats gives the same
CorLoc and detection AP, and a model whose scores are all tied is reported as such."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlic import _ext

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
REPO = Path(__file__).resolve().parents[2]
NET = ["--input-size", "64", "--student-size", "32", "--pooled-size", "1", "--width", "0.0625", "--fc-dim", "16"]


def _run(tool, *args):
    r = subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)], capture_output=True,
                       text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("gt_tool")
    data = generate_dataset(str(root / "data"), SyntheticConfig(num_train=8, num_test=8, bbox_num=8, image_size=64,
                                                                num_classes=4, seed=11))
    _run("train.py", "--stage", "wsddn", "--datalist", data["train"], "--root-folder", data["root_folder"],
         "--out", root / "run", "--max-iter", 2, "--batch-size", 4, "--base-lr", 0.01, "--no-tensorboard",
         "--quiet", *NET)
    return data, root


def _coco_and_voc_from_synthetic(gt_path, root):
    """The synthetic ground truth rewritten as a COCO instances file (non-contiguous category
    ids, [x, y, w, h] in the original image) and as VOC XML (1-based inclusive)."""
    g = json.loads(Path(gt_path).read_text())
    ids = [3, 17, 44, 90]
    images, anns = [], []
    voc = root / "VOC" / "Annotations"
    voc.mkdir(parents=True)
    for k, im in enumerate(g["images"]):
        images.append({"id": 1000 + 7 * k, "file_name": Path(im["path"]).name, "width": im["width"],
                       "height": im["height"]})
        objs = ""
        for o in im["objects"]:
            x1, y1, x2, y2 = o["box_image"]
            anns.append({"id": len(anns) + 1, "image_id": 1000 + 7 * k, "category_id": ids[o["class"]],
                         "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "iscrowd": 0})
            objs += (f"<object><name>{g['classes'][o['class']]}</name><difficult>0</difficult><bndbox>"
                     f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax>"
                     "</bndbox></object>")
        (voc / f"{Path(im['path']).stem}.xml").write_text(
            f"<annotation><size><width>{im['width']}</width><height>{im['height']}</height></size>{objs}"
            "</annotation>")
    coco = root / "instances_test.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": i, "name": n} for i, n in zip(ids, g["classes"])]}))
    return coco, voc.parent


def test_gt_formats_give_the_same_detection_metrics(trained):
    data, root = trained
    coco, voc = _coco_and_voc_from_synthetic(data["gt_test"], root)
    metrics = {}
    for name, gt in (("synthetic", data["gt_test"]), ("coco", coco), ("voc", voc)):
        out = root / f"test_{name}"
        _run("test.py", "--weights", root / "run" / "final.pt", "--datalist", data["test"], "--root-folder",
             data["root_folder"], "--out", out, "--gt", gt, "--class-names", data["classes"])
        metrics[name] = json.loads((out / "metrics.json").read_text())
    for name in ("coco", "voc"):
        for k in ("CorLoc", "CorLoc_overall", "det_mAP"):
            assert metrics[name][k] == pytest.approx(metrics["synthetic"][k], abs=1e-9), (name, k)
    assert metrics["synthetic"]["det_mAP"] > 0  # the comparison is not between zeros


def test_a_model_with_constant_scores_is_warned_about_and_gets_the_positive_rate(trained):
    data, root = trained
    ck = torch.load(root / "run" / "final.pt", map_location="cpu", weights_only=False)
    ck["model"] = {k: torch.zeros_like(v) for k, v in ck["model"].items()}  # every output the same
    torch.save(ck, root / "zero.pt")
    r = _run("test.py", "--weights", root / "zero.pt", "--datalist", data["test"], "--root-folder",
             data["root_folder"], "--out", root / "test_zero", "--gt", data["gt_test"])
    assert "100.0% of the image scores are tied" in r.stderr
    assert "100.0% of the region scores are tied" in r.stderr
    m = json.loads((root / "test_zero" / "metrics.json").read_text())
    lines = [ln.split() for ln in Path(data["test"]).read_text().splitlines()]
    labels = np.array([[int(v) for v in ln[1:5]] for ln in lines])
    rate = labels.mean(0)
    assert m["mAP"] == pytest.approx(rate[rate > 0].mean(), abs=1e-12)
