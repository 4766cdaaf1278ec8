"""Multi-label image sets of the data sets the paper uses: COCO 2014 (an instances file)
and NUS-WIDE (its 81 concepts), as paths, multi-hot labels and class names."""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from mlic.data.datalist import DatasetFormatError


@dataclass
class MultiLabelSet:
    """Images with multi-hot labels: ``paths`` (as written in the datalist), ``labels``
    uint8 [n, C], ``class_names`` [C], optional ``sizes`` [(width, height)] and ``keys``
    (identifiers to look proposals up by; default: the paths)."""

    paths: List[str]
    labels: np.ndarray
    class_names: List[str]
    sizes: Optional[List[Tuple[int, int]]] = None
    keys: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------------------
# COCO 2014


def coco_multilabels(instances_json: str, image_prefix: str = "", drop_empty: bool = False,
                     include_crowd: bool = True) -> MultiLabelSet:
    """Labels of a COCO instances file (e.g. instances_train2014.json / instances_val2014.json).

    The C = 80 labels follow the category-id order; images are in image-id order and
    named ``image_prefix + file_name`` (e.g. prefix ``"train2014/"``). ``drop_empty``
    removes images without any annotation (kept by default, as the 82,783 / 40,504 split).
    """
    from pycocotools.coco import COCO

    if not os.path.isfile(instances_json):
        raise DatasetFormatError(f"COCO instances file not found: {instances_json}")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco = COCO(instances_json)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetFormatError(f"{instances_json}: not a COCO instances file ({exc!r})") from None
    if "categories" not in coco.dataset or "images" not in coco.dataset:
        raise DatasetFormatError(f"{instances_json}: missing 'categories' or 'images'")
    cat_ids = sorted(coco.getCatIds())
    col = {c: k for k, c in enumerate(cat_ids)}
    names = [coco.cats[c]["name"] for c in cat_ids]
    img_ids = sorted(coco.getImgIds())
    labels = np.zeros((len(img_ids), len(cat_ids)), np.uint8)
    for r, iid in enumerate(img_ids):
        for ann in coco.imgToAnns.get(iid, []):
            if not include_crowd and ann.get("iscrowd", 0):
                continue
            if ann["category_id"] not in col:
                raise DatasetFormatError(f"{instances_json}: annotation {ann.get('id')} has unknown "
                                         f"category_id {ann['category_id']}")
            labels[r, col[ann["category_id"]]] = 1
    keep = labels.any(axis=1) if drop_empty else np.ones(len(img_ids), bool)
    imgs = [coco.imgs[i] for i in img_ids]
    return MultiLabelSet(
        paths=[image_prefix + im["file_name"] for im, k in zip(imgs, keep) if k],
        labels=labels[keep], class_names=names,
        sizes=[(int(im["width"]), int(im["height"])) for im, k in zip(imgs, keep) if k],
        keys=[im["file_name"] for im, k in zip(imgs, keep) if k])


# --------------------------------------------------------------------------------------
# NUS-WIDE


def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise DatasetFormatError(f"NUS-WIDE file not found: {path}")
    return [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]


def _nus_rel(p: str) -> str:
    """'C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg' -> 'actor/0001_2124494179.jpg'."""
    parts = [s for s in p.replace("\\", "/").split("/") if s]
    return "/".join(parts[-2:])


def _read_01(path: Path, expect: int) -> np.ndarray:
    vals = _read_lines(path)
    if len(vals) != expect:
        raise DatasetFormatError(f"{path}: {len(vals)} label lines, expected {expect} (one per image)")
    out = np.zeros(expect, np.uint8)
    for k, v in enumerate(vals):
        if v not in ("0", "1"):
            raise DatasetFormatError(f"{path}:{k + 1}: label must be 0 or 1, got {v!r}")
        out[k] = v == "1"
    return out


def nuswide_multilabels(root: str, split: str = "train", image_prefix: str = "",
                        drop_empty: bool = True) -> MultiLabelSet:
    """NUS-WIDE's 81 concepts for ``split`` in {"train", "test", "all"}.

    Layout under ``root`` (the dataset's own files): ``Concepts81.txt`` (concept order; if
    absent, the sorted names of the label files), ``ImageList/Imagelist.txt`` and
    ``ImageList/{Train,Test}Imagelist.txt``, ``Groundtruth/AllLabels/Labels_<c>.txt`` (one
    0/1 per line of Imagelist.txt) and optionally
    ``Groundtruth/TrainTestLabels/Labels_<c>_{Train,Test}.txt``. Paths become
    ``image_prefix + '<folder>/<file>'``. ``drop_empty`` (the usual clean split) removes
    images with no concept.
    """
    rootp = Path(root)
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    all_dir = rootp / "Groundtruth" / "AllLabels"
    tt_dir = rootp / "Groundtruth" / "TrainTestLabels"
    cfile = rootp / "Concepts81.txt"
    if cfile.is_file():
        concepts = _read_lines(cfile)
    elif all_dir.is_dir():
        concepts = sorted(p.name[len("Labels_"):-len(".txt")] for p in all_dir.glob("Labels_*.txt"))
    else:
        raise DatasetFormatError(f"NUS-WIDE: neither {cfile} nor {all_dir} exists")
    if not concepts:
        raise DatasetFormatError(f"NUS-WIDE under {root}: no concepts found")
    if split == "all":
        images = [_nus_rel(p) for p in _read_lines(rootp / "ImageList" / "Imagelist.txt")]
        cols = [_read_01(all_dir / f"Labels_{c}.txt", len(images)) for c in concepts]
    else:
        tag = "Train" if split == "train" else "Test"
        images = [_nus_rel(p) for p in _read_lines(rootp / "ImageList" / f"{tag}Imagelist.txt")]
        if all(((tt_dir / f"Labels_{c}_{tag}.txt").is_file() for c in concepts)):
            cols = [_read_01(tt_dir / f"Labels_{c}_{tag}.txt", len(images)) for c in concepts]
        else:
            every = [_nus_rel(p) for p in _read_lines(rootp / "ImageList" / "Imagelist.txt")]
            pos = {p: k for k, p in enumerate(every)}
            missing = [p for p in images if p not in pos]
            if missing:
                raise DatasetFormatError(f"NUS-WIDE: {len(missing)} {tag} images are not in Imagelist.txt "
                                         f"(first: {missing[0]})")
            rows = np.array([pos[p] for p in images], dtype=np.int64)
            cols = [_read_01(all_dir / f"Labels_{c}.txt", len(every))[rows] for c in concepts]
    labels = np.stack(cols, axis=1) if cols else np.zeros((len(images), 0), np.uint8)
    keep = labels.any(axis=1) if drop_empty else np.ones(len(images), bool)
    return MultiLabelSet(paths=[image_prefix + p for p, k in zip(images, keep) if k], labels=labels[keep],
                         class_names=list(concepts), keys=[p for p, k in zip(images, keep) if k])
