"""Multi-view refinement on clean and noisy synthetic views: convergence, views, covariance."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import chi2

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import PoseEstimate
from pose_node.evaluation.calibration import mahalanobis_sq, pose_error_6d
from pose_node.features.registry import create_backbone
from pose_node.refinement.association import Candidate
from pose_node.refinement.refiner import MultiViewRefiner, RefinementConfig
from pose_node.refinement.registration import RegistrationConfig
from pose_node.refinement.verification import VerificationConfig
from scene import HEIGHT, WIDTH, errors, make_scene, perturbed


@pytest.fixture(scope="module")
def backbone():
    return create_backbone()


@pytest.fixture(scope="module")
def scene(make_renderer):
    return make_scene(make_renderer(WIDTH, HEIGHT))


def refiner_for(model, make_renderer, backbone, config: RefinementConfig = RefinementConfig()) -> MultiViewRefiner:
    S = config.crops.size_px
    return MultiViewRefiner([model], make_renderer(S, S), backbone, config)


def candidate(model, T: np.ndarray, alternatives: tuple[np.ndarray, ...] = (), views: tuple[int, ...] = (0, 1, 2, 3)) -> Candidate:
    """A candidate detected in ``views`` (the scenes' four views by default)."""
    cov = np.diag([1e-4] * 3 + [1e-2] * 3)
    alts = tuple(PoseEstimate(model.object_id, 0, A, cov, 0.5, views[:1]) for A in alternatives)
    members = tuple(PoseEstimate(model.object_id, 0, T, cov, 0.9, (v,)) for v in views)
    return Candidate(model.object_id, T, cov, 0.9, members, alts, views)


def in_front_of(view, points_world: np.ndarray, depth_m: float = 0.1):
    """``view`` with an occluder ``depth_m`` from the camera over the image box of ``points_world``
    (N, 3), plus 5 px."""
    uv, _ = view.camera.project(points_world)
    (u0, v0), (u1, v1) = np.floor(uv.min(0)).astype(int) - 5, np.ceil(uv.max(0)).astype(int) + 5
    depth = view.depth.copy()
    depth[max(v0, 0):v1 + 1, max(u0, 0):u1 + 1] = depth_m
    return replace(view, depth=depth)


@pytest.mark.parametrize("with_depth", [False, True], ids=["rgb", "rgbd"])
def test_converges_from_2cm_10deg_to_2mm_half_degree(scene, make_renderer, backbone, with_depth):
    refiner = refiner_for(scene.model, make_renderer, backbone, RefinementConfig(rounds=3))
    for seed in range(3):
        start = perturbed(scene.T_world_object, 0.02, 10.0, seed)
        (est,), _ = refiner.refine(scene.views, [candidate(scene.model, start)], with_depth)
        dt, dr = errors(est.T_world_object, scene.T_world_object)
        # RGB-D wins from a registered start (depth fixes the position; the rotation about this
        # near-rotationally-symmetric bottle's axis is the start's), whose feature alignment ends
        # 0.3-0.8 deg off instead of 0.2 (known weak point, see pose15 report).
        assert dt < 0.002 and dr < (1.0 if with_depth else 0.5), f"seed {seed}: {dt * 1e3:.2f} mm, {dr:.2f} deg"
        assert est.view_indices == (0, 1, 2, 3)
        assert est.score > 0.5


def test_more_views_never_worse_and_covariance_shrinks(scene, make_renderer, backbone):
    refiner = refiner_for(scene.model, make_renderer, backbone)
    mean_error, traces = {}, {}
    for n in (1, 2, 4):
        errs, tr = [], []
        for seed in range(4):
            start = perturbed(scene.T_world_object, 0.01, 5.0, 100 + seed)
            (est,), _ = refiner.refine(scene.views[:n], [candidate(scene.model, start)], False)
            dt, dr = errors(est.T_world_object, scene.T_world_object)
            errs.append(dt * 1e3 + dr)  # mm + deg: both matter, neither may grow
            tr.append((np.trace(est.covariance[:3, :3]), np.trace(est.covariance[3:, 3:])))
        mean_error[n], traces[n] = float(np.mean(errs)), np.mean(tr, axis=0)
    assert mean_error[2] <= mean_error[1] + 0.2 and mean_error[4] <= mean_error[2] + 0.2, mean_error
    assert (traces[2] < traces[1]).all() and (traces[4] < traces[2]).all(), traces


def test_a_flip_seen_by_one_view_loses_to_the_pose_the_views_agree_on(scene, make_renderer, backbone):
    refiner = refiner_for(scene.model, make_renderer, backbone)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # 180 degrees about y: not a symmetry of the object
    good = perturbed(scene.T_world_object, 0.005, 3.0, 7)
    (est,), _ = refiner.refine(scene.views, [candidate(scene.model, good @ flip, (good,))], True)
    dt, dr = errors(est.T_world_object, scene.T_world_object)
    assert dt < 0.002 and dr < 0.5


def test_a_time_budget_can_cut_starts_and_rounds(scene, make_renderer, backbone):
    refiner = refiner_for(scene.model, make_renderer, backbone)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    good = perturbed(scene.T_world_object, 0.005, 3.0, 7)
    candidates = [candidate(scene.model, good @ flip, (good,))]
    (default,), _ = refiner.refine(scene.views, candidates, True)
    (same,), _ = refiner.refine(scene.views, candidates, True, max_starts=refiner.config.max_starts, rounds=refiner.config.rounds)
    assert np.array_equal(default.T_world_object, same.T_world_object) and np.array_equal(default.covariance, same.covariance)
    # Without render-and-compare the first start is the only one tried when the budget allows one:
    # the alternative the views agree on never is.
    plain = refiner_for(scene.model, make_renderer, backbone, RefinementConfig(
        verification=VerificationConfig(enabled=False), registration=RegistrationConfig(enabled=False), flip_hypotheses=False))
    (cut,), _ = plain.refine(scene.views, candidates, True, max_starts=1, rounds=1)
    assert errors(cut.T_world_object, scene.T_world_object)[1] > 90.0
    # With it, the cheap check picks the start the views agree on before any alignment.
    (cut,), _ = refiner.refine(scene.views, candidates, True, max_starts=1, rounds=1)
    assert errors(cut.T_world_object, scene.T_world_object)[1] < 3.0
    with pytest.raises(InvalidInputError, match="rounds"):
        refiner.refine(scene.views, candidates, True, rounds=0)


def test_a_wrong_view_is_outvoted(scene, make_renderer, backbone):
    """One camera's image belongs to another scene (a wrong or stale view): the pose stays right."""
    other = make_scene(make_renderer(WIDTH, HEIGHT), seed=11)
    views = list(scene.views)
    views[2] = replace(views[2], rgb=other.views[2].rgb, depth=other.views[2].depth)
    refiner = refiner_for(scene.model, make_renderer, backbone, RefinementConfig(rounds=3))
    (est,), _ = refiner.refine(views, [candidate(scene.model, perturbed(scene.T_world_object, 0.01, 5.0, 3))], True)
    dt, dr = errors(est.T_world_object, scene.T_world_object)
    assert dt < 0.003 and dr < 1.0
    assert 2 not in est.view_indices


def test_covariance_is_calibrated_on_a_monte_carlo_check(make_renderer, backbone):
    """Noise in the images and the starts: a scale fitted on half the runs makes the 95 % region
    cover 80-100 % of the other half (cross-validated, so the check can fail)."""
    renderer = make_renderer(WIDTH, HEIGHT)
    refiner = None
    d2 = []
    for k in range(16):
        sc = make_scene(renderer, pixel_noise=0.04, depth_noise_m=0.002, noise_seed=k)
        refiner = refiner or refiner_for(sc.model, make_renderer, backbone)
        (est,), _ = refiner.refine(sc.views, [candidate(sc.model, perturbed(sc.T_world_object, 0.01, 5.0, 200 + k))], True)
        err = pose_error_6d(est.T_world_object[None], sc.T_world_object[None])
        d2.append(float(mahalanobis_sq(err, est.covariance[None])[0]))
    d2 = np.asarray(d2)
    fit, check = d2[::2], d2[1::2]
    scale = np.quantile(fit, 0.9545) / chi2.ppf(0.9545, 6)
    coverage = float(np.mean(check / scale <= chi2.ppf(0.9545, 6)))
    assert 0.75 <= coverage <= 1.0, (coverage, d2)
    assert np.isfinite(d2).all()


def test_a_candidate_only_one_of_the_views_framing_it_detected_is_not_refined(scene, make_renderer, backbone):
    refiner = refiner_for(scene.model, make_renderer, backbone)
    start = perturbed(scene.T_world_object, 0.01, 5.0, 0)
    lone, confirmed = candidate(scene.model, start, views=(2,)), candidate(scene.model, start, views=(1, 2))
    out, _ = refiner.refine(scene.views, [lone, confirmed], True)
    assert [e.instance_id for e in out] == [0, 1]
    # The lone detection keeps its pose and cannot be published; the confirmed one is refined (the
    # position: the rotation about this near-symmetric bottle's axis stays the start's, see above).
    np.testing.assert_array_equal(out[0].T_world_object, start)
    assert out[0].score == 0.0 and out[0].view_indices == (2,)
    assert errors(out[1].T_world_object, scene.T_world_object)[0] < 0.002 and out[1].score > 0.1
    # One camera framing it (a single-camera cell), or the check off: the lone one is refined too.
    (single,), _ = refiner.refine(scene.views[2:3], [candidate(scene.model, start, views=(0,))], True)
    assert errors(single.T_world_object, scene.T_world_object)[0] < 0.002 and single.score > 0.1
    # The other cameras' depth shows something nearer in front of it (a part only one camera can
    # see): they do not frame it, so the lone detection is refined.
    points = np.asarray(scene.model.vertices) @ scene.T_world_object[:3, :3].T + scene.T_world_object[:3, 3]
    (hidden,), _ = refiner.refine([v if i == 2 else in_front_of(v, points) for i, v in enumerate(scene.views)], [lone], True)
    assert errors(hidden.T_world_object, scene.T_world_object)[0] < 0.002 and hidden.score > 0.1
    off = refiner_for(scene.model, make_renderer, backbone, RefinementConfig(min_supporting_views=1))
    (refined,), _ = off.refine(scene.views, [lone], True)
    assert errors(refined.T_world_object, scene.T_world_object)[0] < 0.002 and refined.score > 0.1
    with pytest.raises(InvalidInputError):
        RefinementConfig(min_supporting_views=0)
    with pytest.raises(InvalidInputError):
        RefinementConfig(support_occlusion_margin_m=-0.01)
