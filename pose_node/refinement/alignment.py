"""Feature-metric Levenberg-Marquardt over one world pose per object, all views at once (ROS-free).

The problem (built by :mod:`pose_node.refinement.problem`): for each of B objects and each of its
V views, N object-frame surface points ``p_obj`` lifted from a render at the previous pose, each
with the render's feature ``f_t`` at that point, and the observed feature map of the view's crop
camera. The residual of point n in view v is

    r = F_v(pi_v(T_crop_world_v @ T_world_obj @ p_obj)) - f_t          (C,)

with ``F_v`` sampled bilinearly at the projection. In RGB-D mode each point also has a depth
residual ``(z_pred - z_obs(u)) / depth_sigma_m``: predicted minus observed crop-frame depth at the
projection (the observed depth is read at the nearest pixel and treated as constant during a
step, as projective ICP does, so depth edges do not enter the Jacobian).

Pose updates follow the ROS covariance convention of :mod:`pose_node.core.geometry` in the world
frame: ``R <- Exp(dtheta) R``, ``t <- t + dt``. Jacobians are analytic: the feature part chains the
observed map's spatial gradient (central differences, per pixel) with the projection's Jacobian,
``J = dF/du @ du/dp_crop @ R_crop_world @ [I, -[R p_obj]x]``.

Robust loss: Barron's general loss on the per-point residual norm (``alpha`` 1 ~ pseudo-Huber,
0 ~ Cauchy), solved by iteratively reweighted least squares. The loop is the shared
:func:`pose_node.core.least_squares.solve_damped_least_squares` (this module is the cost); its damping follows AlignPose:
``lambda`` starts at ``lambda_init``, divided by 10 after an accepted step and multiplied by 10
after a rejected one; a problem stops when a step moves less than ``stop_dt_m`` and
``stop_drot_deg`` or lowers the cost by less than ``stop_relative_decrease``, when ``lambda`` exceeds ``lambda_max``, or after ``max_iterations``.

Covariance at the optimum: ``sigma^2 (J^T W J)^-1`` with ``sigma^2`` the weighted residual variance
per residual component; the caller scales it (calibration, see the refinement stage).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose
from pose_node.core.least_squares import DampedLeastSquaresOptions, NormalEquations, solve_damped_least_squares


_LAMBDA_MIN = 1e-9  # damping floor
_DIAGONAL_FLOOR = 1e-9  # Hessian diagonal floor in the damping term (a direction without information)
_RIDGE = 1e-12  # keeps the damped system invertible


@dataclass(frozen=True)
class AlignmentConfig:
    """Solver settings (module docstring).

    Attributes:
        max_iterations: LM iterations per call.
        lambda_init, lambda_max: Marquardt damping start and give-up value.
        stop_dt_m, stop_drot_deg: convergence: an accepted step smaller than both.
        stop_relative_decrease: convergence: an accepted step that lowers the cost by less than
            this share.
        robust_alpha: Barron shape (2: least squares, 1: pseudo-Huber, 0: Cauchy).
        robust_scale: Barron scale c on the feature residual norm (unit features: |r| in [0, 2]).
        depth_sigma_m: depth residual unit, metres (RGB-D).
        depth_weight: weight of the depth term against the feature term.
        depth_robust_scale: Barron scale of the depth residual, in ``depth_sigma_m`` units.
        inlier_threshold: a point agrees with the observation when its residual norm is below this.
    """

    max_iterations: int = 15
    lambda_init: float = 1e-2
    lambda_max: float = 1e4
    stop_dt_m: float = 3e-4
    stop_drot_deg: float = 0.03
    stop_relative_decrease: float = 1e-4
    robust_alpha: float = 0.0
    robust_scale: float = 0.5
    depth_sigma_m: float = 0.004
    depth_weight: float = 1.0
    depth_robust_scale: float = 2.0
    inlier_threshold: float = 0.6

    def __post_init__(self) -> None:
        if self.max_iterations < 0:
            raise InvalidInputError(f"AlignmentConfig.max_iterations: expected >= 0, got {self.max_iterations}")
        for name in ("lambda_init", "lambda_max", "robust_scale", "depth_sigma_m", "depth_robust_scale", "inlier_threshold"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"AlignmentConfig.{name}: expected > 0, got {getattr(self, name)}")
        if self.robust_alpha > 2 or self.depth_weight < 0:
            raise InvalidInputError(f"AlignmentConfig: need robust_alpha <= 2 and depth_weight >= 0, got {self.robust_alpha}, {self.depth_weight}")


@dataclass
class AlignmentProblem:
    """B alignment problems with V view slots of N points each (padding: ``point_valid`` False).

    Attributes:
        points_obj: (B, V, N, 3) metres, object frame.
        template_features: (B, V, N, C) the render's features at the points.
        point_valid: (B, V, N) bool.
        observed_features: (B, V, C, h, w) the observation's feature map in each crop camera.
        stride_px: crop pixels per feature cell (cell j is centred on pixel ``s j + (s - 1) / 2``).
        K_crop: (B, V, 3, 3) crop camera intrinsics, pixels.
        T_crop_world: (B, V, 4, 4) metres.
        observed_depth: (B, V, S, S) crop-frame depth of the observation, metres (NaN: none), or None.
    """

    points_obj: torch.Tensor
    template_features: torch.Tensor
    point_valid: torch.Tensor
    observed_features: torch.Tensor
    stride_px: int
    K_crop: torch.Tensor
    T_crop_world: torch.Tensor
    observed_depth: torch.Tensor | None = None

    def __post_init__(self) -> None:
        B, V, N, _ = self.points_obj.shape
        C = self.template_features.shape[-1]
        expected = {
            "template_features": (B, V, N, C), "point_valid": (B, V, N), "K_crop": (B, V, 3, 3), "T_crop_world": (B, V, 4, 4),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise InvalidInputError(f"AlignmentProblem.{name}: expected {shape}, got {tuple(getattr(self, name).shape)}")
        if self.observed_features.ndim != 5 or tuple(self.observed_features.shape[:3]) != (B, V, C):
            raise InvalidInputError(f"AlignmentProblem.observed_features: expected ({B}, {V}, {C}, h, w), got {tuple(self.observed_features.shape)}")
        if self.observed_depth is not None and tuple(self.observed_depth.shape[:2]) != (B, V):
            raise InvalidInputError(f"AlignmentProblem.observed_depth: expected ({B}, {V}, S, S), got {tuple(self.observed_depth.shape)}")


@dataclass
class AlignmentResult:
    """Solutions of B problems.

    Attributes:
        T_world_object: (B, 4, 4) float64.
        covariance: (B, 6, 6) float64, ROS convention, world axes (unscaled).
        mean_cost: (B,) robust cost per valid point (lower: the render explains the views better).
        inlier_share: (B,) share of valid points whose feature residual is below the threshold.
        view_inlier_share: (B, V) the same per view (0 for views without points).
        points_used: (B,) valid points at the solution.
        iterations: (B,) LM iterations run.
        valid: (B,) finite pose, at least 6 points, invertible Hessian.
    """

    T_world_object: torch.Tensor
    covariance: torch.Tensor
    mean_cost: torch.Tensor
    inlier_share: torch.Tensor
    view_inlier_share: torch.Tensor
    points_used: torch.Tensor
    iterations: torch.Tensor
    valid: torch.Tensor


def barron_rho_and_weight(sq: torch.Tensor, alpha: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Barron's general robust loss of squared residuals and its IRLS weight.

    Args:
        sq: (...) squared residual norms. alpha: shape (<= 2). scale: c.
    Returns:
        rho (...) and weight (...) = d rho / d (sq / 2): least-squares cost ``0.5 w r^2`` locally.
    """
    x = sq / (scale * scale)
    if alpha == 2.0:
        return 0.5 * x, torch.full_like(sq, 1.0 / (scale * scale))
    if alpha == 0.0:
        return torch.log1p(0.5 * x), 1.0 / (scale * scale) / (0.5 * x + 1.0)
    b = abs(alpha - 2.0)
    base = x / b + 1.0
    rho = (b / alpha) * (base.pow(0.5 * alpha) - 1.0)
    return rho, base.pow(0.5 * alpha - 1.0) / (scale * scale)


def gradient_maps(features: torch.Tensor, stride_px: int) -> torch.Tensor:
    """Stack a feature map with its spatial derivatives per crop pixel (central differences).

    Args:
        features: (..., C, h, w).
    Returns:
        (..., 3 C, h, w): ``[F, dF/du, dF/dv]``.
    """
    du, dv = torch.gradient(features, dim=(-1, -2))
    return torch.cat([features, du / stride_px, dv / stride_px], dim=-3)


def sample_map(features: torch.Tensor, uv: torch.Tensor, stride_px: int) -> torch.Tensor:
    """Bilinear features of one map at crop pixels, with the solver's own sampler (so a template
    feature and the observation sampled at the same pixel agree exactly).

    Args:
        features: (C, h, w). uv: (N, 2) crop pixels.
    Returns:
        (N, C).
    """
    C, h, w = features.shape
    rows, weights = _bilinear_rows(uv.to(features.dtype)[None, None], stride_px, h, w)
    return _gather(features.reshape(C, h * w).T.contiguous(), rows, weights)[0, 0]


def _bilinear_rows(uv: torch.Tensor, stride_px: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and weights of the 4 cells around each crop pixel (border-clamped, as grid_sample's
    ``border`` padding with ``align_corners=False``).

    Args:
        uv: (B, V, N, 2) crop pixels of B x V maps of h x w cells stored as consecutive rows.
    Returns:
        rows (B, V, N, 4) long and weights (B, V, N, 4).
    """
    B, V, N, _ = uv.shape
    x = ((uv[..., 0] - (stride_px - 1) / 2.0) / stride_px).clamp(0, w - 1)
    y = ((uv[..., 1] - (stride_px - 1) / 2.0) / stride_px).clamp(0, h - 1)
    x0 = x.floor().clamp(max=max(w - 2, 0))
    y0 = y.floor().clamp(max=max(h - 2, 0))
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    base = (torch.arange(B * V, device=uv.device) * (h * w)).reshape(B, V, 1)
    rows = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], -1) + base[..., None]
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    return rows, weights


def _gather(table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation from a (R, C) row table: (..., 4) rows and weights -> (..., C)."""
    rows_flat = rows.reshape(-1, 4)
    w = weights.reshape(-1, 4, 1).to(table.dtype)
    # Four row gathers and fused multiply-adds: far less memory traffic than stacking the corners.
    out = table.index_select(0, rows_flat[:, 0]) * w[:, 0]
    for k in range(1, 4):
        out.addcmul_(table.index_select(0, rows_flat[:, k]), w[:, k])
    return out.reshape(*rows.shape[:-1], table.shape[-1])


class _Evaluator:
    """Residuals, cost and normal equations of a problem at given poses (precomputed maps)."""

    def __init__(self, problem: AlignmentProblem, config: AlignmentConfig) -> None:
        self.p = problem
        self.config = config
        B, V, C, h, w = problem.observed_features.shape
        self.shape = (B, V, C, h, w)
        # Channels-last rows (one per map cell) for gather-based bilinear sampling: on the CPU,
        # index_select of whole rows is several times faster than grid_sample with many channels,
        # and a cost-only evaluation reads the features without their gradients.
        maps = gradient_maps(problem.observed_features, problem.stride_px).reshape(B * V, 3 * C, h * w).transpose(1, 2)
        self.features_rows = maps[..., :C].reshape(B * V * h * w, C).contiguous()
        self.gradient_rows = maps[..., C:].reshape(B * V * h * w, 2 * C).contiguous()
        self.dtype = problem.observed_features.dtype

    def points(self, T_world_object: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Object points in the world (B, V, N, 3) and crop frames (B, V, N, 3)."""
        T = T_world_object.to(self.dtype)
        p_world = self.p.points_obj @ T[:, None, :3, :3].transpose(-1, -2) + T[:, None, None, :3, 3]
        Tc = self.p.T_crop_world.to(self.dtype)
        p_crop = p_world @ Tc[..., :3, :3].transpose(-1, -2) + Tc[..., None, :3, 3]
        return p_world, p_crop

    def __call__(self, T_world_object: torch.Tensor, with_jacobian: bool):
        B, V, C, h, w = self.shape
        cfg = self.config
        p_world, p_crop = self.points(T_world_object)
        K = self.p.K_crop.to(self.dtype)
        z = p_crop[..., 2]
        front = z > 1e-4
        zs = torch.where(front, z, torch.ones_like(z))
        fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
        u = fx * p_crop[..., 0] / zs + K[..., 0, 2, None]
        v = fy * p_crop[..., 1] / zs + K[..., 1, 2, None]
        uv = torch.stack([u, v], -1)
        S = self.p.stride_px
        # Inside the hull of the cell centres: beyond it the sampled map is clamped (flat) while its
        # gradient is not, so those points would pull without lowering the cost.
        lo = (S - 1) / 2.0
        inside = (u >= lo) & (u <= lo + S * (w - 1)) & (v >= lo) & (v <= lo + S * (h - 1))
        valid = self.p.point_valid & front & inside
        rows, weights = _bilinear_rows(uv, S, h, w)
        r = _gather(self.features_rows, rows, weights) - self.p.template_features
        sq = (r * r).sum(-1)
        rho, wgt = barron_rho_and_weight(sq, cfg.robust_alpha, cfg.robust_scale)
        vf = valid.to(self.dtype)
        cost = (rho * vf).flatten(1).sum(1)
        n_points = vf.flatten(1).sum(1)
        depth_terms = None
        if self.p.observed_depth is not None and cfg.depth_weight > 0:
            depth_terms = self._depth(uv, z, valid)
            rd, wd, rho_d, valid_d = depth_terms
            cost = cost + cfg.depth_weight * (rho_d * valid_d).flatten(1).sum(1)
        if not with_jacobian:
            return cost, n_points
        # dp_crop/dxi = R_crop_world @ [I, -[a]x] with a = R p_obj; row i of -M [a]x is a x M_i,
        # so every Jacobian below is built from cross products instead of tiny matmuls.
        T = T_world_object.to(self.dtype)
        arm = p_world - T[:, None, None, :3, 3]
        R_cw = self.p.T_crop_world.to(self.dtype)[:, :, None, :3, :3].expand(B, V, arm.shape[2], 3, 3)
        J_pc_xi = torch.cat([R_cw, torch.cross(arm[..., None, :].expand_as(R_cw), R_cw, dim=-1)], -1)  # (B, V, N, 3, 6)
        inv_z = 1.0 / zs
        x_z, y_z = p_crop[..., 0] * inv_z, p_crop[..., 1] * inv_z
        # du/dxi = fx / z (dx/dxi - x/z dz/dxi), dv/dxi likewise.
        J_u = (fx * inv_z)[..., None] * (J_pc_xi[..., 0, :] - x_z[..., None] * J_pc_xi[..., 2, :])
        J_v = (fy * inv_z)[..., None] * (J_pc_xi[..., 1, :] - y_z[..., None] * J_pc_xi[..., 2, :])
        J_uv_xi = torch.stack([J_u, J_v], -2).reshape(B, -1, 2, 6)  # (B, V N, 2, 6)
        G = _gather(self.gradient_rows, rows, weights).reshape(B, -1, 2, C)  # dF/du, dF/dv
        wv = (wgt * vf).reshape(B, -1)
        GtG = torch.einsum("bpic,bpjc->bpij", G, G) * wv[..., None, None]
        Gtr = torch.einsum("bpic,bpc->bpi", G, r.reshape(B, -1, C)) * wv[..., None]
        H = torch.einsum("bpik,bpij,bpjl->bkl", J_uv_xi, GtG, J_uv_xi)
        g = torch.einsum("bpik,bpi->bk", J_uv_xi, Gtr)
        sq_weighted = (wgt * sq * vf).flatten(1).sum(1)
        n_res = n_points * C
        if depth_terms is not None:
            rd, wd, _, valid_d = depth_terms
            J_d = (J_pc_xi[..., 2, :] / cfg.depth_sigma_m).reshape(B, -1, 6)
            wdv = (cfg.depth_weight * wd * valid_d).reshape(B, -1)
            H = H + torch.einsum("bpk,bp,bpl->bkl", J_d, wdv, J_d)
            g = g + torch.einsum("bpk,bp->bk", J_d, wdv * rd.reshape(B, -1))
            sq_weighted = sq_weighted + (wdv * rd.reshape(B, -1) ** 2).sum(1)
            n_res = n_res + valid_d.flatten(1).sum(1)
        inliers = valid & (sq < cfg.inlier_threshold ** 2)
        view_share = inliers.to(self.dtype).sum(-1) / vf.sum(-1).clamp_min(1.0)
        share = inliers.to(self.dtype).flatten(1).sum(1) / n_points.clamp_min(1.0)
        return cost, n_points, H.double(), g.double(), sq_weighted.double(), n_res.double(), share, view_share

    def _depth(self, uv: torch.Tensor, z: torch.Tensor, valid: torch.Tensor):
        cfg = self.config
        depth = self.p.observed_depth
        B, V, Sd, _ = depth.shape
        col = uv[..., 0].round().clamp(0, Sd - 1).long()
        row = uv[..., 1].round().clamp(0, Sd - 1).long()
        z_obs = depth.reshape(B, V, -1).gather(2, row * Sd + col).to(self.dtype)
        ok = valid & torch.isfinite(z_obs)
        rd = torch.where(ok, (z - z_obs) / cfg.depth_sigma_m, torch.zeros_like(z))
        rho, wd = barron_rho_and_weight(rd * rd, cfg.robust_alpha, cfg.depth_robust_scale)
        return rd, wd, rho, ok.to(self.dtype)


def _solver_options(config: AlignmentConfig) -> DampedLeastSquaresOptions:
    """AlignPose's loop: the full batch with finished problems masked, only the cost at a candidate
    (the features' Jacobian is the expensive part), a strict decrease to accept, lambda divided by 10
    and floored at 1e-9, the diagonal floored at 1e-9 plus a 1e-12 ridge, an LU solve."""
    return DampedLeastSquaresOptions(
        max_iterations=config.max_iterations, lambda_init=config.lambda_init, lambda_max=config.lambda_max,
        lambda_min=_LAMBDA_MIN, lambda_accept_divisor=10.0, lambda_reject_factor=10.0,
        diagonal_floor=_DIAGONAL_FLOOR, ridge=_RIDGE, linear_solver="lu", accept_equal_cost=False,
        stop_dt_m=config.stop_dt_m, stop_drot_rad=math.radians(config.stop_drot_deg),
        stop_relative_decrease=config.stop_relative_decrease, compact=False, linearize_candidates=False)


def align(problem: AlignmentProblem, T_init: torch.Tensor, config: AlignmentConfig = AlignmentConfig()) -> AlignmentResult:
    """Levenberg-Marquardt from ``T_init`` (module docstring).

    Args:
        problem: B problems.
        T_init: (B, 4, 4) initial ``T_world_object``, metres.
    Returns:
        :class:`AlignmentResult` (float64 poses and covariances on ``T_init``'s device).
    Raises:
        InvalidInputError: ``T_init`` has the wrong shape.
    """
    B = problem.points_obj.shape[0]
    if tuple(T_init.shape) != (B, 4, 4):
        raise InvalidInputError(f"T_init: expected ({B}, 4, 4), got {tuple(T_init.shape)}")
    evaluate = _Evaluator(problem, config)

    def cost_fn(pose: Pose, index: torch.Tensor | None, with_system: bool) -> NormalEquations:
        # masked (not compact) iteration: every call covers the whole batch, index is always None
        if with_system:
            cost, _, H, g, *_ = evaluate(pose.matrix(), True)
            return NormalEquations(cost, H, g)
        return NormalEquations(evaluate(pose.matrix(), False)[0])

    solution = solve_damped_least_squares(cost_fn, Pose.from_matrix(T_init.double()), _solver_options(config))
    T, iterations = solution.pose.matrix(), solution.iterations
    cost, n_points, H, g, sq_weighted, n_res, share, view_share = evaluate(T, True)
    eye = torch.eye(6, dtype=torch.float64, device=T.device)
    sigma2 = sq_weighted / (n_res - 6.0).clamp_min(1.0)
    # A continuous symmetry leaves a direction without information: the tiny ridge keeps the
    # inverse finite and that direction's variance huge, which is what it should be.
    ridge = 1e-9 * torch.diagonal(H, dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12)
    cov = torch.linalg.inv(H + ridge[:, None, None] * eye) * sigma2[:, None, None]
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    valid = torch.isfinite(T).flatten(1).all(1) & torch.isfinite(cov).flatten(1).all(1) & (n_points >= 6)
    mean_cost = (cost / n_points.clamp_min(1.0)).double()
    return AlignmentResult(T, cov, mean_cost, share.double(), view_share.double(), n_points.long(), iterations, valid)


__all__ = ["AlignmentConfig", "AlignmentProblem", "AlignmentResult", "align", "barron_rho_and_weight", "gradient_maps", "sample_map"]
