"""MultiViewFusion (association + refinement, as the node and the evaluation use it) and the stage."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import PoseEstimate
from pose_node.evaluation.runner import stage_status
from pose_node.refinement.fusion import FusionConfig, MultiViewFusion, default_calibration_path, load_covariance_calibration
from pose_node.refinement.refiner import RefinementConfig
from scene import HEIGHT, WIDTH, errors, make_scene, perturbed


@pytest.fixture(scope="module")
def scene(make_renderer):
    return make_scene(make_renderer(WIDTH, HEIGHT), seed=21, depth_noise_m=0.001, pixel_noise=0.02)


def single_view_estimates(scene) -> list[PoseEstimate]:
    """What the single-view stage gives: one estimate per view, each a few mm and degrees off."""
    cov = np.diag([1e-5] * 3 + [3e-3] * 3)
    return [PoseEstimate(scene.model.object_id, v, perturbed(scene.T_world_object, 0.006, 4.0, 50 + v), cov, 0.8, (v,))
            for v in range(len(scene.views))]


def test_association_only_fuses_the_views(scene):
    fusion = MultiViewFusion([scene.model], FusionConfig(method="association"))
    (est,), ms = fusion(scene.views, single_view_estimates(scene), with_depth=True)
    assert est.view_indices == (0, 1, 2, 3) and set(ms) == {"association"}
    single = [errors(e.T_world_object, scene.T_world_object)[0] for e in single_view_estimates(scene)]
    assert errors(est.T_world_object, scene.T_world_object)[0] < np.mean(single)


def test_refinement_improves_on_association_and_applies_the_calibrated_scale(scene):
    scales = {"rgbd": 2.5, "rgb": 1.0}
    fusion = MultiViewFusion([scene.model], FusionConfig(refinement=RefinementConfig(covariance_scale=scales)))
    unscaled = MultiViewFusion([scene.model], FusionConfig(refinement=RefinementConfig(covariance_scale={"rgbd": 1.0})))
    (est,), ms = fusion(scene.views, single_view_estimates(scene), with_depth=True)
    (raw,), _ = unscaled(scene.views, single_view_estimates(scene), with_depth=True)
    assert {"association", "refinement", "refinement_align"} <= set(ms)
    dt, dr = errors(est.T_world_object, scene.T_world_object)
    assert dt < 0.002 and dr < 0.5
    np.testing.assert_allclose(est.covariance, 2.5 * raw.covariance, rtol=1e-6, atol=1e-15)
    assert 0.0 <= est.score <= 1.0


def test_shipped_calibration_and_stage_registration():
    scales, exponents = load_covariance_calibration(default_calibration_path())
    assert set(scales) == {"rgb", "rgbd"} and all(0.1 < s < 1e5 for s in scales.values())
    assert set(exponents) <= {"rgb", "rgbd"} and all(0 <= k <= 8 for k in exponents.values())
    assert stage_status(["refinement"])["refinement"] == "available"
    with pytest.raises(InvalidInputError, match="method"):
        FusionConfig(method="nearest")


def test_no_view_sees_the_candidate_keeps_the_associated_pose(scene):
    fusion = MultiViewFusion([scene.model], FusionConfig())
    above = np.eye(4)
    above[2, 3] = 5.0  # 5 m up: behind every camera (they look down at the table)
    far = [replace(e, T_world_object=above @ e.T_world_object) for e in single_view_estimates(scene)]
    (est,), ms = fusion(scene.views, far, with_depth=True)
    assert est.T_world_object[2, 3] > 4.0 and np.isfinite(est.covariance).all()
    assert ms["refinement_align"] == 0.0  # nothing was aligned
