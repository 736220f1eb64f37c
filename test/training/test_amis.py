"""EPro-PnP Monte Carlo pose loss with AMIS: log-integral accuracy, learning signal, gradients."""
import math

import pytest
import torch
from helpers.pnp_scene import F64, make_scene

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, perturb_pose, so3_exp
from pose_node.correspondence.pnp import PnPConfig, huber_delta, solve_pnp
from pose_node.training.amis import _ACG, AmisConfig, monte_carlo_pose_loss

QUADRATIC = PnPConfig(huber_relative_delta=1e9)
SO3_HAAR_LOG_VOLUME = math.log(8.0 * math.pi**2)  # volume of SO(3) in rotation-vector units


def solve_and_loss(s, x2d, w2d, seed, config=PnPConfig(), amis=AmisConfig()):
    """Solver from a perturbed start and the ground truth (as in training), then the loss."""
    B = x2d.shape[0]
    start = perturb_pose(Pose(s["R"], s["t"]), torch.tensor([0.01, -0.01, 0.02, 0.05, -0.05, 0.05], dtype=F64).expand(B, 6))
    T_init = torch.stack([start.matrix(), s["T_gt"]], 1)
    result = solve_pnp(s["x3d"], x2d.detach(), w2d.detach(), s["K"], T_init, config=config)
    delta = huber_delta(x2d, w2d, config.huber_relative_delta)
    loss, diag = monte_carlo_pose_loss(
        s["x3d"], x2d, w2d, s["K"], delta, result.T_camera_object, result.covariance, s["T_gt"],
        config=amis, generator=torch.Generator().manual_seed(seed))
    return loss, diag, result


def test_log_integral_agrees_with_laplace_and_scales_with_the_weights():
    """For a quadratic cost, log Z ~= -cost_min + 3 log(2 pi) + log|Sigma|/2 - log(8 pi^2).

    Doubling every weight multiplies the cost by 4 and the covariance by 1/4: with noiseless
    correspondences (cost_min = 0) log Z changes by log(4^-3) = -6 log 2.
    """
    B, N = 4, 48
    s = make_scene(B, N, seed=30)
    log_z = {}
    for scale, seed in ((1.0, 0), (2.0, 1)):  # different seeds: no common random numbers
        w2d = torch.full_like(s["uv"], scale)
        _, diag, result = solve_and_loss(s, s["uv"], w2d, seed, config=QUADRATIC)
        assert result.valid.all() and (result.cost < 1e-12).all()
        laplace = (-result.cost + 3 * math.log(2 * math.pi) + 0.5 * torch.logdet(result.covariance)
                   - SO3_HAAR_LOG_VOLUME)
        error = diag["log_integral"] - laplace
        assert error.abs().max() < 0.35 and error.mean().abs() < 0.2, error
        assert (diag["ess_fraction"] > 0.2).all()
        torch.testing.assert_close(diag["cost_gt"], torch.zeros(B, dtype=F64), atol=1e-10, rtol=0)
        log_z[scale] = diag["log_integral"]
    change = log_z[2.0] - log_z[1.0]
    assert (change + 6 * math.log(2)).abs().max() < 0.25, change
    assert (change.mean() + 6 * math.log(2)).abs() < 0.1


def test_rotation_proposal_has_the_solver_covariance_in_camera_axes():
    """The first ACG proposal built from (R_hat, Sigma), as a density of R = Exp(drot) @ R_hat
    (ROS convention: rotation vectors about the camera axes), has curvature Sigma^-1 at R_hat.

    (Away from the mode the ACG has Cauchy-like tails, so the curvature, not the sample
    covariance, is what must match the solver's Laplace covariance.)
    """
    R_hat = so3_exp(torch.tensor([[0.4, -1.1, 2.0]], dtype=F64))
    A = torch.tensor([[0.01, 0.0, 0.0], [0.012, 0.02, 0.0], [-0.01, 0.015, 0.04]], dtype=F64)
    sigma = A @ A.T  # correlated, anisotropic, a few degrees
    q_hat = Pose(R_hat, torch.zeros(1, 3, dtype=F64)).quaternion_xyzw()
    acg = _ACG.from_mean_covariance(q_hat, sigma[None], floor_rad=1e-6)
    g = torch.Generator().manual_seed(50)
    directions = torch.cat([torch.eye(3, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)])
    drot = 0.05 * directions @ A.T  # 0.05 standard deviations along each direction
    R = so3_exp(drot) @ R_hat
    q = Pose(R, torch.zeros(8, 3, dtype=F64)).quaternion_xyzw()[:, None]  # (S=8, B=1, 4)
    drop = acg.log_prob(q_hat[None]) - acg.log_prob(q)
    quadratic = 0.5 * (drot[:, None, :] @ torch.linalg.inv(sigma) @ drot[:, :, None]).reshape(8, 1)
    torch.testing.assert_close(drop, quadratic, rtol=0.02, atol=0)
    assert acg.log_prob(-q).sub(acg.log_prob(q)).abs().max() < 1e-9  # q and -q: the same rotation
    # The density is normalised w.r.t. the uniform probability on unit quaternions: E_uniform[p] = 1.
    wide = _ACG.from_mean_covariance(q_hat, torch.eye(3, dtype=F64)[None] * 0.5, floor_rad=1e-6)
    z = torch.randn(200000, 1, 4, generator=g, dtype=F64)
    uniform = z / z.norm(dim=-1, keepdim=True)
    assert abs(wide.log_prob(uniform).exp().mean().item() - 1.0) < 0.02


def outlier_scene():
    """Half the correspondences shifted by 15 px (a systematic error that biases the pose)."""
    B, N = 2, 48
    s = make_scene(B, N, seed=20)
    g = s["g"]
    x2d = s["uv"] + 0.5 * torch.randn(s["uv"].shape, generator=g, dtype=F64)
    inlier = torch.rand(B, N, generator=g) >= 0.5
    n_out = int((~inlier).sum())
    x2d[~inlier] = s["uv"][~inlier] + torch.tensor([15.0, 0.0], dtype=F64) + 2.0 * torch.randn(n_out, 2, generator=g, dtype=F64)
    return s, x2d, inlier


def test_loss_prefers_weights_on_consistent_correspondences():
    s, x2d, inlier = outlier_scene()
    uniform = torch.ones_like(x2d)
    on_inliers = inlier[..., None].to(F64).expand_as(x2d) * (uniform.sum() / inlier.sum() / 2)  # same total weight
    loss_uniform, _, _ = solve_and_loss(s, x2d, uniform, seed=0)
    loss_inliers, _, _ = solve_and_loss(s, x2d, on_inliers, seed=0)
    assert (loss_inliers < loss_uniform - 100.0).all(), (loss_inliers, loss_uniform)


def test_sgd_on_log_weights_lowers_the_loss_and_favours_inliers():
    s, x2d, inlier = outlier_scene()
    log_w = torch.zeros_like(x2d, requires_grad=True)
    optimizer = torch.optim.SGD([log_w], lr=0.003)
    losses, shares = [], []
    for step in range(6):
        w2d = log_w.exp()
        loss, _, _ = solve_and_loss(s, x2d, w2d, seed=step)
        losses.append(loss.detach())
        shares.append((w2d.detach() * inlier[..., None]).sum((1, 2)) / w2d.detach().sum((1, 2)))
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
    assert (losses[-1] < 0.1 * losses[0]).all(), losses
    assert (losses[-1] < losses[-2]).all()
    assert (shares[-1] > shares[0] + 0.05).all(), shares
    gap = log_w.detach()[inlier].mean() - log_w.detach()[~inlier].mean()
    assert gap > 0.2


def test_gradients_reach_the_correspondences_only_and_stay_per_element():
    s = make_scene(2, 32, seed=40)
    g = s["g"]
    x3d = s["x3d"].clone().requires_grad_(True)
    x2d = (s["uv"] + torch.randn(s["uv"].shape, generator=g, dtype=F64)).requires_grad_(True)
    w2d = (0.5 + torch.rand(s["uv"].shape, generator=g, dtype=F64)).requires_grad_(True)
    result = solve_pnp(x3d.detach(), x2d.detach(), w2d.detach(), s["K"], s["T_gt"][:, None])
    T_pred = result.T_camera_object.clone().requires_grad_(True)
    cov_pred = result.covariance.clone().requires_grad_(True)
    delta = huber_delta(x2d, w2d, 0.5)
    loss, diag = monte_carlo_pose_loss(x3d, x2d, w2d, s["K"], delta, T_pred, cov_pred, s["T_gt"],
                                       generator=torch.Generator().manual_seed(0))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss[0].backward()
    for tensor in (x3d, x2d, w2d):
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad[0].abs().sum() > 0
        assert (tensor.grad[1] == 0).all()  # element 1 does not depend on element 0's inputs
    assert T_pred.grad is None and cov_pred.grad is None  # the samples are detached
    assert not any(v.requires_grad for v in diag.values())


def test_invalid_solver_output_falls_back_without_nan():
    s = make_scene(2, 32, seed=41)
    w2d = torch.ones_like(s["uv"])
    result = solve_pnp(s["x3d"], s["uv"], w2d, s["K"], s["T_gt"][:, None])
    delta = huber_delta(s["uv"], w2d, 0.5)
    cov = result.covariance.clone()
    cov[0] = float("nan")  # element 0: default standard deviations
    T_pred = result.T_camera_object.clone()
    T_pred[1] = float("nan")  # element 1: centred on the ground truth instead
    loss, diag = monte_carlo_pose_loss(s["x3d"], s["uv"], w2d, s["K"], delta, T_pred, cov, s["T_gt"],
                                       generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss).all() and torch.isfinite(diag["log_integral"]).all()
    assert diag["proposal_fallback"].tolist() == [True, True]
    good, good_diag = monte_carlo_pose_loss(s["x3d"], s["uv"], w2d, s["K"], delta, result.T_camera_object,
                                            result.covariance, s["T_gt"], generator=torch.Generator().manual_seed(0))
    assert not good_diag["proposal_fallback"].any()
    # Noiseless data: the solution is the ground truth, so element 1 sees the same proposals.
    torch.testing.assert_close(loss[1], good[1], rtol=0, atol=1e-6)
    # A default proposal far wider than the posterior cannot beat the informed one (log Z is
    # underestimated when the proposals miss the mode: exclude invalid elements from training).
    assert loss[0] <= good[0] + 0.5 and diag["ess_fraction"][0] < good_diag["ess_fraction"][0]


def test_seeded_dtype_shapes_and_empty_batch():
    s = make_scene(2, 24, seed=42)
    w2d = torch.ones_like(s["uv"])
    result = solve_pnp(s["x3d"], s["uv"], w2d, s["K"], s["T_gt"][:, None])
    delta = huber_delta(s["uv"], w2d, 0.5)
    args = (s["x3d"], s["uv"], w2d, s["K"], delta, result.T_camera_object, result.covariance, s["T_gt"])
    a, _ = monte_carlo_pose_loss(*args, generator=torch.Generator().manual_seed(5))
    b, _ = monte_carlo_pose_loss(*args, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    small = AmisConfig(rounds=2, samples_per_round=64)
    loss32, _ = monte_carlo_pose_loss(*(v.float() for v in args), config=small, generator=torch.Generator().manual_seed(5))
    assert loss32.dtype == torch.float32 and loss32.device == s["x3d"].device and torch.isfinite(loss32).all()
    with pytest.raises(InvalidInputError, match=r"covariance_pred.*\(2, 3, 3\)"):
        monte_carlo_pose_loss(*args[:6], result.covariance[:, :3, :3], s["T_gt"])
    with pytest.raises(InvalidInputError, match="rounds"):
        AmisConfig(rounds=0)
    empty, diag = monte_carlo_pose_loss(*(v[:0] for v in args))
    assert empty.shape == (0,) and diag["ess_fraction"].shape == (0,)
