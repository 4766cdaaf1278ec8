"""Building datalists with worker processes, in shards, and resuming an interrupted run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlic.data import read_datalist
from mlic.data.builders import (ConsoleProgress, DatasetFormatError, SelectiveSearchProposals, build_datalist,
                                coco_multilabels, shard_bounds)

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
    assert "9/9 images (100.0%)" in err  # plain progress lines when stderr is not a terminal
    assert "wrote 9 lines" in out and "with 2 workers" in out
    assert (tmp_path / "l.txt").read_bytes() == ref
    assert _main(*args[:-2], "--shard", "2/3", "--out", tmp_path / "s2.txt") == 0
    assert (tmp_path / "s2.txt").read_bytes() == b"".join(ref.splitlines(keepends=True)[3:6])
    assert "shard 2/3 of 9 images" in capsys.readouterr().out


def _main(*args):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_datalist_tool", REPO / "tools" / "make_datalist.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        return tool.main([str(a) for a in args])
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


def test_console_progress_plain_lines(capsys):
    import io

    buf = io.StringIO()
    p = ConsoleProgress(buf, period=3600)
    p(2, 10)
    p(3, 10)  # within the period: nothing
    p(10, 10)
    text = buf.getvalue()
    assert text.splitlines()[0] == "resuming: 2 of 10 images already done"
    assert text.splitlines()[1].startswith("10/10 images (100.0%)") and len(text.splitlines()) == 2
