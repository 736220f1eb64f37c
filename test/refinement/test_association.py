"""Association of single-view hypotheses: grouping, symmetric equivalents, fusion, ray gate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, perturb_pose, pose_difference, so3_exp
from pose_node.core.types import ObjectModel, PoseEstimate
from pose_node.refinement.association import AssociationConfig, associate, equivalent_with_covariance

FLIP_Z = np.diag([-1.0, -1.0, 1.0, 1.0])  # 180 degrees about z


def model(object_id: int, symmetric: bool = False) -> ObjectModel:
    v = np.array([[x, y, z] for x in (-0.05, 0.05) for y in (-0.03, 0.03) for z in (-0.02, 0.02)])
    sym = np.stack([np.eye(4), FLIP_Z]) if symmetric else np.eye(4)[None]
    return ObjectModel(object_id, f"box{object_id}", v, np.array([[0, 1, 2]]), np.zeros_like(v), 0.12, symmetries=sym)


def estimate(object_id: int, xyz, view: int, R: np.ndarray | None = None, cov: np.ndarray | None = None,
             score: float = 0.9) -> PoseEstimate:
    T = np.eye(4)
    T[:3, :3] = np.eye(3) if R is None else R
    T[:3, 3] = xyz
    return PoseEstimate(object_id, 0, T, np.diag([1e-6] * 3 + [1e-3] * 3) if cov is None else cov, score, (view,))


def rot(axis, deg) -> np.ndarray:
    return so3_exp(torch.tensor(axis, dtype=torch.float64) * math.radians(deg)).numpy()


def test_views_of_one_object_become_one_candidate_with_a_fused_pose():
    models = {1: model(1), 2: model(2)}
    cov_a = np.diag([1e-6, 1e-6, 1e-6, 1e-3, 1e-3, 1e-3])
    cov_b = np.diag([4e-6, 4e-6, 4e-6, 1e-3, 1e-3, 1e-3])
    hyps = [estimate(1, [0.0, 0, 0], 0, cov=cov_a), estimate(1, [0.01, 0, 0], 1, cov=cov_b),
            estimate(1, [0.5, 0, 0], 2), estimate(2, [0.0, 0, 0], 0)]
    cands = associate(hyps, models)
    assert len(cands) == 3
    near = [c for c in cands if c.object_id == 1 and c.T_world_object[0, 3] < 0.1][0]
    assert near.view_indices == (0, 1) and len(near.members) == 2
    np.testing.assert_allclose(near.T_world_object[0, 3], 0.01 * 1 / (1 + 4), atol=1e-9)  # information-weighted
    assert near.covariance[0, 0] < 1e-6  # two views know more than the best one
    far = [c for c in cands if c.object_id == 1 and c.T_world_object[0, 3] > 0.1][0]
    assert far.view_indices == (2,)  # seen by one view only: still a candidate


def test_symmetric_equivalents_are_fused_and_a_flip_becomes_an_alternative():
    R = rot([0.2, -0.1, 0.3], 30)
    sym = associate([estimate(1, [0, 0, 0], 0, R), estimate(1, [0.002, 0, 0], 1, R @ FLIP_Z[:3, :3])], {1: model(1, True)})
    assert len(sym) == 1 and len(sym[0].members) == 2 and not sym[0].alternatives
    np.testing.assert_allclose(sym[0].T_world_object[:3, :3], R, atol=1e-9)
    flip = associate([estimate(1, [0, 0, 0], 0, R, score=0.8), estimate(1, [0.002, 0, 0], 1, R @ FLIP_Z[:3, :3]),
                      estimate(1, [0.001, 0, 0], 2, R @ rot([0, 0, 1], 3))], {1: model(1, False)})
    assert len(flip) == 1 and len(flip[0].members) == 2 and len(flip[0].alternatives) == 1
    assert np.degrees(np.arccos((np.trace(flip[0].T_world_object[:3, :3].T @ R) - 1) / 2)) < 3.0


def test_rgb_positions_far_apart_along_their_rays_meet_with_the_ray_gate():
    """Two cameras see the object at the origin; each single-view estimate is 20 cm off along its
    own ray (depth unknown without a depth image). The rays meet: one candidate."""
    centres = [np.array([1.0, 0, 0]), np.array([0, 1.0, 0])]
    along = np.diag([1e-6, 1e-6, 1e-6, 1e-3, 1e-3, 1e-3])
    hyps = [estimate(1, [0.2, 0, 0], 0, cov=along), estimate(1, [0, -0.2, 0], 1, cov=along)]
    assert len(associate(hyps, {1: model(1)})) == 2  # too far apart for the position gates
    (cand,) = associate(hyps, {1: model(1)}, AssociationConfig(), centres)
    assert cand.view_indices == (0, 1)


def test_estimates_of_unknown_objects_are_a_clear_error():
    with pytest.raises(InvalidInputError, match="without models"):
        associate([estimate(9, [0, 0, 0], 0)], {1: model(1)})


def test_equivalent_covariance_matches_sampling():
    """Perturb T by samples of its covariance and express each as the equivalent T @ S with an
    offset S: the empirical covariance about T @ S matches the mapped covariance."""
    rng = np.random.default_rng(0)
    T = np.eye(4)
    T[:3, :3] = rot([0.3, 0.2, -0.5], 40)
    T[:3, 3] = [0.1, 0.2, 0.3]
    S = np.eye(4)
    S[:3, :3] = rot([0, 0, 1], 180)
    S[:3, 3] = [0.05, 0.0, 0.02]
    cov = np.diag([1e-6, 2e-6, 1e-6, 1e-4, 4e-4, 2e-4])
    _, cov_eq = equivalent_with_covariance(T, cov, T @ S)
    deltas = torch.from_numpy(rng.multivariate_normal(np.zeros(6), cov, 20000))
    samples = perturb_pose(Pose(torch.from_numpy(T[:3, :3]).expand(20000, 3, 3), torch.from_numpy(T[:3, 3]).expand(20000, 3)), deltas)
    moved = Pose(samples.R @ torch.from_numpy(S[:3, :3]), (samples.R @ torch.from_numpy(S[:3, 3])[:, None])[..., 0] + samples.t)
    ref = Pose.from_matrix(torch.from_numpy(T @ S))
    d = pose_difference(moved, Pose(ref.R.expand(20000, 3, 3), ref.t.expand(20000, 3))).numpy()
    np.testing.assert_allclose(np.cov(d.T), cov_eq, atol=3e-6, rtol=0.1)
