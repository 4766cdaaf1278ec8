"""Small stand-ins for what a user of the original data has: a COCO-2014-style folder
(instances JSON with the 80 real category ids, JPEG photographs under the real file
names), a VGG16 ImageNet caffemodel (legacy V1 layers, VGG16's layer names, reduced
widths) and the released prototxts at the same reduced sizes."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from mlic.caffe import proto
from mlic.data.synthetic import SyntheticConfig, render_image
from tests.conftest import PROTOTXT_REF
from tests.ports.helpers import small_prototxt

# MS-COCO 2014's 80 categories: (id, name); ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush")]
COCO_NAMES = [name for _, name in COCO_CATEGORIES]

# the synthetic shapes stand for these categories (label columns 0, 2, 17, 79)
SHAPE_CATEGORY_IDS = (1, 3, 18, 90)
# image ids of real COCO 2014 images, so the files have the names a user's have
TRAIN_IDS = (9, 25, 30, 34, 36, 49, 61, 64, 71, 72, 77, 78)
VAL_IDS = (42, 73, 74, 133, 136, 139)

# the reduced net every stand-in shares: VGG16's layers at 1/16 of the widths, fc6/fc7 of
# 32, the student at the released 224 (its pool5 is 7 x 7, as the teacher's RoI pooling)
WIDTH_DIV, FC_DIM, STUDENT_SIZE = 16, 32, 224
NET_FLAGS = ["--width", str(1 / WIDTH_DIV), "--fc-dim", str(FC_DIM)]
VGG16_CONVS = [("conv1_1", 64), ("conv1_2", 64), ("conv2_1", 128), ("conv2_2", 128), ("conv3_1", 256),
               ("conv3_2", 256), ("conv3_3", 256), ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512),
               ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)]


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def _render(split: str, index: int, size: int, seed: int, min_classes: int = 1):
    cfg = SyntheticConfig(num_classes=len(SHAPE_CATEGORY_IDS), image_size=size, min_objects=1, max_objects=3,
                          min_object_frac=0.2, max_object_frac=0.45, seed=seed)
    for attempt in range(100):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index, attempt])
        img, objects = render_image(cfg, rng)
        if len({o["class"] for o in objects}) >= min_classes:
            return img, objects
    raise RuntimeError("no image with enough classes")


def write_coco_style(root, *, size: int = 112, seed: int = 0, train_ids=TRAIN_IDS, val_ids=VAL_IDS) -> dict:
    """``root/annotations/instances_{train,val}2014.json`` and the JPEGs in ``root/train2014/``,
    ``root/val2014/``, as a COCO 2014 download has them (images of about ``size`` pixels).

    val2014 ends with a copy of its first image under another id whose annotations lack
    one of the classes (an annotation slip, as real data have): the two get the same
    scores from any net, so their scores are tied while their labels differ. One val
    annotation is a crowd box. Returns {"root", "train", "val" (instances paths),
    "labels": {split: uint8 [images, 80] in image-id order}, "dup": (kept, copy) file names}."""
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    col = {cid: k for k, (cid, _) in enumerate(COCO_CATEGORIES)}
    out = {"root": str(root), "labels": {}}
    for split, ids in (("train", list(train_ids)), ("val", list(val_ids))):
        folder = root / f"{split}2014"
        folder.mkdir(exist_ok=True)
        images, anns, rendered = [], [], []
        for k, image_id in enumerate(ids):
            rendered.append((image_id, *_render(split, k, size, seed, min_classes=2 if k == 0 else 1)))
        if split == "val":
            first_id, img, objects = rendered[0]
            dropped = objects[0]["class"]
            copy_id = max(ids) + 1000
            rendered.append((copy_id, img, [o for o in objects if o["class"] != dropped]))
            out["dup"] = (coco_file_name(split, first_id), coco_file_name(split, copy_id))
        labels = np.zeros((len(rendered), len(COCO_CATEGORIES)), np.uint8)
        for r, (image_id, img, objects) in enumerate(sorted(rendered, key=lambda t: t[0])):
            name = coco_file_name(split, image_id)
            if not cv2.imwrite(str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92]):
                raise OSError(f"cannot write {folder / name}")
            images.append({"id": image_id, "file_name": name, "width": int(img.shape[1]),
                           "height": int(img.shape[0])})
            for o in objects:
                x1, y1, x2, y2 = o["box_image"]
                cid = SHAPE_CATEGORY_IDS[o["class"]]
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid,
                             "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "area": (x2 - x1 + 1) * (y2 - y1 + 1),
                             "iscrowd": 0, "segmentation": []})
                labels[r, col[cid]] = 1
        if split == "val":
            anns[-1]["iscrowd"] = 1
        path = root / "annotations" / f"instances_{split}2014.json"
        path.write_text(json.dumps({
            "info": {"description": "COCO 2014 stand-in"}, "licenses": [], "images": images, "annotations": anns,
            "categories": [{"id": cid, "name": name, "supercategory": ""} for cid, name in COCO_CATEGORIES]}))
        out[split] = str(path)
        out["labels"][split] = labels
    return out


SHRINK = 0.7


def write_vgg16_caffemodel(path, seed: int = 0) -> None:
    """A stand-in for VGG_ILSVRC_16_layers.caffemodel: legacy V1 layers with 4-D blobs and
    VGG16's layer names (data-less layers included), at 1/WIDTH_DIV of the widths and fc6/fc7
    of FC_DIM, fc8 of 1000 ImageNet classes; He-initialised, small biases."""
    rng = np.random.default_rng(seed)
    V1 = proto.V1LayerParameter
    net = proto.NetParameter(name="VGG_ILSVRC_16_layers")

    def add(name, kind, *arrays):
        layer = net.layers.add(name=name, type=kind)
        for a in arrays:
            b = layer.blobs.add()
            b.num, b.channels, b.height, b.width = (1,) * (4 - a.ndim) + a.shape
            b.data.extend(a.astype(np.float32).ravel().tolist())

    cin = 3
    for name, width in VGG16_CONVS:
        cout = width // WIDTH_DIV
        # pixels (0-255 minus the mean) in, activations that shrink layer by layer to about 1 at
        # conv5_3, as VGG16's do (also what keeps the released learning rates stable)
        std = np.sqrt(2 / (9 * cin)) * (1 if name == "conv1_1" else SHRINK)
        add(name, V1.CONVOLUTION, rng.normal(0, std, (cout, cin, 3, 3)), rng.normal(0, 0.01, cout))
        add("relu" + name[4:], V1.RELU)
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            add(f"pool{name[4]}", V1.POOLING)
        cin = cout
    fin = cin * 7 * 7
    for name, fout in (("fc6", FC_DIM), ("fc7", FC_DIM), ("fc8", 1000)):
        add(name, V1.INNER_PRODUCT, rng.normal(0, np.sqrt(2 / fin), (fout, fin)), rng.normal(0, 0.01, fout))
        if name != "fc8":
            add("relu" + name[2:], V1.RELU)
            add("drop" + name[2:], V1.DROPOUT)
        fin = fout
    add("prob", V1.SOFTMAX)
    Path(path).write_bytes(net.SerializeToString())


def write_released_prototxts(folder, *, rois: int, input_size: int, batch: int = 2) -> Path:
    """The four released prototxts at the stand-ins' sizes (80 classes, ``rois`` proposals,
    ``input_size`` frame), under their released names in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("wsddn_train", "wsddn_deploy", "train_stage1", "train_stage2"):
        text = (PROTOTXT_REF / f"{name}.prototxt").read_text()
        (folder / f"{name}.prototxt").write_text(small_prototxt(
            text, div=WIDTH_DIV, classes=80, rois=rois, input_size=input_size, student_size=STUDENT_SIZE,
            fc=FC_DIM, batch=batch))
    return folder


def write_torchvision_vgg16(path, seed: int = 1) -> None:
    """A stand-in for torchvision's vgg16-397923af.pth: its state dict's names and layout
    (features.N, classifier.N; RGB input in [0, 1] normalised per channel) at the reduced
    sizes; He-initialised, so activations stay of order 1 on that input."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state, cin = {}, 3
    for index, (_, width) in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), VGG16_CONVS):
        cout = width // WIDTH_DIV
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.01
        cin = cout
    fin = cin * 7 * 7
    for index, fout in ((0, FC_DIM), (3, FC_DIM), (6, 1000)):
        state[f"classifier.{index}.weight"] = torch.randn(fout, fin, generator=g) * (2 / fin) ** 0.5
        state[f"classifier.{index}.bias"] = torch.randn(fout, generator=g) * 0.01
        fin = fout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
