"""Detection metrics on hand-made masks: every expected value is worked out in the comments."""
from __future__ import annotations

import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.detection.metrics import (
    AP_IOU_THRESHOLDS,
    FP,
    IGNORED,
    TP,
    DetectionMetricsConfig,
    DetectionScorer,
    average_precision,
    match_detections,
    pairwise_mask_iou,
)

H, W = 60, 80


def square(x0: int, y0: int, size: int = 10) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


A, B, C = square(5, 5), square(40, 10), square(20, 40)


def test_ap_thresholds_are_coco():
    assert AP_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_pairwise_mask_iou_known_values():
    shifted = square(7, 5)  # overlap 8 x 10 = 80, union 120
    iou = pairwise_mask_iou([A, shifted, B], [A, B])
    np.testing.assert_allclose(iou, [[1.0, 0.0], [80 / 120, 0.0], [0.0, 1.0]])
    assert pairwise_mask_iou([], [A]).shape == (0, 1)
    assert pairwise_mask_iou([np.zeros((H, W), bool)], [np.zeros((H, W), bool)])[0, 0] == 0.0
    with pytest.raises(InvalidInputError):
        pairwise_mask_iou([A], [np.zeros((5, 5), bool)])


def test_perfect_detections_give_recall_precision_and_ap_one():
    scorer = DetectionScorer()
    counts = scorer.add_image([1, 2, 2], [A, B, C], [1.0, 0.8, 0.5], [2, 1, 2], [0.9, 0.8, 0.7], [C, A, B])
    assert counts == {"targets": 3, "true_positives": 3, "false_positives": 0, "ignored": 0}
    s = scorer.summary()
    assert s.recall == 1.0 and s.precision == 1.0 and s.mask_ap == pytest.approx(1.0)
    assert s.n_targets == 3 and s.n_detections == 3 and s.n_images == 1
    assert s.per_object[2]["n_targets"] == 2 and s.per_object[2]["mask_ap"] == pytest.approx(1.0)


def test_shifted_mask_counts_only_at_thresholds_below_its_iou():
    # IoU 80/120 = 0.667: a true positive at 0.50, 0.55, 0.60, 0.65, a miss at 0.70 .. 0.95,
    # so the AP is 4 / 10.
    scorer = DetectionScorer()
    scorer.add_image([1], [A], [1.0], [1], [0.9], [square(7, 5)])
    s = scorer.summary()
    assert s.recall == 1.0 and s.precision == 1.0
    assert s.mask_ap == pytest.approx(0.4)
    assert [s.ap_per_iou[t] for t in AP_IOU_THRESHOLDS] == pytest.approx([1.0] * 4 + [0.0] * 6)


def test_false_positive_lowers_precision_and_ap_only_when_it_ranks_first():
    low = DetectionScorer()
    low.add_image([1], [A], [1.0], [1, 1], [0.9, 0.3], [A, B])
    s = low.summary()
    assert s.recall == 1.0 and s.precision == 0.5 and s.n_false_positives == 1
    assert s.mask_ap == pytest.approx(1.0)  # recall 1 is reached at precision 1 before the FP
    high = DetectionScorer()
    high.add_image([1], [A], [1.0], [1, 1], [0.3, 0.9], [A, B])
    s = high.summary()
    assert s.precision == 0.5
    assert s.mask_ap == pytest.approx(0.5)  # recall 1 only at precision 1/2


def test_wrong_identity_is_a_false_positive_and_a_miss():
    scorer = DetectionScorer()
    scorer.add_image([1], [A], [1.0], [2], [0.9], [A])
    s = scorer.summary()
    assert s.recall == 0.0 and s.precision == 0.0 and s.mask_ap == pytest.approx(0.0)
    assert s.per_object[2]["n_targets"] == 0 and s.per_object[2]["mask_ap"] is None  # no targets: not in the AP


def test_duplicate_detection_is_a_false_positive():
    scorer = DetectionScorer()
    counts = scorer.add_image([1], [A], [1.0], [1, 1], [0.9, 0.8], [A, square(6, 5)])
    assert counts["true_positives"] == 1 and counts["false_positives"] == 1


def test_barely_visible_instances_are_ignore_regions():
    # GT B is only 20 % visible: not a target, and a detection on it is neither TP nor FP (twice).
    scorer = DetectionScorer()
    counts = scorer.add_image([1, 1], [A, B], [0.9, 0.2], [1, 1, 1], [0.9, 0.8, 0.7], [A, B, square(41, 10)])
    assert counts == {"targets": 1, "true_positives": 1, "false_positives": 0, "ignored": 2}
    s = scorer.summary()
    assert s.recall == 1.0 and s.precision == 1.0 and s.mask_ap == pytest.approx(1.0) and s.n_ignored_gt == 1
    # With a lower visibility bar the same instance becomes a target.
    strict = DetectionScorer(DetectionMetricsConfig(visib_fract_min=0.1))
    strict.add_image([1, 1], [A, B], [0.9, 0.2], [1], [0.9], [A])
    assert strict.summary().recall == 0.5


def test_match_detections_greedy_by_score_prefers_targets():
    ious = np.array([[0.6, 0.9], [0.7, 0.0]])
    # Detection 0 (best score) takes target 0 (target 1 is an ignore region although its IoU is
    # higher); detection 1 then finds target 0 taken: a false positive.
    out = match_detections(np.array([0.9, 0.5]), ious, np.array([False, True]), 0.5)
    assert out.tolist() == [TP, FP]
    out = match_detections(np.array([0.9, 0.5]), np.array([[0.2, 0.9], [0.7, 0.0]]), np.array([False, True]), 0.5)
    assert out.tolist() == [IGNORED, TP]


def test_average_precision_known_curve():
    # Ranked TP, FP, TP with 2 targets: (recall, precision) = (0.5, 1), (0.5, 0.5), (1, 2/3);
    # envelope 1 up to recall 0.5 (51 points), 2/3 above (50 points).
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([TP, FP, TP], np.int8), 2)
    assert ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert average_precision(np.array([0.5]), np.array([IGNORED], np.int8), 1) == 0.0


def test_inconsistent_inputs_raise():
    with pytest.raises(InvalidInputError):
        DetectionScorer().add_image([1], [A, B], [1.0], [], [], [])
    with pytest.raises(InvalidInputError):
        DetectionMetricsConfig(match_iou=0.0)


def test_no_targets_and_no_detections():
    scorer = DetectionScorer()
    scorer.add_image([], [], [], [], [], [])
    s = scorer.summary()
    assert s.recall is None and s.precision is None and s.mask_ap is None and s.n_images == 1
