"""Building datalists with worker processes, in shards, and resuming an interrupted run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlic.cli.make_datalist import main as make_datalist_main
from mlic.data import read_datalist
from mlic.data.datalist import DatasetFormatError
from mlic.data.datalist_writer import build_datalist, shard_bounds
from mlic.data.labelsets import coco_multilabels, nuswide_multilabels
from mlic.data.proposals import PrecomputedProposals, SelectiveSearchProposals, save_proposals_npz
from tests.data.helpers import write_coco, write_nuswide

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 9


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    images, anns = [], []
    (root / "val2014").mkdir()
    for k in range(N_IMAGES):
        w, h = int(rng.integers(80, 140)), int(rng.integers(60, 120))
        img = np.full((h, w, 3), int(rng.integers(0, 80)), np.uint8)
        for _ in range(3):
            x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 20)), y + int(rng.integers(8, 20))),
                          tuple(int(v) for v in rng.integers(90, 255, 3)), -1)
        name = f"COCO_val2014_{k:012d}.jpg"
        cv2.imwrite(str(root / "val2014" / name), img)
        images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": [1, 3, 90][k % 3], "bbox": [1, 1, 5, 5]})
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]
    inst = root / "instances_val2014.json"
    inst.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    labels = coco_multilabels(str(inst), image_prefix="val2014/")
    ref = root / "reference.txt"
    build_datalist(labels, str(ref), bbox_num=5, new_width=64, new_height=64,
                   proposals=SelectiveSearchProposals(num=5), image_root=str(root))
    return root, inst, labels, ref.read_bytes()


def _build(labels, root, out, **kw):
    kw.setdefault("proposals", SelectiveSearchProposals(num=5))
    return build_datalist(labels, str(out), bbox_num=5, new_width=64, new_height=64, image_root=str(root), **kw)


def test_the_reference_list_reads_back(coco):
    root, _, labels, ref = coco
    (root / "r.txt").write_bytes(ref)
    dl = read_datalist(root / "r.txt", att_num=3, root_folder=str(root) + "/")
    assert (len(dl), dl.bbox_num) == (N_IMAGES, 5)
    np.testing.assert_allclose(dl.boxes[:, :, 4], [[1, 0.8, 0.6, 0.4, 0.2]] * N_IMAGES)


def test_workers_and_shards_write_the_same_list(coco, tmp_path):
    root, _, labels, ref = coco
    assert _build(labels, root, tmp_path / "w2.txt", workers=2) == N_IMAGES
    assert (tmp_path / "w2.txt").read_bytes() == ref
    parts = []
    for i in range(4):
        n = _build(labels, root, tmp_path / f"part{i}.txt", workers=2 if i % 2 else 0, shard=(i, 4))
        start, stop = shard_bounds(N_IMAGES, (i, 4))
        assert n == stop - start
        parts.append((tmp_path / f"part{i}.txt").read_bytes())
    assert b"".join(parts) == ref
    assert not list(tmp_path.glob("*.partial*"))
    assert [shard_bounds(9, (i, 4)) for i in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 9)]
    with pytest.raises(ValueError, match="shard"):
        shard_bounds(9, (4, 4))


class Interrupted(SelectiveSearchProposals):
    """Selective search that is interrupted at one image and records the images it ran on."""

    def __init__(self, stop_at=None):
        super().__init__(num=5)
        self.stop_at, self.calls = stop_at, []

    def __call__(self, key, image_path, image=None):
        if key == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(key)
        return super().__call__(key, image_path, image)


def test_an_interrupted_run_resumes_without_redoing_finished_images(coco, tmp_path):
    root, _, labels, ref = coco
    out = tmp_path / "list.txt"
    with pytest.raises(KeyboardInterrupt):
        _build(labels, root, out, proposals=Interrupted(stop_at=labels.keys[5]))
    partial = Path(str(out) + ".partial")
    assert not out.exists() and partial.read_bytes() == b"".join(ref.splitlines(keepends=True)[:5])
    with open(partial, "ab") as f:
        f.write(b"val2014/COCO_val2014_000000000005.jpg 0 1 0 12.")  # a line torn by the interruption
    seen = []
    src = Interrupted()
    _build(labels, root, out, proposals=src, progress=lambda done, total: seen.append((done, total)))
    assert src.calls == labels.keys[5:]
    assert seen[0] == (5, N_IMAGES) and seen[-1] == (N_IMAGES, N_IMAGES)
    assert out.read_bytes() == ref
    assert not partial.exists() and not Path(str(out) + ".partial.json").exists()


def test_resuming_with_other_settings_is_refused(coco, tmp_path):
    root, _, labels, ref = coco
    out = tmp_path / "list.txt"
    with pytest.raises(KeyboardInterrupt):
        _build(labels, root, out, proposals=Interrupted(stop_at=labels.keys[3]))
    with pytest.raises(DatasetFormatError, match=r"list.txt.partial: an unfinished list written with other settings "
                                                 r"\(frame\); remove it or pass --restart"):
        build_datalist(labels, str(out), bbox_num=5, new_width=32, new_height=64, image_root=str(root),
                       proposals=SelectiveSearchProposals(num=5))
    src = Interrupted()
    _build(labels, root, out, proposals=src, restart=True)
    assert src.calls == labels.keys and out.read_bytes() == ref


def _tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "make_datalist.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_tool_workers_failure_and_resume(coco, tmp_path, capsys):
    root, inst, labels, ref = coco
    images = tmp_path / "images"
    shutil.copytree(root / "val2014", images / "val2014")
    moved = images / "val2014" / Path(labels.paths[6]).name
    moved.rename(tmp_path / "away.jpg")
    args = ["coco", "--instances", inst, "--image-prefix", "val2014/", "--image-root", images, "--selective-search",
            "--bbox-num", 5, "--new-width", 64, "--new-height", 64, "--workers", 2, "--out", tmp_path / "l.txt"]
    r = _tool(*args)  # in its own process: the exit status and the one sentence
    assert r.returncode == 2, r.stderr
    assert f"image {str(moved)!r} not found" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "l.txt.partial").read_bytes() == b"".join(ref.splitlines(keepends=True)[:6])
    (tmp_path / "away.jpg").rename(moved)
    assert _main(*args) == 0
    out, err = capsys.readouterr()
    assert "resuming: 6 of 9 images already done" in err
    assert "9/9 images (100%)" in err  # plain progress lines when stderr is not a terminal
    assert "wrote 9 lines" in out and "with 2 workers" in out
    assert (tmp_path / "l.txt").read_bytes() == ref
    assert _main(*args[:-2], "--shard", "2/3", "--out", tmp_path / "s2.txt") == 0
    assert (tmp_path / "s2.txt").read_bytes() == b"".join(ref.splitlines(keepends=True)[3:6])
    assert "shard 2/3 of 9 images" in capsys.readouterr().out


def _main(*args):
    try:
        return make_datalist_main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize("flag,fragment", [
    (["--shard", "0/4"], "expected i/n with 1 <= i <= n"),
    (["--shard", "a/b"], "expected i/n (e.g. 2/4)"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--bbox-num", "0"], "--bbox-num must be at least 1"),
])
def test_tool_bad_flags(coco, flag, fragment, capsys):
    root, inst, _, _ = coco
    assert _main("coco", "--instances", inst, "--selective-search", "--out", root / "x.txt", *flag) == 2
    assert fragment in capsys.readouterr().err


def test_edge_boxes_without_the_model_says_where_to_get_it(coco, tmp_path, capsys):
    _, inst, _, _ = coco
    assert _main("coco", "--instances", inst, "--edgeboxes-model", tmp_path / "model.yml.gz", "--out",
                 tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "from OpenCV's opencv_extra repository, testdata/cv/ximgproc/model.yml.gz" in err


def test_precomputed_npz_and_build_coco_datalist(tmp_path):
    inst = write_coco(tmp_path)
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
    write_nuswide(tmp_path)
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


def test_make_datalist_cli(tmp_path):
    inst = write_coco(tmp_path)
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
