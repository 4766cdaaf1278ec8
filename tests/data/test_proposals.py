"""The proposal policy by hand and the proposal sources."""
import cv2
import numpy as np
import pytest
import scipy.io

from mlic.data.datalist import DatasetFormatError
from mlic.data.proposals import (EdgeBoxesProposals, PrecomputedProposals, edge_boxes_from_edges, map_boxes_to_frame,
                                 select_proposals)


def test_map_and_select_proposals_hand_values():
    b = map_boxes_to_frame(np.array([[10, 5, 39, 19], [-3, 0, 50, 25]]), 40, 20, 80, 60)
    np.testing.assert_allclose(b, [[20, 15, 78, 57], [0, 0, 79, 59]])
    boxes = np.array([[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 7, 7], [5, 5, 1, 1]])  # last is degenerate
    scores = np.array([0.2, 0.9, 0.5, 1.0])
    top2 = select_proposals(boxes, scores, 2, 10, 10)
    np.testing.assert_array_equal(top2, [[1, 1, 6, 6, 0.9], [2, 2, 7, 7, 0.5]])
    rep = select_proposals(boxes, scores, 5, 10, 10, pad="repeat")
    np.testing.assert_array_equal(rep[:, 4], [0.9, 0.5, 0.2, 0.9, 0.5])
    whole = select_proposals(boxes, scores, 4, 10, 10, pad="whole")
    np.testing.assert_array_equal(whole[3], [0, 0, 9, 9, 1])
    zero = select_proposals(np.zeros((0, 4)), None, 2, 10, 8, pad="zero")
    np.testing.assert_array_equal(zero, [[0, 0, 9, 7, 0]] * 2)
    # no scores: all 1, source order kept
    ns = select_proposals(boxes[:3], None, 3, 10, 10)
    np.testing.assert_array_equal(ns[:, :4], boxes[:3])
    np.testing.assert_array_equal(ns[:, 4], [1, 1, 1])


def test_precomputed_mat_wsddn_layout(tmp_path):
    # WSDDN/Fast R-CNN .mat: cells, 1-based (y1, x1, y2, x2)
    images = np.empty((1, 2), dtype=object)
    images[0, 0], images[0, 1] = np.array(["000005"]), np.array(["000007"])
    boxes = np.empty((1, 2), dtype=object)
    boxes[0, 0] = np.array([[2.0, 11.0, 6.0, 21.0], [1.0, 1.0, 20.0, 40.0]])
    boxes[0, 1] = np.zeros((0, 4))
    scores = np.empty((1, 2), dtype=object)
    scores[0, 0] = np.array([[0.3], [0.7]])
    scores[0, 1] = np.zeros((0, 1))
    scipy.io.savemat(tmp_path / "eb.mat", {"images": images, "boxes": boxes, "boxScores": scores})
    src = PrecomputedProposals(str(tmp_path / "eb.mat"))
    b, s = src("JPEGImages/000005.jpg", "JPEGImages/000005.jpg")
    np.testing.assert_array_equal(b, [[10, 1, 20, 5], [0, 0, 39, 19]])
    np.testing.assert_array_equal(s, [0.3, 0.7])
    assert len(src("000007", "x")[0]) == 0
    with pytest.raises(DatasetFormatError, match="no proposals for image '000009.jpg'"):
        src("000009.jpg", "x")


def test_edge_boxes_from_an_edge_map():
    img = np.zeros((60, 80), np.float32)
    cv2.rectangle(img, (20, 10), (49, 39), 1.0, -1)
    gx, gy = cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1)
    mag = np.sqrt(gx ** 2 + gy ** 2)
    mag /= mag.max()
    ori = np.mod(np.arctan2(gy, gx), np.pi).astype(np.float32)
    boxes, scores = edge_boxes_from_edges(mag, ori, max_boxes=10)
    assert len(boxes) >= 1 and len(scores) == len(boxes)
    assert (np.diff(scores) <= 1e-6).all()  # best first
    b = boxes[0]
    assert abs(b[0] - 20) <= 4 and abs(b[1] - 10) <= 4 and abs(b[2] - 49) <= 4 and abs(b[3] - 39) <= 4


def test_edge_boxes_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="model.yml.gz.* not found; Edge Boxes needs OpenCV's structured edge "
                                                 "model .* from OpenCV's opencv_extra repository, "
                                                 "testdata/cv/ximgproc/model.yml.gz"):
        EdgeBoxesProposals(str(tmp_path / "model.yml.gz"))
