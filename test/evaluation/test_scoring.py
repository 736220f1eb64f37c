"""BOP19 matching and recall computation on hand-built images."""
import numpy as np
import pytest
from box_scene import H_SMALL, K_SMALL, W_SMALL, BoxDepthRenderer, box_model, render_scene, rot_z, translation

from pose_node.evaluation import metrics
from pose_node.evaluation.scoring import (
    BopScorer,
    GtInstance,
    ImageEstimate,
    ObjectEvalInfo,
    _ErrorRecord,
    match_poses,
    valid_gt_mask,
)

BOX_A = box_model(1, [0.06, 0.04, 0.08])
BOX_B = box_model(2, [0.05, 0.05, 0.03], np.stack([np.eye(4), rot_z(np.pi)]))
MODELS = [BOX_A, BOX_B]
T_A = translation(-0.05, 0.0, 0.6) @ rot_z(0.3)
T_B = translation(0.06, 0.02, 0.55) @ rot_z(-0.4)


def _scorer(renderer=True):
    objects = {m.object_id: ObjectEvalInfo.from_model(m) for m in MODELS}
    return BopScorer(objects, BoxDepthRenderer(MODELS) if renderer else None)


def _image(instances):
    ren = BoxDepthRenderer(MODELS)
    depth, masks, visib = render_scene(ren, K_SMALL, W_SMALL, H_SMALL, instances)
    gts = [GtInstance(o, T, float(v.sum() / max(m.sum(), 1))) for (o, T), m, v in zip(instances, masks, visib)]
    return depth, gts


def _add(scorer, instances, targets, estimates):
    depth, gts = _image(instances)
    scorer.add_image(K_SMALL, W_SMALL, H_SMALL, gts, targets, estimates, depth)


def test_valid_gt_mask_keeps_most_visible():
    gts = [GtInstance(1, np.eye(4), 0.2), GtInstance(1, np.eye(4), 0.9), GtInstance(2, np.eye(4), 0.5), GtInstance(1, np.eye(4), 0.9)]
    assert valid_gt_mask(gts, {1: 2}) == [False, True, False, True]
    assert valid_gt_mask(gts, {1: 1, 2: 1}) == [False, True, True, False]


def test_greedy_matching_follows_scores():
    # The best-scoring estimate takes the GT with its lowest error; the second gets what is left.
    r1 = _ErrorRecord(0, 1, score=0.9, mssd={0: 0.04, 1: 0.03})
    r2 = _ErrorRecord(1, 1, score=0.5, mssd={0: 0.01, 1: 0.02})
    assert match_poses([r2, r1], "mssd", 0.05, [True, True]) == {0, 1}
    assert match_poses([r2, r1], "mssd", 0.035, [True, True]) == {0, 1}  # r1 takes GT 1; r2 then GT 0 (0.01)
    r2b = _ErrorRecord(1, 1, score=0.5, mssd={0: 0.04, 1: 0.02})
    assert match_poses([r2b, r1], "mssd", 0.035, [True, True]) == {1}  # GT 1 is taken, GT 0 too far
    assert match_poses([r1], "mssd", 0.05, [True, False]) == {0}  # invalid GT never matches


def test_exact_estimates_give_recall_one():
    scorer = _scorer()
    instances = [(1, T_A), (2, T_B)]
    _add(scorer, instances, {1: 1, 2: 1}, [ImageEstimate(o, 1.0, T) for o, T in instances])
    s = scorer.summary()
    assert s.AR == pytest.approx(1.0) and s.AR_VSD == 1.0 and s.AR_MSSD == 1.0 and s.AR_MSPD == 1.0
    assert s.ADD_S_recall == 1.0 and s.n_gt == 2 and s.n_estimates_evaluated == 2
    assert s.per_object[1]["AR"] == pytest.approx(1.0)


def test_missing_estimate_is_a_miss_and_symmetry_is_respected():
    scorer = _scorer()
    instances = [(1, T_A), (2, T_B)]
    # Only object 2, rotated by its 180-degree symmetry: correct under every threshold.
    _add(scorer, instances, {1: 1, 2: 1}, [ImageEstimate(2, 0.7, T_B @ rot_z(np.pi))])
    s = scorer.summary()
    assert s.AR_MSSD == pytest.approx(0.5) and s.AR_MSPD == pytest.approx(0.5) and s.AR_VSD == pytest.approx(0.5)
    assert s.per_object[1]["AR"] == 0.0 and s.per_object[2]["AR"] == pytest.approx(1.0)


def test_known_offset_gives_known_recalls():
    scorer = _scorer()
    d = BOX_A.diameter_m
    dx = 0.12 * d
    T_est = translation(dx, 0, 0) @ T_A
    _add(scorer, [(1, T_A)], {1: 1}, [ImageEstimate(1, 1.0, T_est)])
    s = scorer.summary()
    # MSSD = 0.12 d: correct for thresholds 0.15 .. 0.5 d (8 of 10).
    np.testing.assert_array_equal(s.recall_mssd, [0, 0] + [1] * 8)
    # MSPD is scaled by 640 / 160 = 4 before thresholding at 5 .. 50 px.
    raw = float(metrics.mspd(T_est, T_A, K_SMALL, BOX_A.vertices.astype(float)))
    np.testing.assert_array_equal(s.recall_mspd, (4.0 * raw < np.arange(5, 51, 5)).astype(float))
    assert s.AR == pytest.approx(np.mean([s.AR_VSD, s.AR_MSSD, s.AR_MSPD]))
    assert s.ADD_S_recall == 0.0  # ADD-S = 0.12 d > 0.1 d


def test_top_inst_count_estimates_only():
    scorer = _scorer()
    wrong = translation(0.3, 0, 0) @ T_A
    # Two estimates for one instance: only the higher-scoring (wrong) one is evaluated.
    _add(scorer, [(1, T_A)], {1: 1}, [ImageEstimate(1, 0.4, T_A), ImageEstimate(1, 0.9, wrong)])
    s = scorer.summary()
    assert s.AR_MSSD == 0.0 and s.n_estimates_evaluated == 1


def test_two_instances_matched_independently():
    scorer = _scorer()
    T_A2 = translation(0.15, 0, 0) @ T_A
    ests = [ImageEstimate(1, 0.3, T_A2), ImageEstimate(1, 0.8, translation(0.002, 0, 0) @ T_A)]
    _add(scorer, [(1, T_A), (1, T_A2)], {1: 2}, ests)
    s = scorer.summary()
    assert s.n_gt == 2 and s.AR_MSSD == 1.0


def test_vsd_unavailable_without_renderer():
    scorer = _scorer(renderer=False)
    _add(scorer, [(1, T_A)], {1: 1}, [ImageEstimate(1, 1.0, T_A)])
    s = scorer.summary()
    assert s.AR is None and s.AR_VSD is None and s.AR_MSSD == 1.0
    assert "renderer" in s.vsd_unavailable_reason
    # Without estimates nothing needs rendering: recalls are 0, not unknown.
    empty = _scorer(renderer=False)
    _add(empty, [(1, T_A)], {1: 1}, [])
    assert empty.summary().AR == 0.0
