"""Render-and-compare verification: the true pose beats its flips on a textured box, occlusion is
not a mismatch, and the terms pool over views."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.features.registry import create_backbone
from pose_node.onboarding.procedural import make_procedural_object
from pose_node.refinement.refiner import MultiViewRefiner, RefinementConfig
from pose_node.refinement.registration import flip_transforms, sample_surface
from pose_node.refinement.verification import VerificationConfig, combined_score, compare
from scene import HEIGHT, WIDTH, errors, make_scene, perturbed
from test_refiner import candidate


@pytest.fixture(scope="module")
def box_scene(make_renderer):
    """A textured box (all its principal-axis flips keep its silhouette and depth) seen by two cameras."""
    box = make_procedural_object(1, seed=5, shape="box")
    return make_scene(make_renderer(WIDTH, HEIGHT), seed=3, num_views=2, depth_noise_m=0.001, pixel_noise=0.02, model=box)


@pytest.fixture(scope="module")
def refiner(box_scene, make_renderer):
    S = RefinementConfig().crops.size_px
    return MultiViewRefiner([box_scene.model], make_renderer(S, S), create_backbone(), RefinementConfig())


@pytest.mark.parametrize("with_depth", [False, True], ids=["rgb", "rgbd"])
def test_prefers_the_true_pose_over_its_flips_on_a_textured_box_in_two_views(box_scene, refiner, with_depth):
    T = box_scene.T_world_object
    flips = [T @ F for F in flip_transforms(sample_surface(box_scene.model, 500))]
    scores = refiner.verify(box_scene.views, candidate(box_scene.model, T), [T] + flips, with_depth)
    assert scores.prior.shape == (4,)
    assert (scores.prior[0] > scores.prior[1:]).all(), scores.prior
    assert (scores.appearance[0] > scores.appearance[1:] + 0.2).all(), scores.appearance
    if with_depth:  # a box's flips keep its geometry: depth and silhouette agree for all of them
        assert (scores.depth > 0.9).all() and (scores.silhouette > 0.7).all(), (scores.depth, scores.silhouette)


@pytest.mark.parametrize("with_depth", [False, True], ids=["rgb", "rgbd"])
def test_refinement_from_a_flip_ends_at_the_true_pose(box_scene, refiner, with_depth):
    """The associated pose is a flip of the truth with no alternative: the flip hypotheses hold the
    truth, verification ranks it first and the refinement ends there with a high score."""
    flip = flip_transforms(sample_surface(box_scene.model, 500))[2]
    start = perturbed(box_scene.T_world_object, 0.005, 3.0, 1) @ flip
    (est,), ms = refiner.refine(box_scene.views, [candidate(box_scene.model, start)], with_depth)
    dt, dr = errors(est.T_world_object, box_scene.T_world_object)
    assert dt < 0.003 and dr < 1.0, f"{dt * 1e3:.2f} mm, {dr:.2f} deg"
    assert est.score > 0.5
    assert ms["refinement_verify"] > 0


def test_a_wrong_position_fails_depth_and_silhouette(box_scene, refiner):
    T = box_scene.T_world_object
    off = T.copy()
    off[:3, 3] += [0.0, 0.0, 0.04]  # 4 cm off: its render misses the observed surface
    scores = refiner.verify(box_scene.views, candidate(box_scene.model, T), [T, off], True)
    assert scores.depth[0] > 0.9 and scores.depth[1] < 0.6, scores.depth
    assert scores.silhouette[0] > scores.silhouette[1] + 0.2, scores.silhouette


def test_occlusion_is_not_a_mismatch_and_background_behind_is():
    S = 8
    rendered = torch.zeros(2, S, S)
    rendered[:, 2:6, 2:6] = 1.0
    observed = torch.full((2, S, S), 2.0)  # table 1 m behind
    observed[0, 2:6, 2:6] = 1.0  # hypothesis 0: the surface is there
    observed[0, 2:6, 2:4] = 0.5  # ... half of it hidden behind something closer
    segment = torch.zeros(2, S, S, dtype=torch.bool)
    segment[:, 2:6, 2:6] = True
    segment[0, 2:6, 2:4] = False
    gray = torch.rand(2, S, S)
    s = compare(rendered, gray, observed, gray, segment, torch.tensor([0, 1]), 2, torch.full((2,), 0.01), 0.5)
    assert s.depth[0] == 1.0 and s.depth[1] == 0.0  # hypothesis 1: the views see the table through it
    assert s.visible[0] == 0.5 and s.silhouette[0] == 1.0
    assert torch.allclose(s.appearance, torch.ones(2, dtype=torch.float64))
    # Pooled by pixel counts: two views of one hypothesis.
    p = compare(rendered, gray, observed, gray, segment, torch.tensor([0, 0]), 1, torch.full((2,), 0.01), 0.5)
    assert torch.isclose(p.depth[0], torch.tensor(8.0 / 24.0, dtype=torch.float64))
    config = VerificationConfig()
    score = combined_score(torch.tensor([0.8, 0.8]), s, config, True)
    assert score[0] == pytest.approx(0.8 ** config.feature_exponent) and score[1] == 0.0


def test_bad_input_raises():
    with pytest.raises(InvalidInputError, match="compare"):
        compare(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5), None, torch.zeros(2, 4, 4), None, torch.tensor([0, 1]), 2,
                torch.ones(2), 0.5)
    with pytest.raises(InvalidInputError, match="appearance_floor"):
        VerificationConfig(appearance_floor=1.5)


def test_scaled_intrinsics_keep_the_pixel_centre_rule_and_downsampling():
    from pose_node.core.crop import crop_intrinsics
    from pose_node.refinement.verification import downsampled, scaled_crop_intrinsics

    K = crop_intrinsics(np.array([300.0]), 128)[0]
    K_small = scaled_crop_intrinsics(K, 128, 64)
    np.testing.assert_allclose(K_small, crop_intrinsics(np.array([150.0]), 64)[0])
    p = np.array([0.03, -0.02, 0.5])
    u, u_small = K @ p / p[2], K_small @ p / p[2]
    np.testing.assert_allclose(u_small[:2], (u[:2] + 0.5) * 0.5 - 0.5)
    x = torch.arange(16.0).reshape(1, 4, 4)
    assert downsampled(x, 2, "nearest").tolist() == [[[5.0, 7.0], [13.0, 15.0]]]
    assert downsampled(x, 2, "mean").tolist() == [[[2.5, 4.5], [10.5, 12.5]]]
