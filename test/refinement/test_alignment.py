"""The feature-metric LM: analytic gradient and Hessian against autograd, robust weights, inputs."""
from __future__ import annotations

import math

import pytest
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, perturb_pose, so3_exp
from pose_node.refinement.alignment import (
    AlignmentConfig, AlignmentProblem, _bilinear_rows, _Evaluator, _gather, align, barron_rho_and_weight,
)


def linear_problem(with_depth: bool) -> tuple[AlignmentProblem, torch.Tensor]:
    """Feature maps linear in the pixel position (so bilinear sampling and central differences are
    exact), a constant depth map, 2 objects x 2 views."""
    g = torch.Generator().manual_seed(0)
    B, V, N, C, s, h = 2, 2, 30, 5, 4, 32
    S = s * h
    u = torch.arange(h, dtype=torch.float64) * s + (s - 1) / 2.0
    vv, uu = torch.meshgrid(u, u, indexing="ij")
    a, b, c = (torch.randn(B, V, C, 1, 1, generator=g, dtype=torch.float64) for _ in range(3))
    maps = a * uu / S + b * vv / S + c
    T_world_object = Pose(so3_exp(0.3 * torch.randn(B, 3, generator=g, dtype=torch.float64)),
                          torch.tensor([[0.0, 0.0, 0.5], [0.01, -0.02, 0.45]], dtype=torch.float64)).matrix()
    points = 0.03 * torch.randn(B, V, N, 3, generator=g, dtype=torch.float64)
    K = torch.tensor([[200.0, 0, (S - 1) / 2], [0, 200.0, (S - 1) / 2], [0, 0, 1]], dtype=torch.float64).expand(B, V, 3, 3)
    T_crop_world = torch.eye(4, dtype=torch.float64).repeat(B, V, 1, 1)
    T_crop_world[:, 1, :3, :3] = so3_exp(torch.tensor([0.0, 0.2, 0.0], dtype=torch.float64))
    feats = torch.randn(B, V, N, C, generator=g, dtype=torch.float64)
    depth = torch.full((B, V, S, S), 0.48, dtype=torch.float64) if with_depth else None
    problem = AlignmentProblem(points, feats, torch.ones(B, V, N, dtype=torch.bool), maps, s, K, T_crop_world, depth)
    return problem, T_world_object


@pytest.mark.parametrize("with_depth", [False, True])
@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.0])
def test_analytic_gradient_matches_autograd(with_depth, alpha):
    problem, T = linear_problem(with_depth)
    evaluate = _Evaluator(problem, AlignmentConfig(robust_alpha=alpha, depth_robust_scale=1e3))
    _, _, H, grad, *_ = evaluate(T, True)
    delta = torch.zeros(T.shape[0], 6, dtype=torch.float64, requires_grad=True)
    cost, _ = evaluate(perturb_pose(Pose.from_matrix(T), delta).matrix(), False)
    (auto,) = torch.autograd.grad(cost.sum(), delta)
    torch.testing.assert_close(grad, auto, rtol=1e-6, atol=1e-8)


def test_hessian_is_gauss_newton():
    """At zero residual the exact Hessian of a least-squares cost is J^T W J."""
    problem, T = linear_problem(True)
    zero_residual_at(problem, T)
    evaluate = _Evaluator(problem, AlignmentConfig(robust_alpha=2.0))
    _, _, H, *_ = evaluate(T, True)
    jac = torch.autograd.functional.jacobian(
        lambda d: torch.autograd.grad(evaluate(perturb_pose(Pose.from_matrix(T), d).matrix(), False)[0].sum(), d,
                                      create_graph=True)[0], torch.zeros(T.shape[0], 6, dtype=torch.float64))
    exact = torch.stack([jac[b, :, b, :] for b in range(T.shape[0])])
    torch.testing.assert_close(H, exact, rtol=1e-5, atol=1e-6)


def zero_residual_at(problem: AlignmentProblem, T: torch.Tensor) -> None:
    """Make the template features (and the depth map) what the views show at ``T``."""
    ev = _Evaluator(problem, AlignmentConfig())
    _, p_crop = ev.points(T)
    K = problem.K_crop
    uv = torch.stack([K[..., 0, 0, None] * p_crop[..., 0] / p_crop[..., 2] + K[..., 0, 2, None],
                      K[..., 1, 1, None] * p_crop[..., 1] / p_crop[..., 2] + K[..., 1, 2, None]], -1)
    rows, w = _bilinear_rows(uv, problem.stride_px, 32, 32)
    problem.template_features = _gather(ev.features_rows, rows, w)
    if problem.observed_depth is not None:  # a plane at each point's depth is not possible: drop depth
        problem.observed_depth = None


def test_barron_weights_are_the_derivative_of_the_loss():
    sq = torch.linspace(0.0, 4.0, 50, dtype=torch.float64, requires_grad=True)
    for alpha in (2.0, 1.0, 0.0, -2.0):
        rho, weight = barron_rho_and_weight(sq, alpha, 0.7)
        (d,) = torch.autograd.grad(rho.sum(), sq)
        torch.testing.assert_close(weight, 2.0 * d)


def test_align_recovers_a_perturbed_pose_of_a_linear_problem():
    problem, T = linear_problem(False)
    zero_residual_at(problem, T)  # the true pose is the minimum
    start = perturb_pose(Pose.from_matrix(T), torch.tensor([[0.003, -0.002, 0.004, 0.02, -0.03, 0.01]] * 2, dtype=torch.float64)).matrix()
    result = align(problem, start, AlignmentConfig(max_iterations=50, robust_alpha=2.0))
    assert result.valid.all()
    assert float((result.T_world_object[:, :3, 3] - T[:, :3, 3]).norm(dim=1).max()) < 1e-4
    R_err = result.T_world_object[:, :3, :3].transpose(1, 2) @ T[:, :3, :3]
    angle = torch.acos(((R_err.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    assert float(angle.max()) < math.radians(0.05)


def test_wrong_shapes_are_named():
    problem, T = linear_problem(False)
    with pytest.raises(InvalidInputError, match="T_init"):
        align(problem, T[:1])
    with pytest.raises(InvalidInputError, match="point_valid"):
        AlignmentProblem(problem.points_obj, problem.template_features, problem.point_valid[:, :1], problem.observed_features,
                         4, problem.K_crop, problem.T_crop_world)


def test_warp_to_crops_matches_the_supersampled_crop():
    """The homography + pyramid crop of the refinement shows what the detector's crop shows."""
    import cv2
    import numpy as np

    from pose_node.core.crop import crop_camera, crop_images
    from pose_node.refinement.problem import warp_to_crops

    H, W = 480, 640
    yy, xx = np.mgrid[0:H, 0:W]
    image = cv2.GaussianBlur(np.stack([(xx * 0.3) % 255, (yy * 0.4) % 255, ((xx + yy) * 0.2) % 255], -1).astype(np.uint8), (0, 0), 6)
    K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
    for box in ([300, 200, 340, 240], [100, 60, 500, 440], [60, 20, 620, 470]):  # zoom in, out by ~3 and ~4.5
        R, f = crop_camera(K, np.array(box, dtype=float).reshape(2, 2), 128, 0.1)
        ours = warp_to_crops(image, K, R[None], np.array([f]), 128)[0].astype(float)
        ref = crop_images(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, torch.ones(1, H, W, dtype=torch.bool),
                          torch.from_numpy(K), torch.from_numpy(R[None]), torch.tensor([f]), 128, (0, 0, 0))
        ref = ref[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(ours - ref)[8:-8, 8:-8].mean() < 1.0, box


def test_sample_map_is_grid_samples_bilinear_border_rule():
    """Template features are read with the solver's sampler; it is torch's bilinear grid_sample
    (border padding, align_corners=False) under the cell-centre convention, edges included."""
    import torch.nn.functional as F

    from pose_node.refinement.alignment import sample_map

    features = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))
    s = 4
    uv = torch.rand(300, 2, generator=torch.Generator().manual_seed(1)) * (s * 8 + 4) - 2  # a little outside too
    grid = ((uv + 0.5) * (2.0 / (s * 8)) - 1.0)[None, :, None]
    reference = F.grid_sample(features[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, :, 0].T
    torch.testing.assert_close(sample_map(features, uv, s), reference, atol=1e-5, rtol=1e-5)
