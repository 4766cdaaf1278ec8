"""Multi-label classification metrics against scikit-learn, an independent VOC AP and hand-computed cases."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from mlic.evaluation import (
    average_precision,
    evaluate_multilabel,
    mean_average_precision,
    precision_recall_at_ranks,
    threshold_metrics,
    tied_fraction,
)


def _untied(rng, n, c):
    # a random permutation of distinct values: no ties anywhere
    return (rng.permutation(n * c).reshape(n, c) + rng.random((n, c)) * 0.5) / (n * c)


def _voc_ap_by_definition(scores, labels):
    """All-point VOC AP written from the definition: every positive adds 1/npos of recall,
    weighted by the best precision at that rank or any later one."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    npos = sum(labels)
    tp, precisions = 0, []
    for k, i in enumerate(order, start=1):
        tp += labels[i]
        precisions.append(tp / k)
    total = 0.0
    for k, i in enumerate(order):
        if labels[i]:
            total += max(precisions[k:]) / npos
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standard_ap_equals_sklearn_without_ties(seed):
    rng = np.random.default_rng(seed)
    s = _untied(rng, 60, 7)
    y = (rng.random((60, 7)) < 0.3).astype(int)
    y[0] = 1  # every class has a positive
    ap = average_precision(s, y)
    expected = [average_precision_score(y[:, c], s[:, c]) for c in range(7)]
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    m, per_class, excluded = mean_average_precision(s, y)
    assert excluded == []
    assert m == pytest.approx(np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_voc_ap_equals_definition(seed):
    rng = np.random.default_rng(seed)
    s = _untied(rng, 40, 5)
    y = (rng.random((40, 5)) < 0.35).astype(int)
    y[0] = 1
    ap = average_precision(s, y, mode="voc")
    for c in range(5):
        assert ap[c] == pytest.approx(_voc_ap_by_definition(list(s[:, c]), list(y[:, c])), abs=1e-12)


def test_ap_hand_computed():
    # ranked labels 1 0 1 0 1: precision at the positives 1, 2/3, 3/5 -> mean 34/45;
    # the precision envelope is the same sequence here, so VOC gives 34/45 too.
    s = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert average_precision(s, [1, 0, 1, 0, 1]) == pytest.approx(34 / 45)
    assert average_precision(s, [1, 0, 1, 0, 1], mode="voc") == pytest.approx(34 / 45)
    # ranked 0 1 1: precisions at positives 1/2, 2/3 -> standard 7/12; the envelope lifts
    # the first one to 2/3 -> VOC 2/3.
    s3 = [0.9, 0.8, 0.7]
    assert average_precision(s3, [0, 1, 1]) == pytest.approx(7 / 12)
    assert average_precision(s3, [0, 1, 1], mode="voc") == pytest.approx(2 / 3)
    # ranked 1 0 0 1: precision 1, 1/2, 1/3, 1/2; recall 1/2, 1/2, 1/2, 1.
    # standard (1 + 1/2)/2 = 3/4; VOC 1/2*1 + 1/2*1/2 = 3/4;
    # 11-point: t = 0..0.5 (6 points) -> 1, t = 0.6..1 (5 points) -> 1/2 -> 8.5/11.
    s4 = [0.9, 0.8, 0.7, 0.6]
    assert average_precision(s4, [1, 0, 0, 1]) == pytest.approx(0.75)
    assert average_precision(s4, [1, 0, 0, 1], mode="voc") == pytest.approx(0.75)
    assert average_precision(s4, [1, 0, 0, 1], mode="voc11") == pytest.approx(8.5 / 11)


def test_ties_in_input_order_only_as_the_named_option():
    # stable descending sort: of two equal scores the earlier image ranks first
    assert average_precision([0.5, 0.5], [0, 1], ties="input-order") == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [1, 0], ties="input-order") == pytest.approx(1.0)
    prec, rec, order = precision_recall_at_ranks([0.2, 0.7, 0.7, 0.1], [0, 0, 1, 1], ties="input-order")
    assert order.tolist() == [1, 2, 0, 3]
    np.testing.assert_allclose(prec, [0, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(rec, [0, 1 / 2, 1 / 2, 1])
    # by default the tied pair is one threshold: one point for both ranks
    prec, rec, _ = precision_recall_at_ranks([0.2, 0.7, 0.7, 0.1], [0, 0, 1, 1])
    np.testing.assert_allclose(prec, [1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(rec, [1 / 2, 1 / 2, 1])
    assert average_precision([0.5, 0.5], [0, 1]) == average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ties"):
        average_precision([0.5, 0.5], [0, 1], ties="random")


@pytest.mark.parametrize("mode", ["standard", "voc", "voc11"])
def test_constant_scores_give_the_positive_rate(mode):
    # a model that outputs the same score for every image ranks nothing: every threshold
    # retrieves all images, so the precision is the class's positive rate whatever the order
    y = np.zeros((20, 3), int)
    y[[0, 1, 2], 0] = 1      # positives first in the list: input order would give AP 1
    y[[17, 18, 19], 1] = 1   # positives last
    y[::2, 2] = 1
    for value in (0.0, 0.3, 1.0):
        ap = average_precision(np.full((20, 3), value), y, mode)
        np.testing.assert_allclose(ap, y.mean(0), rtol=0, atol=1e-12)
    assert average_precision(np.zeros((20, 3)), y, mode, ties="input-order")[0] == pytest.approx(1.0)


def test_a_dead_model_gets_no_credit_from_the_list_order():
    # all scores 0 except one class: mAP is the mean positive rate over the tied classes
    rng = np.random.default_rng(0)
    y = (rng.random((50, 4)) < 0.2).astype(int)
    y[0] = 1
    s = np.zeros((50, 4))
    m, ap, _ = mean_average_precision(s, y)
    assert m == pytest.approx(y.mean(0).mean())
    perm = rng.permutation(50)
    assert mean_average_precision(s[perm], y[perm])[0] == pytest.approx(m, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_grouped_ap_equals_sklearn_with_heavy_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = 80, 6
    s = np.round(rng.random((n, c)), 1)  # 11 distinct values: most scores are tied
    s[:, 0] = 0.5                         # a class where everything is tied
    s[:, 1] = np.round(s[:, 1] * 2) / 2   # three values
    y = (rng.random((n, c)) < 0.3).astype(int)
    y[0] = 1
    ap = average_precision(s, y)
    expected = [average_precision_score(y[:, k], s[:, k]) for k in range(c)]
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    # the same after shuffling the images: grouping makes AP independent of the order
    perm = rng.permutation(n)
    np.testing.assert_allclose(average_precision(s[perm], y[perm]), expected, rtol=0, atol=1e-12)
    # VOC all-point on the thresholds scikit-learn's precision-recall curve gives
    for k in range(c):
        p, r, _ = precision_recall_curve(y[:, k], s[:, k])
        p, r = p[:-1][::-1], r[:-1][::-1]  # drop the (1, 0) end point, ascending recall
        envelope = [max(p[j:]) for j in range(len(p))]
        voc = sum((r[j] - (r[j - 1] if j else 0.0)) * envelope[j] for j in range(len(p)))
        assert average_precision(s[:, k], y[:, k], mode="voc") == pytest.approx(voc, abs=1e-12)


def test_tied_fraction():
    assert tied_fraction(np.array([[0.1, 0.5], [0.2, 0.6], [0.3, 0.7]])) == 0.0
    # column 0: 0.1 0.1 0.3 -> 2 tied; column 1: 0.5 0.5 0.5 -> 3 tied; 5 of 6
    assert tied_fraction(np.array([[0.1, 0.5], [0.1, 0.5], [0.3, 0.5]])) == pytest.approx(5 / 6)
    # ties across classes do not count: each image's classes are ranked separately
    assert tied_fraction(np.array([[0.1, 0.1], [0.2, 0.2]])) == 0.0
    assert tied_fraction(np.array([[0.1, 0.1], [0.2, 0.2]]), axis=1) == 1.0
    r = evaluate_multilabel(np.zeros((4, 2)), [[1, 0], [0, 1], [0, 0], [1, 1]])
    assert r.tied_fraction == 1.0
    assert "100.0% of the scores are tied" in r.format_table()
    assert r.mAP == pytest.approx(0.5)


def test_class_without_positives_is_excluded_from_map():
    s = np.array([[0.9, 0.3, 0.2], [0.8, 0.6, 0.9], [0.7, 0.1, 0.4]])
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 0]])
    # class 0: ranked 1 0 1 -> (1 + 2/3)/2 = 5/6; class 2: scores .9 .4 .2 rank labels 0 0 1 -> 1/3;
    # class 1 has no positive
    m, ap, excluded = mean_average_precision(s, y)
    assert excluded == [1]
    assert np.isnan(ap[1])
    assert ap[0] == pytest.approx(5 / 6) and ap[2] == pytest.approx(1 / 3)
    assert m == pytest.approx((5 / 6 + 1 / 3) / 2)
    report = evaluate_multilabel(s, y, class_names=["a", "b", "c"])
    assert report.excluded_classes == [1]
    assert report.mAP == pytest.approx((5 / 6 + 1 / 3) / 2)
    assert "excluded from mAP (no positives): b" in report.format_table()


# 4 images x 3 classes; a prediction is positive when score >= 0.5 (row 3 is exactly 0.5).
S = np.array([[0.9, 0.6, 0.2],
              [0.4, 0.7, 0.55],
              [0.8, 0.3, 0.1],
              [0.5, 0.5, 0.5]])
Y = np.array([[1, 0, 0],
              [1, 1, 0],
              [0, 0, 0],
              [1, 0, 1]])
# predictions: rows {0,1}, {1,2}, {0}, {0,1,2}
# class 0: Np 3 (rows 0,2,3), Ng 3 (rows 0,1,3), Nc 2 (rows 0,3)
# class 1: Np 3 (rows 0,1,3), Ng 1 (row 1),       Nc 1
# class 2: Np 2 (rows 1,3),   Ng 1 (row 3),       Nc 1
# CP = (2/3 + 1/3 + 1/2)/3 = 1/2, CR = (2/3 + 1 + 1)/3 = 8/9, CF1 = 2*(1/2)(8/9)/(1/2 + 8/9) = 16/25
# OP = 4/8, OR = 4/5, OF1 = 2*0.5*0.8/1.3 = 8/13


def test_threshold_metrics_hand_computed():
    m = threshold_metrics(S, Y)
    assert m.Nc.tolist() == [2, 1, 1] and m.Np.tolist() == [3, 3, 2] and m.Ng.tolist() == [3, 1, 1]
    assert m.CP == pytest.approx(0.5)
    assert m.CR == pytest.approx(8 / 9)
    assert m.CF1 == pytest.approx(16 / 25)
    assert m.OP == pytest.approx(0.5)
    assert m.OR == pytest.approx(0.8)
    assert m.OF1 == pytest.approx(8 / 13)


def test_top_k_hand_computed():
    # top-2: rows 0-2 keep the same predictions; row 3 ties at 0.5 -> classes 0 and 1
    # (lower index first), so class 2 loses row 3: Np 1 (row 1), Nc 0.
    # CP = (2/3 + 1/3 + 0)/3 = 1/3, CR = (2/3 + 1 + 0)/3 = 5/9, CF1 = 2(1/3)(5/9)/(8/9) = 5/12
    # OP = 3/7, OR = 3/5, OF1 = 2(3/7)(3/5)/(3/7 + 3/5) = 1/2
    m = threshold_metrics(S, Y, top_k=2)
    assert m.Np.tolist() == [3, 3, 1] and m.Nc.tolist() == [2, 1, 0]
    assert (m.CP, m.CR, m.CF1) == pytest.approx((1 / 3, 5 / 9, 5 / 12))
    assert (m.OP, m.OR, m.OF1) == pytest.approx((3 / 7, 3 / 5, 0.5))
    # k >= number of classes changes nothing
    full = threshold_metrics(S, Y, top_k=3)
    assert full.Np.tolist() == [3, 3, 2]


def test_top3_drops_the_fourth_class():
    # scores 0.9 0.8 0.7 0.6 0.1 all >= 0.5 except the last; the only positive is class 3.
    # all: 4 predictions, 1 correct -> OP 1/4, OR 1, OF1 2(1/4)/(5/4) = 2/5.
    # top-3: class 3 (4th best) is dropped -> nothing correct -> OP = OR = OF1 = 0.
    s = [[0.9, 0.8, 0.7, 0.6, 0.1]]
    y = [[0, 0, 0, 1, 0]]
    r = evaluate_multilabel(s, y)
    assert (r.all.OP, r.all.OR, r.all.OF1) == pytest.approx((0.25, 1.0, 0.4))
    assert (r.topk.OP, r.topk.OR, r.topk.OF1) == (0.0, 0.0, 0.0)
    # per class in "all": CP = (0+0+0+1+0)/5 = 1/5 (class 4 is never predicted: 0/0 -> 0),
    # CR = 1/5 (classes without positives add 0), CF1 = 1/5
    assert (r.all.CP, r.all.CR, r.all.CF1) == pytest.approx((0.2, 0.2, 0.2))


def test_all_zero_predictions_give_zero_without_division_warnings():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            r = evaluate_multilabel(np.full((3, 2), 0.1), y)
    for m in (r.all, r.topk):
        assert (m.CP, m.CR, m.CF1, m.OP, m.OR, m.OF1) == (0.0,) * 6
    # and no positives at all anywhere: thresholded metrics 0, mAP undefined (NaN), all classes excluded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r0 = evaluate_multilabel(np.full((3, 2), 0.9), np.zeros((3, 2)))
    assert r0.all.OF1 == 0.0 and r0.all.OP == 0.0
    assert np.isnan(r0.mAP) and r0.excluded_classes == [0, 1]
    assert "n/a" in r0.format_table()


def test_from_logits_matches_probabilities():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (30, 6))
    logits[0, 0] = 0.0  # exactly at the threshold
    y = (rng.random((30, 6)) < 0.4).astype(int)
    y[0] = 1
    probs = 1 / (1 + np.exp(-logits))
    a = evaluate_multilabel(probs, y).to_dict()
    b = evaluate_multilabel(logits, y, from_logits=True).to_dict()
    assert a == pytest.approx(b, abs=1e-12)
    # saturated logits stay distinct: sigmoid(40) == sigmoid(41) == 1.0 in float64, logits are not tied
    r = evaluate_multilabel([[40.0], [41.0]], [[0], [1]], from_logits=True)
    assert r.mAP == pytest.approx(1.0)


def test_torch_inputs():
    s = torch.tensor(S, dtype=torch.float32)
    r = evaluate_multilabel(s, torch.tensor(Y), top_k=2)
    assert r.all.CF1 == pytest.approx(16 / 25)
    assert r.topk.OF1 == pytest.approx(0.5)


def test_report_dict_and_table():
    r = evaluate_multilabel(S, Y, top_k=2, class_names=["person", "dog", "cat"])
    d = r.to_dict()
    assert list(d) == ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1",
                       "CP_top2", "CR_top2", "CF1_top2", "OP_top2", "OR_top2", "OF1_top2"]
    assert all(isinstance(v, float) for v in d.values())
    assert d["CF1"] == pytest.approx(16 / 25) and d["OF1_top2"] == pytest.approx(0.5)
    per = r.to_dict(per_class=True)
    # class 0: ranked scores .9 .8 .5 .4 -> labels 1 0 1 1 -> (1 + 2/3 + 3/4)/3
    assert per["AP/person"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    table = r.format_table(per_class=True)
    assert "top-2" in table and "64.00" in table and "person" in table


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_name_the_argument(bad):
    s = S.copy()
    s[2, 1] = bad
    with pytest.raises(ValueError, match=r"scores: .*non-finite.*\(2, 1\)"):
        evaluate_multilabel(s, Y)
    with pytest.raises(ValueError, match="scores"):
        average_precision(s[:, 1], Y[:, 1])


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_multilabel(S, Y[:, :2])
    with pytest.raises(ValueError, match="differ in shape"):
        average_precision([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="labels: must be 0 or 1"):
        evaluate_multilabel(S, Y * 2)
    y = Y.astype(float)
    y[0, 0] = np.nan
    with pytest.raises(ValueError, match="labels"):
        evaluate_multilabel(S, y)
    with pytest.raises(ValueError, match="scores: expected 2 dimensions"):
        evaluate_multilabel(S[:, 0], Y[:, 0])
    with pytest.raises(ValueError, match="top_k"):
        threshold_metrics(S, Y, top_k=0)
    with pytest.raises(ValueError, match="mode"):
        average_precision(S, Y, mode="11pt")
    with pytest.raises(ValueError, match="class_names"):
        evaluate_multilabel(S, Y, class_names=["a"])
    with pytest.raises(ValueError, match="scores: expected numbers"):
        evaluate_multilabel(np.array([["a", "b"]]), [[0, 1]])


def test_tie_warning_above_the_threshold():
    from mlic.evaluation.classification import TIE_WARNING_SHARE, tie_warning

    assert tie_warning(TIE_WARNING_SHARE) is None
    msg = tie_warning(0.25, "region scores")
    assert msg.startswith("25.0% of the region scores are tied")
