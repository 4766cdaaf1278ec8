"""CorLoc and detection AP on hand-made cases, and against a straightforward devkit-style loop."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mlic.evaluation import box_iou, corloc, corloc_references, detection_average_precision, evaluate_detection, nms


def test_iou_uses_inclusive_pixels():
    a = [[0, 0, 9, 9]]  # 10 x 10 pixels
    # [5, 0, 14, 9]: intersection 5 x 10 = 50, union 100 + 100 - 50 = 150
    assert box_iou(a, [[5, 0, 14, 9]])[0, 0] == pytest.approx(1 / 3)
    # sharing the column x = 9: intersection 1 x 10 = 10, union 190
    assert box_iou(a, [[9, 0, 18, 9]])[0, 0] == pytest.approx(10 / 190)
    # adjacent, no shared pixel
    assert box_iou(a, [[10, 0, 19, 9]])[0, 0] == 0.0
    # a single-pixel box equals itself
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 1.0
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_nms_hand_computed():
    boxes = [[0, 0, 9, 9], [5, 0, 14, 9], [1, 0, 10, 9], [0, 0, 24, 9]]
    scores = [0.9, 0.8, 0.7, 0.6]
    # 1 vs 0: IoU 1/3 <= 0.4 kept; 2 vs 0: 90/110 > 0.4 dropped;
    # 3 vs 0: 100/250 = 0.4 exactly -> kept (only IoU > 0.4 suppresses), 3 vs 1: 100/250 -> kept
    assert nms(boxes, scores, 0.4).tolist() == [0, 1, 3]
    # ties: the earlier box wins
    assert nms([[0, 0, 9, 9], [0, 0, 9, 9]], [0.5, 0.5]).tolist() == [0]
    assert nms(np.zeros((0, 4)), []).tolist() == []


def _nms_loop(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if box_iou([boxes[i]], [boxes[j]])[0, 0] <= thr]
    return keep


def _devkit_ap(region_scores, boxes, gt, c, nms_thr=0.4, iou_thr=0.5):
    """VOC devkit procedure for one class, one detection at a time: all detections of all
    images sorted by score, each matched to its best-overlapping box of the class."""
    dets = []
    for i, (s, b) in enumerate(zip(region_scores, boxes)):
        for r in _nms_loop(b, list(s[:, c]), nms_thr):
            dets.append((s[r, c], i, b[r]))
    dets.sort(key=lambda d: -d[0])  # Python's sort is stable: image, then region order on ties
    used = {}
    npos = sum(int(((g["labels"] == c) & ~g["difficult"]).sum()) for g in gt)
    tp, fp = [], []
    for _, i, box in dets:
        g = gt[i]
        mask = g["labels"] == c
        cand, diff = g["boxes"][mask], g["difficult"][mask]
        best, jbest = -1.0, -1
        for j, gb in enumerate(cand):
            ov = box_iou([box], [gb])[0, 0]
            if ov > best:
                best, jbest = ov, j
        if best >= iou_thr:
            if diff[jbest]:
                continue
            if not used.get((i, jbest)):
                used[(i, jbest)] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, 1e-12)
    # VOC all-point: area under the monotone precision envelope
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = max(mpre[k], mpre[k + 1])
    return sum((mrec[k + 1] - mrec[k]) * mpre[k + 1] for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k])


# Three images, two classes, boxes inclusive (x1, y1, x2, y2).
BOXES = [
    np.array([[0, 0, 9, 9], [20, 20, 29, 29]], float),
    np.array([[0, 0, 9, 9], [20, 20, 29, 29], [20, 20, 39, 39]], float),
    np.array([[0, 0, 9, 19], [0, 0, 19, 19]], float),
]
SCORES = [  # regions x classes
    np.array([[0.8, 0.1], [0.2, 0.9]]),
    np.array([[0.7, 0.6], [0.9, 0.1], [0.3, 0.2]]),
    np.array([[0.3, 0.5], [0.2, 0.4]]),
]
GT = [
    {"boxes": [[0, 0, 9, 9]], "labels": [0]},
    {"boxes": [[20, 20, 39, 39], [0, 0, 9, 9]], "labels": [0, 1]},
    {"boxes": [[0, 0, 9, 19], [0, 0, 19, 19]], "labels": [0, 1]},
]
# CorLoc:
#  class 0, positive images 0, 1, 2:
#   img 0 top region r0 (0.8) = the box -> hit
#   img 1 top region r1 (0.9) [20,20,29,29] vs [20,20,39,39]: 100/400 = 0.25 -> miss
#   img 2 top region r0 (0.3) = the box -> hit                         -> 2/3
#  class 1, positive images 1, 2:
#   img 1 top r0 (0.6) = [0,0,9,9] -> hit
#   img 2 top r0 (0.5) [0,0,9,19] vs [0,0,19,19]: 200/400 = 0.5 -> hit (>= 0.5) -> 2/2
#  mean (2/3 + 1)/2 = 5/6; overall 4/5
#
# Detection AP (NMS 0.4: only image 2 has overlapping regions, IoU 0.5 -> its lower one goes):
#  class 0 detections by score: i1r1 .9 FP (0.25), i0r0 .8 TP, i1r0 .7 FP, i1r2 .3 TP,
#   i2r0 .3 TP (tied with i1r2), i0r1 .2 FP; npos 3
#   precision 0, 1/2, 1/3, 1/2, 3/5, 1/2 ; recall 0, 1/3, 1/3, 2/3, 1, 1
#   envelope 3/5 at each recall step -> VOC AP 3/5; non-interpolated: the two tied true
#   positives form one threshold (precision 3/5 at its end) -> (1/2 + 3/5 + 3/5)/3, or
#   (1/2 + 1/2 + 3/5)/3 with ties in input order
#  class 1: i0r1 .9 FP (no box in image 0), i1r0 .6 TP, i2r0 .5 TP, i1r2 .2 FP, i0r0 .1 FP, i1r1 .1 FP
#   precision 0, 1/2, 2/3, ... ; recall 0, 1/2, 1 -> VOC AP 2/3
#  mAP (3/5 + 2/3)/2


def test_corloc_hand_computed():
    mean, per_class, overall = corloc(SCORES, BOXES, GT)
    np.testing.assert_allclose(per_class, [2 / 3, 1.0])
    assert mean == pytest.approx(5 / 6)
    assert overall == pytest.approx(4 / 5)


def test_detection_ap_hand_computed():
    m, ap, excluded = detection_average_precision(SCORES, BOXES, GT)
    np.testing.assert_allclose(ap, [3 / 5, 2 / 3])
    assert m == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert excluded == []
    _, ap_std, _ = detection_average_precision(SCORES, BOXES, GT, mode="standard")
    assert ap_std[0] == pytest.approx((1 / 2 + 3 / 5 + 3 / 5) / 3)
    _, ap_std, _ = detection_average_precision(SCORES, BOXES, GT, mode="standard", ties="input-order")
    assert ap_std[0] == pytest.approx((1 / 2 + 1 / 2 + 3 / 5) / 3)
    for c in range(2):
        assert ap[c] == pytest.approx(_devkit_ap(SCORES, BOXES, [_norm(g) for g in GT], c))


def _norm(g):
    return {"boxes": np.asarray(g["boxes"], float).reshape(-1, 4), "labels": np.asarray(g["labels"]),
            "difficult": np.asarray(g.get("difficult", [False] * len(g["labels"])), bool)}


def test_evaluate_detection_report_and_input_forms():
    gt_tuples = [(g["boxes"], g["labels"]) for g in GT]
    r = evaluate_detection([torch.tensor(s) for s in SCORES], BOXES, gt_tuples, class_names=["cat", "dog"])
    assert r.corloc == pytest.approx(5 / 6) and r.corloc_overall == pytest.approx(4 / 5)
    assert r.mAP == pytest.approx((3 / 5 + 2 / 3) / 2)
    d = r.to_dict(per_class=True)
    assert d["CorLoc/cat"] == pytest.approx(2 / 3) and d["det_AP/dog"] == pytest.approx(2 / 3)
    table = r.format_table(per_class=True)
    assert "CorLoc 83.33" in table and "dog" in table
    # a fifth column (the proposal score) in the region boxes is ignored
    with_score = [np.concatenate([b, np.ones((len(b), 1))], 1) for b in BOXES]
    assert evaluate_detection(SCORES, with_score, GT).to_dict() == pytest.approx(r.to_dict())


def test_duplicates_are_false_positives_without_nms():
    # one class; image 0 has the box found twice (IoU 100/110 with each other), image 1 once
    boxes = [np.array([[0, 0, 9, 9], [0, 0, 9, 10]], float), np.array([[0, 0, 9, 9]], float)]
    scores = [np.array([[0.9], [0.8]]), np.array([[0.7]])]
    gt = [([[0, 0, 9, 9]], [0]), ([[0, 0, 9, 9]], [0])]
    # NMS 0.4 removes the duplicate: TP TP -> AP 1
    assert detection_average_precision(scores, boxes, gt)[0] == pytest.approx(1.0)
    # no NMS: TP, FP (box already matched), TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # -> VOC 1/2*1 + 1/2*2/3 = 5/6
    assert detection_average_precision(scores, boxes, gt, nms_threshold=1.0)[0] == pytest.approx(5 / 6)


def test_difficult_boxes():
    boxes = [np.array([[0, 0, 9, 9], [30, 30, 39, 39]], float), np.array([[0, 0, 9, 9]], float)]
    scores = [np.array([[0.9], [0.1]]), np.array([[0.95]])]
    # image 1's only box is difficult: its detection (0.95, ranked first) is ignored, npos = 1
    gt = [([[0, 0, 9, 9]], [0], [False]), ([[0, 0, 9, 9]], [0], [True])]
    m, ap, _ = detection_average_precision(scores, boxes, gt)
    # ranked after dropping the ignored one: TP (0.9), FP (0.1) -> AP 1
    assert ap[0] == pytest.approx(1.0)
    # CorLoc: only image 0 is a positive image of the class (image 1 has only a difficult box)
    mean, per_class, overall = corloc(scores, boxes, gt)
    assert per_class[0] == 1.0 and overall == 1.0
    # the same with the flag off: both images count, both detections are true positives
    gt_easy = [([[0, 0, 9, 9]], [0]), ([[0, 0, 9, 9]], [0])]
    assert detection_average_precision(scores, boxes, gt_easy)[0] == pytest.approx(1.0)
    assert corloc(scores, boxes, gt_easy)[2] == pytest.approx(1.0)


def test_class_without_boxes_is_excluded():
    gt = [([[0, 0, 9, 9]], [0]), (np.zeros((0, 4)), []), ([[0, 0, 9, 19]], [0])]
    r = evaluate_detection(SCORES, BOXES, gt)
    assert r.excluded_classes == [1]
    assert np.isnan(r.ap[1]) and np.isnan(r.corloc_per_class[1])
    assert r.mAP == pytest.approx(r.ap[0])
    assert r.corloc == pytest.approx(r.corloc_per_class[0])


def _random_case(seed):
    rng = np.random.default_rng(seed)
    n_img, n_cls = 6, 3
    scores, boxes, gt = [], [], []
    for _ in range(n_img):
        g = int(rng.integers(0, 5))
        gxy = rng.integers(0, 40, (g, 2))
        gbox = np.concatenate([gxy, gxy + rng.integers(8, 25, (g, 2))], 1).astype(float)
        gt.append({"boxes": gbox, "labels": rng.integers(0, n_cls, g), "difficult": rng.random(g) < 0.2})
        # regions: jittered copies of the boxes (hits, near-duplicates) and random ones (misses)
        near = np.repeat(gbox, 3, 0) + rng.integers(-3, 4, (3 * g, 4))
        xy = rng.integers(0, 40, (int(rng.integers(1, 15)), 2))
        far = np.concatenate([xy, xy + rng.integers(3, 25, xy.shape)], 1)
        b = np.concatenate([near, far]).astype(float)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
        boxes.append(b)
        scores.append(np.round(rng.random((len(b), n_cls)), 1))  # rounding makes ties
    return scores, boxes, gt


def _devkit_flags(region_scores, boxes, gt, c, nms_thr=0.4, iou_thr=0.5):
    """(score, 1 TP / 0 FP) of every non-ignored detection of class c, the devkit's matching."""
    dets = []
    for i, (s, b) in enumerate(zip(region_scores, boxes)):
        for r in _nms_loop(b, list(s[:, c]), nms_thr):
            dets.append((s[r, c], i, b[r]))
    dets.sort(key=lambda d: -d[0])
    used, out = set(), []
    for score, i, box in dets:
        g = gt[i]
        cand, diff = g["boxes"][g["labels"] == c], g["difficult"][g["labels"] == c]
        ov = box_iou([box], cand)[0] if len(cand) else np.zeros(0)
        j = int(np.argmax(ov)) if len(ov) else -1
        if j >= 0 and ov[j] >= iou_thr:
            if diff[j]:
                continue
            out.append((score, int((i, j) not in used)))
            used.add((i, j))
        else:
            out.append((score, 0))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_devkit_loop_on_random_data(seed):
    n_img, n_cls = 6, 3
    scores, boxes, gt = _random_case(seed)
    _, ap, _ = detection_average_precision(scores, boxes, gt, ties="input-order")
    assert np.nanmax(ap) > 0.2  # the case exercises true positives, not only misses
    for c in range(n_cls):
        npos = sum(int(((g["labels"] == c) & ~g["difficult"]).sum()) for g in gt)
        if npos == 0:
            assert np.isnan(ap[c])
        else:
            assert ap[c] == pytest.approx(_devkit_ap(scores, boxes, gt, c), abs=1e-12)
    for i in range(n_img):
        for c in range(n_cls):
            assert nms(boxes[i], scores[i][:, c], 0.4).tolist() == _nms_loop(boxes[i], list(scores[i][:, c]), 0.4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grouped_ties_agree_with_sklearn_and_ignore_the_image_order(seed):
    # the detections' scores are rounded to one decimal: many are tied. scikit-learn's AP
    # (tied scores as one threshold) over the devkit's true/false positives, with recall
    # rescaled from the retrieved positives to all of them, is the non-interpolated AP
    scores, boxes, gt = _random_case(seed)
    _, ap, _ = detection_average_precision(scores, boxes, gt, mode="standard")
    _, ap_voc, _ = detection_average_precision(scores, boxes, gt)
    for c in range(3):
        npos = sum(int(((g["labels"] == c) & ~g["difficult"]).sum()) for g in gt)
        if npos == 0:
            continue
        d = _devkit_flags(scores, boxes, gt, c)
        sc = np.array([x[0] for x in d])
        tp = np.array([x[1] for x in d])
        expected = average_precision_score(tp, sc) * tp.sum() / npos if tp.sum() else 0.0
        assert ap[c] == pytest.approx(expected, abs=1e-12)
    perm = np.random.default_rng(seed).permutation(len(scores))
    shuffled = ([scores[i] for i in perm], [boxes[i] for i in perm], [gt[i] for i in perm])
    for mode, ref in (("standard", ap), ("voc", ap_voc)):
        np.testing.assert_allclose(detection_average_precision(*shuffled, mode=mode)[1], ref, rtol=0, atol=1e-12)


def test_corloc_with_tied_top_regions():
    # image 0: regions 0 and 2 tie for the top score, only region 2 hits -> counts 1/2;
    # image 1: all three tie, two hit -> 2/3. With ties in input order the first one decides.
    boxes = [np.array([[50, 50, 59, 59], [0, 0, 9, 9], [0, 0, 9, 9]], float),
             np.array([[0, 0, 9, 9], [0, 0, 9, 10], [40, 40, 49, 49]], float)]
    scores = [np.array([[0.7], [0.2], [0.7]]), np.zeros((3, 1))]
    gt = [([[0, 0, 9, 9]], [0]), ([[0, 0, 9, 9]], [0])]
    mean, per_class, overall = corloc(scores, boxes, gt)
    assert per_class[0] == pytest.approx((1 / 2 + 2 / 3) / 2) and overall == pytest.approx(per_class[0])
    assert corloc(scores, boxes, gt, ties="input-order")[1][0] == pytest.approx(1 / 2)
    # reversing the regions of every image does not change the grouped CorLoc
    rev = corloc([s[::-1] for s in scores], [b[::-1] for b in boxes], gt)
    assert rev[0] == pytest.approx(mean)
    assert corloc([s[::-1] for s in scores], [b[::-1] for b in boxes], gt, ties="input-order")[0] == 0.5
    r = evaluate_detection(scores, boxes, gt)
    assert r.corloc == pytest.approx(mean) and r.ties == "group"


def test_bad_inputs_name_the_argument():
    s = [x.copy() for x in SCORES]
    s[1][2, 0] = np.nan
    with pytest.raises(ValueError, match=r"region_scores\[1\]: .*non-finite"):
        evaluate_detection(s, BOXES, GT)
    with pytest.raises(ValueError, match=r"boxes\[2\] has 1 regions but region_scores\[2\] has 2"):
        evaluate_detection(SCORES, BOXES[:2] + [BOXES[2][:1]], GT)
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_detection(SCORES, BOXES, GT[:2])
    with pytest.raises(ValueError, match=r"gt\[0\] labels: class indices"):
        evaluate_detection(SCORES, BOXES, [([[0, 0, 9, 9]], [2])] + GT[1:])
    with pytest.raises(ValueError, match=r"gt\[1\]: 2 boxes but 1 labels"):
        evaluate_detection(SCORES, BOXES, [GT[0], {"boxes": GT[1]["boxes"], "labels": [0]}, GT[2]])
    with pytest.raises(ValueError, match=r"region_scores\[1\]: 1 classes"):
        evaluate_detection([SCORES[0], SCORES[1][:, :1], SCORES[2]], BOXES, GT)
    with pytest.raises(ValueError, match="mode"):
        detection_average_precision(SCORES, BOXES, GT, mode="coco")


def test_corloc_references_hand_computed():
    # image 0: class 0 at [0,0,9,9]; proposals: the box itself (score 0.2), a disjoint one
    # (0.9), a half-overlapping one (IoU 1/3, 0.9)
    # image 1: classes 0 and 1; proposals: class 1's box exactly (0.5), class 0's (0.5),
    # one that hits nothing (0.1)
    boxes = [np.array([[0, 0, 9, 9, 0.2], [50, 50, 59, 59, 0.9], [5, 0, 14, 9, 0.9]]),
             np.array([[20, 20, 29, 29, 0.5], [0, 0, 9, 9, 0.5], [40, 0, 49, 9, 0.1]])]
    gt = [{"boxes": [[0, 0, 9, 9]], "labels": [0]},
          {"boxes": [[0, 0, 9, 9], [20, 20, 29, 29]], "labels": [0, 1]}]
    ref = corloc_references(boxes, gt, num_classes=2)
    # random: class 0 -> (1/3 + 1/3) / 2, class 1 -> 1/3; mean over classes
    assert ref["random"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    # proposal score: image 0's top two (0.9, tied) both miss; image 1's tie of two: one
    # of them hits each class -> class 0: (0 + 1/2) / 2, class 1: 1/2
    assert ref["proposal_score"] == pytest.approx(((0 + 0.5) / 2 + 0.5) / 2)
    assert ref["best"] == pytest.approx(1.0)
    # a box too far off for 0.5 but not for 0.3
    far = [np.array([[5, 0, 14, 9, 1.0]])]
    assert corloc_references(far, gt[:1], 1)["best"] == 0.0
    assert corloc_references(far, gt[:1], 1, iou_threshold=0.3)["best"] == 1.0
    with pytest.raises(ValueError, match="regions x 5"):
        corloc_references([b[:, :4] for b in boxes], gt, 2)
