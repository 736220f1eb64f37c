"""Probabilistic PnP: residuals and analytic Jacobians, batched LM solver, covariance, RANSAC init.

The cost as a differentiable function of many poses (training) is tested in test/training/test_pnp_cost.py."""
import math

import cv2
import pytest
import torch
from helpers.pnp_scene import F64, make_K, make_scene

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, perturb_pose, pose_difference
from pose_node.correspondence.pnp import PnPConfig, initial_poses_ransac, pnp_residuals, solve_pnp

IMAGE_WH = (640.0, 480.0)
QUADRATIC = PnPConfig(huber_relative_delta=1e9)  # Huber threshold far above every residual


def errors_deg_m(T, R, t):
    """Rotation error (degrees, from so3_log: acos loses precision near 0) and translation error (m)."""
    d = pose_difference(Pose.from_matrix(T.to(F64)), Pose(R, t))
    return d[:, 3:].norm(dim=-1) * 180.0 / math.pi, d[:, :3].norm(dim=-1)


def perturbed(R, t, angle_deg, shift_m, g):
    axis = torch.randn(R.shape[0], 3, generator=g, dtype=F64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    direction = torch.randn(R.shape[0], 3, generator=g, dtype=F64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return perturb_pose(Pose(R, t), torch.cat([shift_m * direction, math.radians(angle_deg) * axis], -1))


# --------------------------------------------------------------------------------------------
# residuals


@pytest.mark.parametrize("with_depth", [False, True])
def test_analytic_jacobian_matches_autograd(with_depth):
    s = make_scene(3, 12, seed=0)
    K = make_K(3, skew=4.0)
    g = s["g"]
    x2d = s["uv"] + 3.0 * torch.randn(s["uv"].shape, generator=g, dtype=F64)
    w2d = 0.2 + torch.rand(x2d.shape, generator=g, dtype=F64)
    depth = None
    if with_depth:
        depth = (s["x3d"] @ s["R"].transpose(1, 2) + s["t"][:, None])[..., 2] + 0.01
        depth[:, ::3] = float("nan")
    r, J = pnp_residuals(s["R"], s["t"], s["x3d"], x2d, w2d, K, depth, depth_weight=0.7)
    assert r.shape == (3, 36 if with_depth else 24) and J.shape == (*r.shape, 6)

    def residuals(delta):
        pose = perturb_pose(Pose(s["R"], s["t"]), delta)
        return pnp_residuals(pose.R, pose.t, s["x3d"], x2d, w2d, K, depth, depth_weight=0.7)[0]

    J_auto = torch.autograd.functional.jacobian(residuals, torch.zeros(3, 6, dtype=F64))  # (B, M, B, 6)
    J_auto = torch.stack([J_auto[b, :, b] for b in range(3)])
    torch.testing.assert_close(J, J_auto, rtol=1e-9, atol=1e-9)
    if with_depth:  # rows without depth are exactly zero, the others are not
        assert (J[:, 24::3] == 0).all() and (J[:, 25::3].abs().sum(-1) > 0).all()


# --------------------------------------------------------------------------------------------
# solver


def test_solve_recovers_pose_and_picks_the_good_hypothesis():
    B, N = 8, 64
    s = make_scene(B, N, seed=4)
    good = perturbed(s["R"], s["t"], 10.0, 0.03, s["g"]).matrix()
    # LM recovers from most 120-degree errors with clean data; 170 degrees mostly ends in a wrong minimum.
    bad = perturbed(s["R"], s["t"], 170.0, 0.0, s["g"]).matrix()
    good_index = torch.arange(B) % 2  # the good hypothesis is first for half of the elements
    T_init = torch.where(good_index[:, None, None, None] == 0, torch.stack([good, bad], 1), torch.stack([bad, good], 1))
    w2d = torch.ones_like(s["uv"])
    result = solve_pnp(s["x3d"], s["uv"], w2d, s["K"], T_init)
    rot_deg, trans_m = errors_deg_m(result.T_camera_object, s["R"], s["t"])
    assert result.valid.all()
    assert rot_deg.max() < 1e-7 and trans_m.max() < 1e-9
    assert (result.cost < 1e-12).all()
    assert (result.iterations <= PnPConfig().max_iterations).all() and (result.iterations > 0).all()
    # Where the bad start alone ends in a wrong local minimum, the good hypothesis must win.
    bad_alone = solve_pnp(s["x3d"], s["uv"], w2d, s["K"], bad[:, None])
    stuck = bad_alone.cost > 1.0
    assert stuck.sum() >= 4
    assert (result.hypothesis[stuck] == good_index[stuck]).all()
    P = Pose.from_matrix(result.T_camera_object)
    torch.testing.assert_close(result.T_camera_object[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=F64).expand(B, 4))
    torch.testing.assert_close(P.R @ P.R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(B, 3, 3))


def test_solve_noisy_correspondences_with_outliers():
    B, N = 16, 200
    s = make_scene(B, N, seed=5, depth_m=0.5)
    g = s["g"]
    x2d = s["uv"] + torch.randn(s["uv"].shape, generator=g, dtype=F64)  # 1 px noise
    outlier = torch.rand(B, N, generator=g) < 0.05
    x2d[outlier] = torch.rand(int(outlier.sum()), 2, generator=g, dtype=F64) * torch.tensor(IMAGE_WH, dtype=F64)
    w2d = torch.ones_like(x2d)
    T_init = perturbed(s["R"], s["t"], 10.0, 0.03, g).matrix()[:, None]
    # Uniform weights: the outliers inflate std(x2d), so EPro-PnP's relative threshold of 0.5
    # (about 36 px here) leaves them much pull; 0.05 is about 3.6 px, 3.6 sigma of the inliers.
    robust = solve_pnp(s["x3d"], x2d, w2d, s["K"], T_init, config=PnPConfig(huber_relative_delta=0.05))
    rot_deg, trans_m = errors_deg_m(robust.T_camera_object, s["R"], s["t"])
    assert robust.valid.all()
    assert rot_deg.max() < 0.75 and rot_deg.mean() < 0.35
    assert trans_m.max() < 0.003 and trans_m.mean() < 0.0012
    quadratic = solve_pnp(s["x3d"], x2d, w2d, s["K"], T_init, config=QUADRATIC)
    rot_q, trans_q = errors_deg_m(quadratic.T_camera_object, s["R"], s["t"])
    assert rot_q.mean() > 5 * rot_deg.mean() and trans_q.mean() > 5 * trans_m.mean()


def test_depth_residuals_reduce_the_depth_error():
    B, N = 16, 64
    s = make_scene(B, N, seed=6)
    g = s["g"]
    x2d = s["uv"] + 2.0 * torch.randn(s["uv"].shape, generator=g, dtype=F64)
    z_true = (s["x3d"] @ s["R"].transpose(1, 2) + s["t"][:, None])[..., 2]
    depth = z_true + 0.001 * torch.randn(B, N, generator=g, dtype=F64)
    depth[:, ::5] = float("nan")  # holes in the depth image
    w2d = torch.full_like(x2d, 0.5)
    T_init = perturbed(s["R"], s["t"], 5.0, 0.02, g).matrix()[:, None]
    rgb = solve_pnp(s["x3d"], x2d, w2d, s["K"], T_init)
    rgbd = solve_pnp(s["x3d"], x2d, w2d, s["K"], T_init, depth_m=depth)
    assert rgb.valid.all() and rgbd.valid.all()
    z_err_rgb = (rgb.T_camera_object[:, 2, 3] - s["t"][:, 2]).abs()
    z_err_rgbd = (rgbd.T_camera_object[:, 2, 3] - s["t"][:, 2]).abs()
    assert z_err_rgbd.mean() < 0.2 * z_err_rgb.mean()
    assert z_err_rgbd.max() < 0.001
    # ... and the covariance knows it
    assert (rgbd.covariance[:, 2, 2] < 0.1 * rgb.covariance[:, 2, 2]).all()


def test_covariance_matches_monte_carlo_spread():
    runs, N, sigma_px = 300, 30, 2.0
    s = make_scene(1, N, seed=7)
    g = s["g"]
    x3d = s["x3d"].expand(runs, N, 3)
    x2d = s["uv"] + sigma_px * torch.randn(runs, N, 2, generator=g, dtype=F64)
    w2d = torch.full_like(x2d, 1.0 / sigma_px)
    T_gt = Pose(s["R"], s["t"]).matrix().expand(runs, 1, 4, 4)
    result = solve_pnp(x3d, x2d, w2d, make_K(runs), T_gt, config=QUADRATIC)
    assert result.valid.all()
    est = Pose.from_matrix(result.T_camera_object)
    d = pose_difference(est, Pose(s["R"].expand(runs, 3, 3), s["t"].expand(runs, 3)))  # (runs, 6)
    empirical = torch.cov(d.T)
    predicted = result.covariance.mean(0)
    ratio = (empirical.diagonal() / predicted.diagonal()).sqrt()
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio
    maha2 = (d[:, None, :] @ torch.linalg.inv(result.covariance) @ d[:, :, None]).flatten()
    assert 5.0 < maha2.mean() < 7.0, maha2.mean()
    # translation variance in metres^2 first, rotation in radians^2 last (ROS order)
    assert predicted[2, 2] > 10 * predicted[:2, :2].diagonal().max()  # depth is the weak direction


def test_invalid_elements_are_flagged_and_the_others_solved():
    B, N = 4, 40
    s = make_scene(B, N, seed=8)
    x3d = s["x3d"].clone()
    w2d = torch.ones_like(s["uv"])
    w2d[1] = 0.0  # no weight at all
    x3d[2, 5] = float("nan")  # a NaN point
    behind_cam = torch.tensor([0.0, 0.0, -1.0], dtype=F64)  # one weighted point behind the camera
    x3d[3, 0] = s["R"][3].T @ (behind_cam - s["t"][3])
    T_init = perturbed(s["R"], s["t"], 5.0, 0.01, s["g"]).matrix()[:, None]
    result = solve_pnp(x3d, s["uv"], w2d, s["K"], T_init)
    assert result.valid.tolist() == [True, False, False, False]
    assert torch.isnan(result.covariance[1:]).all() and torch.isfinite(result.covariance[0]).all()
    rot_deg, trans_m = errors_deg_m(result.T_camera_object[:1], s["R"][:1], s["t"][:1])
    assert rot_deg.max() < 1e-6 and trans_m.max() < 1e-9
    # A non-finite hypothesis only loses.
    T2 = torch.cat([torch.full_like(T_init, float("nan")), T_init], 1)
    result2 = solve_pnp(s["x3d"], s["uv"], torch.ones_like(s["uv"]), s["K"], T2)
    assert result2.valid.all() and (result2.hypothesis == 1).all()


def test_wrong_shapes_raise_and_empty_batch():
    s = make_scene(2, 8, seed=9)
    T = Pose(s["R"], s["t"]).matrix()
    ones = torch.ones_like(s["uv"])
    with pytest.raises(InvalidInputError, match=r"\(2, 8, 3\)"):
        solve_pnp(s["x3d"], torch.zeros(2, 8, 3, dtype=F64), ones, s["K"], T[:, None])
    with pytest.raises(InvalidInputError, match=r"T_init.*\(2, 4, 4\)"):
        solve_pnp(s["x3d"], s["uv"], ones, s["K"], T)
    with pytest.raises(InvalidInputError, match=r"K.*\(3, 3\)"):
        solve_pnp(s["x3d"], s["uv"], ones, s["K"][0], T[:, None])
    with pytest.raises(InvalidInputError, match="hypothesis"):
        solve_pnp(s["x3d"], s["uv"], ones, s["K"], T[:, None][:, :0])
    with pytest.raises(InvalidInputError, match="depth_m"):
        solve_pnp(s["x3d"], s["uv"], ones, s["K"], T[:, None], depth_m=torch.ones(2, 7, dtype=F64))
    with pytest.raises(InvalidInputError, match="lambda"):
        PnPConfig(lambda_init=0.0)
    empty = solve_pnp(s["x3d"][:0], s["uv"][:0], ones[:0], s["K"][:0], T[:0, None])
    assert empty.T_camera_object.shape == (0, 4, 4) and empty.covariance.shape == (0, 6, 6)
    assert empty.valid.shape == (0,) and empty.valid.dtype == torch.bool and empty.hypothesis.dtype == torch.long


def test_float32_inputs_give_float32_outputs_on_the_input_device():
    s = make_scene(3, 30, seed=10)
    T_init = perturbed(s["R"], s["t"], 5.0, 0.01, s["g"]).matrix()[:, None]
    args64 = (s["x3d"], s["uv"], torch.ones_like(s["uv"]), s["K"], T_init)
    r32 = solve_pnp(*(a.float() for a in args64))
    r64 = solve_pnp(*args64)
    for name in ("T_camera_object", "cost", "covariance"):
        value = getattr(r32, name)
        assert value.dtype == torch.float32 and value.device == s["x3d"].device
    assert r32.valid.all()
    rot_deg, trans_m = errors_deg_m(r32.T_camera_object, s["R"], s["t"])
    assert rot_deg.max() < 0.01 and trans_m.max() < 1e-4  # float32 input rounding only
    torch.testing.assert_close(r32.covariance.double(), r64.covariance, rtol=1e-3, atol=1e-12)


# --------------------------------------------------------------------------------------------
# RANSAC initialisation


def test_initial_poses_ransac_with_outliers():
    cv2.setRNGSeed(0)
    B, N = 3, 100
    s = make_scene(B, N, seed=11)
    g = s["g"]
    x2d = s["uv"] + 0.5 * torch.randn(s["uv"].shape, generator=g, dtype=F64)
    outlier = torch.rand(B, N, generator=g) < 0.3
    x2d[outlier] = torch.rand(int(outlier.sum()), 2, generator=g, dtype=F64) * torch.tensor(IMAGE_WH, dtype=F64)
    w2d = torch.ones_like(x2d)
    w2d[2, 4:] = 0.0  # 4 weighted points < ransac_min_points
    T, valid = initial_poses_ransac(s["x3d"].float(), x2d.float(), w2d.float(), s["K"].float())
    assert T.dtype == torch.float32 and T.device == s["x3d"].device and T.shape == (B, 4, 4)
    assert valid.tolist() == [True, True, False]
    assert torch.isnan(T[2]).all()
    rot_deg, trans_m = errors_deg_m(T[:2], s["R"][:2], s["t"][:2])
    assert rot_deg.max() < 2.0 and trans_m.max() < 0.01
