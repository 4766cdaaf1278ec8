"""Ground-truth boxes for CorLoc / detection AP, read from the data sets' own files.

Three formats, told apart by :func:`read_ground_truth`:

- **COCO instances JSON** (``instances_val2014.json``; a ``.json`` with ``images``,
  ``annotations`` and ``categories``). The classes are the categories in increasing id
  order (the 80 real, non-contiguous ids of COCO 2014 -> columns 0..79, as
  ``make_datalist.py coco`` writes the labels), or the order of ``class_names`` when given
  (matched by name). A ``bbox`` ``[x, y, w, h]`` becomes the inclusive corners
  ``(x, y, x + w - 1, y + h - 1)``; crowd annotations (``iscrowd: 1``) are "difficult":
  neither required nor counted as a miss, as COCO's own evaluation ignores them.
- **VOC XML annotations**: a folder of ``<image stem>.xml`` files (``Annotations/``, or a
  VOC root holding it). Coordinates are 1-based inclusive pixels (``xmin - 1`` ...);
  ``<difficult>1`` marks difficult objects. Classes: ``class_names`` when given, else the
  20 VOC classes in their usual (alphabetical) order.
- **The synthetic benchmark's** ``gt_<split>.json`` (``mlic.data.synthetic``).

Every box is mapped into the network's frame (the datalist frame, new_width x new_height,
e.g. 672 x 672) the way the proposals were: ``x * new_width / width`` (and y alike) with
the image size the annotation file gives, then clipped to the frame
(:func:`mlic.data.proposals.map_boxes_to_frame`). Datalist lines are matched to annotated
images by path, else by file name; a line without annotation is an error naming it, and so
are annotations matched by file name to images in other folders (another split's file).
Errors are :class:`~mlic.data.datalist.DatasetFormatError` naming the file.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlic.data.datalist import DatasetFormatError
from mlic.data.proposals import map_boxes_to_frame

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

GT_FORMAT_HELP = ("COCO instances JSON (instances_*.json: boxes [x, y, w, h] in the original image, "
                  "categories in id order), a folder of VOC XML annotations (Annotations/<image>.xml) or "
                  "the synthetic benchmark's gt_<split>.json; boxes are mapped to the network's frame "
                  "like the proposals")


class GroundTruthImages(list):
    """One ``{"boxes": G x 4, "labels": G, "difficult": G}`` dict per datalist entry, in the
    network's frame, with ``class_names`` and the ``format`` read."""

    def __init__(self, images, class_names: List[str], fmt: str, source: str):
        super().__init__(images)
        self.class_names = list(class_names)
        self.format = fmt
        self.source = source


def _err(path, msg: str) -> DatasetFormatError:
    return DatasetFormatError(f"{path}: {msg}")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _err(path, f"cannot read the ground truth ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _err(path, f"not a JSON file ({exc})") from None


class _Matcher:
    """Finds the annotation of each datalist line: by its path as written, else its file
    name (which must then be unique among the annotated images)."""

    def __init__(self, path, names: Sequence[str]):
        self.path = path
        self.names = [str(n).replace("\\", "/") for n in names]
        self.exact: Dict[str, int] = {}
        self.base: Dict[str, List[int]] = {}
        self.by_name: List[Tuple[int, int]] = []  # (datalist entry, annotated image) matched by file name only
        for k, n in enumerate(self.names):
            self.exact.setdefault(n, k)
            self.base.setdefault(os.path.basename(n), []).append(k)

    def find(self, image_path: str, where: str, entry: int = -1) -> int:
        p = image_path.replace("\\", "/")
        if p in self.exact:
            return self.exact[p]
        hits = self.base.get(os.path.basename(p), [])
        if len(hits) == 1:
            self.by_name.append((entry, hits[0]))
            return hits[0]
        if not hits:
            raise _err(self.path, f"no annotation for {image_path!r} ({where})")
        raise _err(self.path, f"{len(hits)} annotated images are named {os.path.basename(p)!r}; cannot tell "
                   f"which one is {image_path!r} ({where})")


def _folders(path: str) -> List[str]:
    return [c for c in path.replace("\\", "/").split("/")[:-1] if c not in ("", ".")]


def _in_other_folder(listed: str, annotated: str) -> bool:
    """Two paths of the same file name whose folders cannot be the same place: neither
    one's folders end the other's (train/000000.png is not .../test/000000.png)."""
    a, b = _folders(listed), _folders(annotated)
    n = min(len(a), len(b))
    return n > 0 and a[len(a) - n:] != b[len(b) - n:]


def _check_same_images(match: _Matcher, datalist, sizes, boxes, split=None) -> None:
    """Refuses annotations matched by file name to images in other folders (another split's
    file): the message says how many matched so, and how many of their boxes (in the
    annotated image's pixels) fall outside the listed images. sizes[k]: the (width,
    height) the file gives image k; boxes[k]: its boxes as inclusive corners."""
    from mlic.data.transforms import read_image_bgr

    full = getattr(datalist, "image_path", lambda i: datalist.paths[i])
    other = [(i, k) for i, k in match.by_name if _in_other_folder(full(i), match.names[k])]
    if not other:
        return
    outside = total = resized = 0
    for i, k in other:
        img = read_image_bgr(full(i))
        b = np.asarray(boxes[k], dtype=np.float64).reshape(-1, 4)
        total += len(b)
        if img is None:
            continue
        h, w = img.shape[:2]
        try:
            resized += (float(sizes[k][0]), float(sizes[k][1])) != (w, h)
        except (TypeError, ValueError):
            pass
        outside += int(((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w - 1) | (b[:, 3] > h - 1)).sum())
    i, k = other[0]
    raise _err(match.path, f"names another split{f' ({split!r})' if split else ''}: {len(other)} of the "
               f"{len(datalist.paths)} listed images matched only by file name, to images in other folders "
               f"({match.names[k]!r} for {datalist.paths[i]!r}, {_where(datalist, i)}); {outside} of their "
               f"{total} boxes fall outside the listed images and {resized} of these images differ in size "
               "from the file's; give the ground truth of the datalist's own split")


def _where(datalist, i: int) -> str:
    src = getattr(datalist, "source", None)
    lines = getattr(datalist, "line_numbers", None)
    if src is not None and lines is not None:
        return f"{src}:{int(lines[i])}"
    return f"datalist entry {i + 1}"


def _class_columns(path, names_in_file: List[str], class_names: Optional[Sequence[str]],
                   num_classes: Optional[int]) -> Tuple[List[str], Dict[str, int]]:
    """The network's class order and the column of each class name of the file."""
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        col = {n: k for k, n in enumerate(class_names)}
        missing = [n for n in names_in_file if n not in col]
        if missing:
            raise _err(path, f"class {missing[0]!r} is not among the {len(class_names)} class names given "
                       f"({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''})")
        order = class_names
    else:
        order = list(names_in_file)
        col = {n: k for k, n in enumerate(order)}
    if num_classes is not None and len(order) != num_classes:
        raise _err(path, f"{len(order)} classes, but the network has {num_classes}; give the class names "
                   "file that the labels were written with")
    return order, col


def _frame_boxes(boxes: np.ndarray, width, height, frame, path, what: str) -> np.ndarray:
    if not (np.isfinite(boxes).all()):
        raise _err(path, f"{what}: a box coordinate is not a finite number")
    try:
        w, h = float(width), float(height)
    except (TypeError, ValueError):
        raise _err(path, f"{what}: image size {width!r} x {height!r} is not a number") from None
    if not (w > 0 and h > 0 and np.isfinite(w) and np.isfinite(h)):
        raise _err(path, f"{what}: invalid image size {width!r} x {height!r}")
    return map_boxes_to_frame(boxes, w, h, frame[0], frame[1])


def _coco_from_dict(data, path, datalist, frame, class_names, num_classes) -> GroundTruthImages:
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise _err(path, "not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        cat_name = {int(c["id"]): str(c["name"]) for c in cats}
        images = {int(im["id"]): im for im in data["images"]}
        names = [str(im["file_name"]) for im in data["images"]]
        ids = [int(im["id"]) for im in data["images"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(path, f"malformed 'images' or 'categories' entry ({exc!r})") from None
    if len(set(cat_name.values())) != len(cat_name):
        raise _err(path, "two categories share a name")
    order, col = _class_columns(path, [cat_name[c] for c in sorted(cat_name)], class_names, num_classes)
    per_image: Dict[int, list] = {}
    for ann in data["annotations"]:
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _err(path, f"annotation {ann.get('id') if isinstance(ann, dict) else ann!r}: needs image_id, "
                       f"category_id and bbox [x, y, w, h] ({exc!r})") from None
        if cid not in cat_name:
            raise _err(path, f"annotation {ann.get('id')}: unknown category_id {cid}")
        if iid not in images:
            raise _err(path, f"annotation {ann.get('id')}: unknown image_id {iid}")
        if not (w >= 0 and h >= 0):
            raise _err(path, f"annotation {ann.get('id')}: negative or non-finite box size {w} x {h}")
        per_image.setdefault(iid, []).append((x, y, x + w - 1, y + h - 1, col[cat_name[cid]],
                                              bool(ann.get("iscrowd", 0))))
    match = _Matcher(path, names)
    out = []
    for i in range(len(datalist.paths)):
        im = images[ids[match.find(datalist.paths[i], _where(datalist, i), i)]]
        anns = per_image.get(int(im["id"]), [])
        b = np.array([a[:4] for a in anns], dtype=np.float64).reshape(-1, 4)
        b = _frame_boxes(b, im.get("width"), im.get("height"), frame, path, f"image {im['file_name']!r}")
        out.append({"boxes": b, "labels": np.array([a[4] for a in anns], dtype=np.int64),
                    "difficult": np.array([a[5] for a in anns], dtype=bool)})
    _check_same_images(match, datalist, [(im.get("width"), im.get("height")) for im in data["images"]],
                       [[a[:4] for a in per_image.get(i, [])] for i in ids])
    return GroundTruthImages(out, order, "coco", str(path))


def _voc_folder(path: Path) -> Path:
    if (path / "Annotations").is_dir():
        return path / "Annotations"
    return path


def _xml_text(node, tag: str, path) -> str:
    el = node.find(tag)
    if el is None or el.text is None:
        raise _err(path, f"missing <{tag}>")
    return el.text.strip()


def voc_ground_truth(folder, datalist, frame: Tuple[int, int], class_names: Optional[Sequence[str]] = None,
                     num_classes: Optional[int] = None) -> GroundTruthImages:
    """Ground truth of the datalist's images from VOC XML files (see the module docstring)."""
    folder = _voc_folder(Path(folder))
    names = list(class_names) if class_names is not None else list(VOC_CLASSES)
    order, col = _class_columns(folder, names, class_names, num_classes)
    out = []
    for i in range(len(datalist.paths)):
        stem = os.path.splitext(os.path.basename(datalist.paths[i].replace("\\", "/")))[0]
        xml = folder / f"{stem}.xml"
        if not xml.is_file():
            raise _err(folder, f"no annotation {stem}.xml for {datalist.paths[i]!r} ({_where(datalist, i)})")
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            raise _err(xml, f"not a readable XML file ({exc})") from None
        size = root.find("size")
        if size is None:
            raise _err(xml, "missing <size> (the image's width and height are needed to map the boxes)")
        width, height = _xml_text(size, "width", xml), _xml_text(size, "height", xml)
        boxes, labels, difficult = [], [], []
        for obj in root.findall("object"):
            name = _xml_text(obj, "name", xml)
            if name not in col:
                raise _err(xml, f"object class {name!r} is not one of the {len(order)} classes "
                           f"({'the class names given' if class_names is not None else 'the 20 VOC classes'})")
            bb = obj.find("bndbox")
            if bb is None:
                raise _err(xml, f"object {name!r} has no <bndbox>")
            try:
                # VOC pixels are 1-based and inclusive
                boxes.append([float(_xml_text(bb, t, xml)) - 1 for t in ("xmin", "ymin", "xmax", "ymax")])
            except ValueError:
                raise _err(xml, f"object {name!r}: a <bndbox> coordinate is not a number") from None
            labels.append(col[name])
            d = obj.find("difficult")
            difficult.append(d is not None and (d.text or "").strip() == "1")
        b = _frame_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), width, height, frame, xml, "boxes")
        out.append({"boxes": b, "labels": np.array(labels, dtype=np.int64),
                    "difficult": np.array(difficult, dtype=bool)})
    return GroundTruthImages(out, order, "voc", str(folder))


def _synthetic_from_dict(data, path, datalist, frame, class_names, num_classes) -> GroundTruthImages:
    try:
        file_classes = [str(c) for c in data["classes"]]
        images = data["images"]
        gt_frame = (int(data["frame"]["width"]), int(data["frame"]["height"]))
        names = [str(im["path"]) for im in images]
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(path, f"not a synthetic benchmark ground truth file ({exc!r})") from None
    order, col = _class_columns(path, file_classes, class_names, num_classes)
    match = _Matcher(path, names)
    out = []
    for i in range(len(datalist.paths)):
        im = images[match.find(datalist.paths[i], _where(datalist, i), i)]
        boxes, labels = [], []
        for o in im["objects"]:
            c = o["class"]
            labels.append(col[file_classes[c] if isinstance(c, int) else str(c)])
            if tuple(frame) == gt_frame:
                boxes.append(o["box"])
            else:  # the benchmark also keeps the box in the original image
                boxes.append(map_boxes_to_frame(np.array(o["box_image"], float), im["width"], im["height"],
                                                frame[0], frame[1])[0])
        out.append({"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
                    "labels": np.array(labels, dtype=np.int64), "difficult": np.zeros(len(labels), bool)})
    _check_same_images(match, datalist, [(im["width"], im["height"]) for im in images],
                       [[o["box_image"] for o in im["objects"] if "box_image" in o] for im in images],
                       data.get("split"))
    return GroundTruthImages(out, order, "synthetic", str(path))


def read_ground_truth(path, datalist, frame: Tuple[int, int], class_names: Optional[Sequence[str]] = None,
                      num_classes: Optional[int] = None) -> GroundTruthImages:
    """Ground truth for every entry of ``datalist`` (a :class:`~mlic.data.Datalist`, or any
    object with ``paths``), boxes in the ``frame`` = (new_width, new_height) of the network.

    ``path``: a COCO instances JSON, a folder of VOC XML annotations (or a VOC root holding
    ``Annotations/``), or a synthetic ``gt_<split>.json``. ``class_names``: the network's
    class order (default: the file's); ``num_classes``: the network's class count, checked.
    """
    p = Path(path)
    if p.is_dir():
        folder = _voc_folder(p)
        if not any(folder.glob("*.xml")):
            raise _err(p, "a folder, but it holds no VOC .xml annotations (nor an Annotations/ folder with them)")
        return voc_ground_truth(p, datalist, frame, class_names, num_classes)
    if not p.is_file():
        raise _err(p, "ground truth not found")
    if p.suffix.lower() == ".xml":
        raise _err(p, "give the folder of VOC XML annotations, not one file")
    data = _load_json(p)
    if isinstance(data, dict) and "annotations" in data and "categories" in data:
        return _coco_from_dict(data, p, datalist, frame, class_names, num_classes)
    if isinstance(data, dict) and "classes" in data and "images" in data:
        return _synthetic_from_dict(data, p, datalist, frame, class_names, num_classes)
    raise _err(p, "unknown ground truth format: expected " + GT_FORMAT_HELP)
