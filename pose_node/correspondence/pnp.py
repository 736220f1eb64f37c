"""Probabilistic PnP (EPro-PnP, Chen et al., CVPR 2022): a batched Levenberg-Marquardt solver.

The pose ``T_camera_object`` maximises the likelihood ``exp(-cost)`` of weighted 2D-3D
correspondences, with the robust cost of EPro-PnP's ``AdaptiveHuberPnPCost``::

    cost = sum_n sum_{k in (u, v)} huber(w2d[n, k] * (uv_proj[n, k] - x2d[n, k]), delta)
         + sum_n huber(r_depth[n], delta)                          (RGB-D only, see below)
    huber(r, delta) = 0.5 r^2            if |r| <= delta
                      delta (|r| - delta / 2)  otherwise

so ``w2d`` is an inverse standard deviation in 1/pixels and ``cost`` is a negative log-likelihood
(up to a constant). The solver minimises it with Gauss-Newton steps on the IRLS-Huber
Hessian ``J^T W J`` and Marquardt damping (the loop is the shared
:func:`pose_node.core.least_squares.solve_damped_least_squares`; this module is the cost); the covariance of the pose is the inverse of that
Hessian at the optimum (the Laplace approximation the Monte Carlo loss of
:mod:`pose_node.training.amis` starts from).

Conventions:
- Camera: OpenCV pinhole ``K``, x right, y down, z forward, pixel centres at integer
  coordinates: ``u = fx x/z + s y/z + cx``, ``v = fy y/z + cy`` (``K``'s last row is (0, 0, 1)).
- Pose perturbation and covariance: the ROS convention of :mod:`pose_node.core.geometry`,
  ``delta = (dx, dy, dz, drot_x, drot_y, drot_z)`` in metres and radians about the camera axes,
  ``R = Exp(drot) @ R_hat``, ``t = t_hat + dt``; covariances are 6x6 in that order.
- Points closer than ``min_depth_m`` are projected as if they were at ``min_depth_m`` (a finite,
  large residual instead of a division by zero or a point behind the camera seen in front).

The cost itself as a differentiable function of many poses (what training's Monte Carlo loss
integrates) is :func:`pose_node.training.pnp_cost.pnp_cost`; the solver evaluates it through
:func:`pnp_residuals`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose
from pose_node.core.least_squares import DampedLeastSquaresOptions, NormalEquations, solve_damped_least_squares

logger = logging.getLogger(__name__)

_SOLVE_DTYPE = torch.float64
_LAMBDA_ACCEPT_FACTOR = 0.1  # Marquardt: shrink the damping after an accepted step ...
_LAMBDA_REJECT_FACTOR = 10.0  # ... and grow it after a rejected one


@dataclass(frozen=True)
class PnPConfig:
    """Settings of :func:`solve_pnp` and :func:`initial_poses_ransac`.

    Attributes:
        max_iterations: LM iterations (training uses about 5, test time about 10).
        huber_relative_delta: EPro-PnP's adaptive Huber threshold,
            ``delta = relative * mean(w2d) * std(x2d)`` (see :func:`huber_delta`); unitless.
        depth_weight: weight of the depth residuals relative to the 2D weights (see
            :func:`pose_node.training.pnp_cost.pnp_cost`).
        lambda_init: initial Marquardt damping (``H + lambda diag(H)``), unitless.
        lambda_max: an element whose damping grows past this stops iterating (no descent left).
        stop_dt_m: an accepted step shorter than this in translation (metres) ...
        stop_drot_rad: ... and than this in rotation (radians) ends the iterations of an element.
        min_depth_m: points closer to the camera plane than this count as behind the camera.
        min_points: fewest correspondences with a positive weight for a valid solution.
        ransac_reprojection_px: RANSAC inlier threshold, pixels.
        ransac_iterations: RANSAC iterations.
        ransac_min_points: fewest selected points (and RANSAC inliers) for a RANSAC pose.
        ransac_confidence: RANSAC's early-stop confidence, in (0, 1).
        ransac_min_weight_fraction: RANSAC uses the points whose mean weight is above this
            fraction of the element's largest mean weight.
    """

    max_iterations: int = 10
    huber_relative_delta: float = 0.5
    depth_weight: float = 1.0
    lambda_init: float = 1e-3
    lambda_max: float = 1e6
    stop_dt_m: float = 1e-5
    stop_drot_rad: float = 1e-5
    min_depth_m: float = 1e-3
    min_points: int = 4
    ransac_reprojection_px: float = 4.0
    ransac_iterations: int = 100
    ransac_min_points: int = 6
    ransac_confidence: float = 0.99
    ransac_min_weight_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.max_iterations < 0:
            raise InvalidInputError(f"max_iterations must be >= 0, got {self.max_iterations}")
        if not 0.0 < self.lambda_init <= self.lambda_max:
            raise InvalidInputError(
                f"need 0 < lambda_init <= lambda_max, got lambda_init={self.lambda_init}, "
                f"lambda_max={self.lambda_max}")
        if self.min_depth_m <= 0.0:
            raise InvalidInputError(f"min_depth_m must be > 0, got {self.min_depth_m}")
        if self.min_points < 3 or self.ransac_min_points < 4:
            raise InvalidInputError(
                f"need min_points >= 3 and ransac_min_points >= 4, got min_points={self.min_points}, "
                f"ransac_min_points={self.ransac_min_points}")
        if not 0.0 < self.ransac_confidence < 1.0:
            raise InvalidInputError(f"ransac_confidence must be in (0, 1), got {self.ransac_confidence}")


_DEFAULT_MIN_DEPTH_M = PnPConfig.min_depth_m


@dataclass(frozen=True)
class PnPResult:
    """Output of :func:`solve_pnp` (B batch elements; dtype and device of the inputs).

    Attributes:
        T_camera_object: (B, 4, 4) pose, metres; meaningless (possibly NaN) where not ``valid``.
        cost: (B,) robust cost at the optimum (negative log-likelihood, unitless).
        covariance: (B, 6, 6) ``(J^T W J)^-1`` at the optimum, order ``(x, y, z, rot_x, rot_y,
            rot_z)``, metres and radians about the camera axes; NaN where not ``valid``.
        valid: (B,) bool: finite inputs and result, at least ``min_points`` weighted points, all of
            them in front of the camera, and a positive definite Hessian.
        hypothesis: (B,) long, index of the initial hypothesis that won (lowest final cost).
        iterations: (B,) long, LM iterations the winning hypothesis ran.
    """

    T_camera_object: torch.Tensor
    cost: torch.Tensor
    covariance: torch.Tensor
    valid: torch.Tensor
    hypothesis: torch.Tensor
    iterations: torch.Tensor


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple) -> None:
    """Raise InvalidInputError unless ``tensor.shape`` matches ``expected`` (None = any size)."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise InvalidInputError(f"{name} must have shape {want}, got {shape}")


def _check_correspondences(x3d, x2d, w2d, K, depth_m) -> tuple[int, int]:
    """Validate (B, N, 3), (B, N, 2), (B, N, 2), (B, 3, 3) and optional (B, N). Returns (B, N)."""
    _check_shape("x3d", x3d, (None, None, 3))
    B, N = x3d.shape[:2]
    _check_shape("x2d", x2d, (B, N, 2))
    _check_shape("w2d", w2d, (B, N, 2))
    _check_shape("K", K, (B, 3, 3))
    if depth_m is not None:
        _check_shape("depth_m", depth_m, (B, N))
    for name, tensor in (("x3d", x3d), ("x2d", x2d), ("w2d", w2d), ("K", K)):
        if not tensor.is_floating_point():
            raise InvalidInputError(f"{name} must be a floating point tensor, got {tensor.dtype}")
    return B, N


# --------------------------------------------------------------------------------------------
# cost


def huber_delta(x2d: torch.Tensor, w2d: torch.Tensor, relative_delta: float) -> torch.Tensor:
    """EPro-PnP's adaptive Huber threshold (``AdaptiveHuberPnPCost.set_param``).

    ``delta = relative_delta * mean(w2d) * sqrt(sum_xy var_n(x2d))``: the spread of the image
    points in pixels times the mean weight, i.e. in units of the weighted residuals.

    Args:
        x2d: (B, N, 2) image points, pixels.
        w2d: (B, N, 2) weights, 1/pixels.
        relative_delta: unitless factor.
    Returns:
        (B,) thresholds (differentiable w.r.t. ``x2d`` and ``w2d``).
    Raises:
        InvalidInputError: on wrong shapes.
    """
    _check_shape("x2d", x2d, (None, None, 2))
    _check_shape("w2d", w2d, tuple(x2d.shape))
    spread_px = x2d.var(dim=-2).sum(dim=-1).sqrt()
    return relative_delta * w2d.mean(dim=(-2, -1)) * spread_px


def _depth_terms(depth_m, w2d, K, depth_weight):
    """Depth residual coefficient (B, N) and sanitized observed depth (B, N) (coefficient 0 = none).

    ``r_z = coef * (z - depth)`` with ``coef = depth_weight * mean_xy(w2d) * fx / depth``: a depth
    error converted to pixels (a point at depth z moving by dz along a ray at unit angle moves
    by about ``fx dz / z`` pixels), so that the 2D weights apply to it.
    """
    has_depth = torch.isfinite(depth_m) & (depth_m > 0)
    depth = torch.where(has_depth, depth_m, torch.ones_like(depth_m))
    coef = depth_weight * w2d.mean(-1) * K[:, None, 0, 0] / depth
    return torch.where(has_depth, coef, torch.zeros_like(coef)), depth


# --------------------------------------------------------------------------------------------
# residuals and analytic Jacobians (planes layout: components along dim 1, points along dim 2)


@dataclass(frozen=True)
class _Problems:
    """E problems in the planes layout used by the solver kernels.

    Attributes: X (E, 3, N) object points; x2d_c (E, 2, N) image points minus the principal
    point; w (E, 2, N) weights; K (E, 3, 3); delta (E,); depth_coef, depth (E, 1, N) or None.
    """

    X: torch.Tensor
    x2d_c: torch.Tensor
    w: torch.Tensor
    K: torch.Tensor
    delta: torch.Tensor
    depth_coef: torch.Tensor | None
    depth: torch.Tensor | None

    @classmethod
    def make(cls, x3d, x2d, w2d, K, delta, depth_coef, depth) -> "_Problems":
        return cls(
            X=x3d.transpose(1, 2).contiguous(),
            x2d_c=(x2d - K[:, None, :2, 2]).transpose(1, 2).contiguous(),
            w=w2d.transpose(1, 2).contiguous(),
            K=K, delta=delta,
            depth_coef=None if depth_coef is None else depth_coef[:, None].contiguous(),
            depth=None if depth is None else depth[:, None].contiguous(),
        )

    def _map(self, fn) -> "_Problems":
        fields = (self.X, self.x2d_c, self.w, self.K, self.delta, self.depth_coef, self.depth)
        return _Problems(*(None if v is None else fn(v) for v in fields))

    def select(self, idx: torch.Tensor) -> "_Problems":
        """The problems at indices idx (M,)."""
        return self._map(lambda v: v.index_select(0, idx))

    def repeat(self, H: int) -> "_Problems":
        """Each problem H times in a row (hypotheses of one element are adjacent)."""
        return self._map(lambda v: v.repeat_interleave(H, dim=0))


def _project(R, t, P: _Problems, min_depth_m: float):
    """Rotated points q (E, 3, N), depth z and clamped inverse depth (E, 1, N), projections
    relative to the principal point uv_c (E, 2, N) and residuals r (E, C, N), C = 2 or 3 (+ depth).
    """
    q = R @ P.X
    p = q + t[..., None]
    z = p[:, 2:3]
    inv_z = 1.0 / z.clamp_min(min_depth_m)
    uv_c = (P.K[:, :2, :2] @ p[:, :2]) * inv_z
    r = P.w * (uv_c - P.x2d_c)
    if P.depth_coef is not None:
        r = torch.cat([r, P.depth_coef * (z - P.depth)], 1)
    return q, z, inv_z, uv_c, r


def _fill_jacobian(out, q, z, inv_z, uv_c, P: _Problems, min_depth_m: float, row_scale=None) -> None:
    """Write ``row_scale * d r / d delta`` into ``out`` (E, 6, C, N).

    Columns: ``(dx, dy, dz, drot_x, drot_y, drot_z)`` of :func:`pose_node.core.geometry.perturb_pose`.
    ``d p_cam / d delta = [I, -skew(R X)]``, so a row ``a`` of ``d r / d p_cam`` gives
    ``[a, (R X) x a]``. ``row_scale`` (E, C, N) multiplies every residual's row (IRLS sqrt weights).
    """
    w_iz = P.w * inv_z
    coef = P.depth_coef
    if row_scale is not None:
        w_iz = w_iz * row_scale[:, :2]
        coef = None if coef is None else coef * row_scale[:, 2:]
    # d/dz of (u, v) is -(u - cx, v - cy) / z; the clamp has no derivative below min_depth_m.
    neg_front = (z > min_depth_m).to(z.dtype).neg_()
    a0, a1, a2 = out[:, 0], out[:, 1], out[:, 2]
    torch.mul(w_iz, P.K[:, :2, 0:1], out=a0[:, :2])  # d/dx of (u, v): (fx, 0) / z
    torch.mul(w_iz, P.K[:, :2, 1:2], out=a1[:, :2])  # d/dy: (s, fy) / z
    torch.mul(w_iz * neg_front, uv_c, out=a2[:, :2])
    if coef is not None:
        a0[:, 2:].zero_()
        a1[:, 2:].zero_()
        a2[:, 2:].copy_(coef)
    qx, qy, qz = q[:, 0:1], q[:, 1:2], q[:, 2:3]
    torch.mul(qy, a2, out=out[:, 3]).addcmul_(qz, a1, value=-1.0)
    torch.mul(qz, a0, out=out[:, 4]).addcmul_(qx, a2, value=-1.0)
    torch.mul(qx, a1, out=out[:, 5]).addcmul_(qy, a0, value=-1.0)


def _evaluate(R, t, P: _Problems, min_depth_m: float):
    """Huber cost (E,), IRLS Hessian ``J^T W J`` (E, 6, 6) and gradient ``J^T W r`` (E, 6).

    ``W`` holds the IRLS weights ``psi(r) / r`` (1 inside the threshold, ``delta / |r|``
    outside). One bmm gives both: rows 0-5 of a buffer hold ``sqrt(W) J``, row 6 ``sqrt(W) r``.
    """
    q, z, inv_z, uv_c, r = _project(R, t, P, min_depth_m)
    E, C, N = r.shape
    d = P.delta[:, None, None]
    a = r.abs()
    m = torch.minimum(a, d)
    cost = torch.addcmul(a * m, m, m, value=-0.5).sum(dim=(1, 2))
    sqrt_w = (m / a.clamp_min(torch.finfo(a.dtype).tiny)).sqrt_()
    sqrt_w = torch.where(a <= d, torch.ones_like(a), sqrt_w)
    buf = torch.empty(E, 7, C, N, dtype=r.dtype, device=r.device)
    _fill_jacobian(buf[:, :6], q, z, inv_z, uv_c, P, min_depth_m, sqrt_w)
    torch.mul(sqrt_w, r, out=buf[:, 6])
    flat = buf.view(E, 7, C * N)
    G = flat @ flat.transpose(1, 2)
    return cost, G[:, :6, :6], G[:, :6, 6]


def pnp_residuals(
    R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
    K: torch.Tensor, depth_m: torch.Tensor | None = None, depth_weight: float = 1.0,
    min_depth_m: float = _DEFAULT_MIN_DEPTH_M,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residuals of the robust cost (:func:`pose_node.training.pnp_cost.pnp_cost`) before the Huber
    function, with analytic Jacobians.

    Args:
        R: (B, 3, 3), t: (B, 3) pose camera <- object, metres.
        x3d, x2d, w2d, K, depth_m, depth_weight, min_depth_m: as
            :func:`pose_node.training.pnp_cost.pnp_cost`.
    Returns:
        r: (B, M) residuals, M = 2N (+ N with depth): all u rows, all v rows, then depth rows.
        J_r_delta: (B, M, 6) their derivatives w.r.t. ``(dt, drot)`` of
        :func:`pose_node.core.geometry.perturb_pose` at ``delta = 0`` (no autograd graph;
        ``r`` has one).
    Raises:
        InvalidInputError: on wrong shapes.
    """
    B, N = _check_correspondences(x3d, x2d, w2d, K, depth_m)
    _check_shape("R", R, (B, 3, 3))
    _check_shape("t", t, (B, 3))
    coef, depth = (None, None) if depth_m is None else _depth_terms(depth_m, w2d, K, depth_weight)
    P = _Problems.make(x3d, x2d, w2d, K, x3d.new_zeros(B), coef, depth)
    q, z, inv_z, uv_c, r = _project(R, t, P, min_depth_m)
    J = torch.empty(B, 6, *r.shape[1:], dtype=r.dtype, device=r.device)
    with torch.no_grad():
        _fill_jacobian(J, q, z, inv_z, uv_c, P, min_depth_m)
    return r.reshape(B, -1), J.reshape(B, 6, -1).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# solver


def _solver_options(config: PnPConfig) -> DampedLeastSquaresOptions:
    """The PnP loop: unfinished problems only, a system at every candidate, an unchanged cost accepted,
    a failed Cholesky factorisation rejected, the undamped diagonal scaled (no floor, no ridge)."""
    return DampedLeastSquaresOptions(
        max_iterations=config.max_iterations, lambda_init=config.lambda_init, lambda_max=config.lambda_max,
        lambda_accept_factor=_LAMBDA_ACCEPT_FACTOR, lambda_reject_factor=_LAMBDA_REJECT_FACTOR,
        linear_solver="cholesky", accept_equal_cost=True, stop_dt_m=config.stop_dt_m, stop_drot_rad=config.stop_drot_rad,
        compact=True, linearize_candidates=True)


def _empty_result(dtype, device) -> PnPResult:
    return PnPResult(
        T_camera_object=torch.zeros(0, 4, 4, dtype=dtype, device=device),
        cost=torch.zeros(0, dtype=dtype, device=device),
        covariance=torch.zeros(0, 6, 6, dtype=dtype, device=device),
        valid=torch.zeros(0, dtype=torch.bool, device=device),
        hypothesis=torch.zeros(0, dtype=torch.long, device=device),
        iterations=torch.zeros(0, dtype=torch.long, device=device),
    )


@torch.no_grad()
def solve_pnp(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor, T_init: torch.Tensor,
    depth_m: torch.Tensor | None = None, config: PnPConfig = PnPConfig(),
) -> PnPResult:
    """Minimise the robust cost (:func:`pose_node.training.pnp_cost.pnp_cost`) from H initial poses per
    element with batched Levenberg-Marquardt.

    All B*H problems are solved at once (no Python loop over the batch), in float64, with
    analytic Jacobians, per-element Marquardt damping (accept: lambda * 0.1, reject: * 10) and
    per-element stopping (converged problems leave the working set). The lowest final cost
    over the valid hypotheses wins. Runs without autograd: callers treat the solution as a
    constant. The Huber threshold is :func:`huber_delta` of
    ``(x2d, w2d, config.huber_relative_delta)``.

    Args:
        x3d: (B, N, 3) object points, metres, object frame.
        x2d: (B, N, 2) image points, pixels.
        w2d: (B, N, 2) weights >= 0, 1/pixels (0 drops a component).
        K: (B, 3, 3) pinhole intrinsics, pixels.
        T_init: (B, H, 4, 4) initial ``T_camera_object`` hypotheses, metres (H >= 1); a
            non-finite hypothesis only loses.
        depth_m: (B, N) observed depth of each point, metres, NaN where unknown; or None.
        config: solver settings.
    Returns:
        :class:`PnPResult` in ``x3d``'s dtype and device. Elements with non-finite inputs,
        fewer than ``config.min_points`` weighted points, a weighted point behind the camera
        or a singular Hessian get ``valid = False`` and NaN covariance; the others are solved.
    Raises:
        InvalidInputError: on wrong shapes or H = 0.
    """
    B, N = _check_correspondences(x3d, x2d, w2d, K, depth_m)
    _check_shape("T_init", T_init, (B, None, 4, 4))
    H = T_init.shape[1]
    if H == 0:
        raise InvalidInputError(f"T_init needs at least one hypothesis, got shape {tuple(T_init.shape)}")
    out_dtype, device = x3d.dtype, x3d.device
    if B == 0:
        return _empty_result(out_dtype, device)
    dt = _SOLVE_DTYPE
    x3d, x2d, w2d, K, T_init = (v.to(dt) for v in (x3d, x2d, w2d, K, T_init))
    depth_m = None if depth_m is None else depth_m.to(dt)

    finite = (torch.isfinite(x3d).flatten(1).all(1) & torch.isfinite(x2d).flatten(1).all(1)
              & torch.isfinite(w2d).flatten(1).all(1) & torch.isfinite(K).flatten(1).all(1))
    weighted = w2d.sum(-1) > 0  # (B, N)
    element_ok = finite & (weighted.sum(-1) >= config.min_points)
    delta = huber_delta(x2d, w2d, config.huber_relative_delta)
    coef = depth = None
    if depth_m is not None:
        coef, depth = _depth_terms(depth_m, w2d, K, config.depth_weight)

    # E = B * H problems, the hypotheses of an element adjacent.
    E = B * H
    problems = _Problems.make(x3d, x2d, w2d, K, delta, coef, depth).repeat(H)
    R = T_init[..., :3, :3].reshape(E, 3, 3)
    t = T_init[..., :3, 3].reshape(E, 3)
    hyp_finite = torch.isfinite(T_init).flatten(2).all(-1).reshape(E)
    start_ok = element_ok.repeat_interleave(H) & hyp_finite
    # Non-finite hypotheses start from the identity so that no NaN enters the batched algebra.
    R = torch.where(start_ok[:, None, None], R, torch.eye(3, dtype=dt, device=device).expand(E, 3, 3))
    t = torch.where(start_ok[:, None], t, torch.zeros_like(t))

    def cost_fn(pose: Pose, index: torch.Tensor | None, with_system: bool) -> NormalEquations:
        # The PnP system costs little more than its cost, so it is always built (with_system ignored).
        cost, JtWJ, JtWr = _evaluate(pose.R, pose.t, problems if index is None else problems.select(index),
                                     config.min_depth_m)
        return NormalEquations(cost, JtWJ, JtWr)

    solution = solve_damped_least_squares(cost_fn, Pose(R, t), _solver_options(config), active=start_ok)
    R, t, cost, Hs, iterations = solution.pose.R, solution.pose.t, solution.cost, solution.JtWJ, solution.iterations

    # Per-hypothesis validity at the optimum, then the best hypothesis per element.
    L, info = torch.linalg.cholesky_ex(Hs)
    factored = (info == 0) & torch.isfinite(L).flatten(1).all(1)
    L = torch.where(factored[:, None, None], L, torch.eye(6, dtype=dt, device=device).expand(E, 6, 6))
    cov = torch.cholesky_inverse(L)
    z = (R[:, 2:3] @ problems.X)[:, 0] + t[:, 2:3]  # (E, N)
    in_front = ((z > config.min_depth_m) | ~weighted.repeat_interleave(H, dim=0)).all(-1)
    hyp_ok = (start_ok & in_front & factored & torch.isfinite(cov).flatten(1).all(1)
              & torch.isfinite(cost) & torch.isfinite(R).flatten(1).all(1) & torch.isfinite(t).all(1))
    score = torch.where(hyp_ok, cost, torch.full_like(cost, float("inf"))).view(B, H)
    best = score.argmin(dim=1)
    pick = torch.arange(B, device=device) * H + best
    valid = hyp_ok[pick]
    T = torch.zeros(B, 4, 4, dtype=dt, device=device)
    T[:, :3, :3] = R[pick]
    T[:, :3, 3] = t[pick]
    T[:, 3, 3] = 1.0
    covariance = torch.where(valid[:, None, None], cov[pick], torch.full_like(cov[pick], float("nan")))
    n_invalid = int((~valid).sum())
    if n_invalid:
        logger.debug("solve_pnp: %d of %d elements invalid", n_invalid, B)
    return PnPResult(
        T_camera_object=T.to(out_dtype),
        cost=cost[pick].to(out_dtype),
        covariance=covariance.to(out_dtype),
        valid=valid,
        hypothesis=best,
        iterations=iterations[pick],
    )


# --------------------------------------------------------------------------------------------
# RANSAC initialisation (CPU boundary)


def initial_poses_ransac(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor,
    config: PnPConfig = PnPConfig(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial poses from OpenCV RANSAC PnP, one element at a time.

    CPU boundary: the tensors are copied to CPU numpy (float64), ``cv2.solvePnPRansac``
    (``SOLVEPNP_EPNP``) runs on the points whose mean weight is above
    ``config.ransac_min_weight_fraction`` of the element's largest, the pose is refined with
    ``SOLVEPNP_ITERATIVE`` on the inliers, and the result goes back to the input device and dtype.
    OpenCV ignores the skew of ``K``; :func:`solve_pnp` refines with the full model.

    Args:
        x3d: (B, N, 3) object points, metres. x2d: (B, N, 2) pixels. w2d: (B, N, 2) 1/pixels.
        K: (B, 3, 3) intrinsics.
        config: RANSAC settings (``ransac_*``, ``min_depth_m``).
    Returns:
        T: (B, 4, 4) ``T_camera_object``, NaN where not valid.
        valid: (B,) bool: enough points and inliers, finite pose in front of the camera.
    Raises:
        InvalidInputError: on wrong shapes.
    """
    B, _ = _check_correspondences(x3d, x2d, w2d, K, None)
    out_dtype, device = x3d.dtype, x3d.device
    obj_all = x3d.detach().to("cpu", torch.float64).numpy()
    img_all = x2d.detach().to("cpu", torch.float64).numpy()
    w_all = w2d.detach().to("cpu", torch.float64).numpy().mean(-1)
    K_all = K.detach().to("cpu", torch.float64).numpy()
    T = np.full((B, 4, 4), np.nan)
    valid = np.zeros(B, dtype=bool)
    for b in range(B):
        finite = np.isfinite(obj_all[b]).all(-1) & np.isfinite(img_all[b]).all(-1) & np.isfinite(w_all[b])
        if not finite.any() or not np.isfinite(K_all[b]).all():
            continue
        w = np.where(finite, w_all[b], 0.0)
        sel = finite & (w > 0) & (w >= config.ransac_min_weight_fraction * w.max())
        if sel.sum() < config.ransac_min_points:
            continue
        obj = np.ascontiguousarray(obj_all[b][sel])
        img = np.ascontiguousarray(img_all[b][sel])
        Kb = np.ascontiguousarray(K_all[b])
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                obj, img, Kb, None, iterationsCount=config.ransac_iterations,
                reprojectionError=config.ransac_reprojection_px, confidence=config.ransac_confidence,
                flags=cv2.SOLVEPNP_EPNP)
            if not ok or inliers is None or len(inliers) < config.ransac_min_points:
                continue
            idx = inliers[:, 0]
            ok, rvec, tvec = cv2.solvePnP(obj[idx], img[idx], Kb, None, rvec, tvec,
                                          useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        except cv2.error as exc:
            logger.warning("initial_poses_ransac: OpenCV failed on element %d: %s", b, exc)
            continue
        if not ok:
            continue
        Rb, _ = cv2.Rodrigues(rvec)
        tb = tvec.reshape(3)
        if not (np.isfinite(Rb).all() and np.isfinite(tb).all()):
            continue
        z = obj @ Rb.T[:, 2] + tb[2]
        if not (z[idx] > config.min_depth_m).all():
            continue
        T[b] = np.eye(4)
        T[b, :3, :3] = Rb
        T[b, :3, 3] = tb
        valid[b] = True
    return (torch.from_numpy(T).to(device=device, dtype=out_dtype),
            torch.from_numpy(valid).to(device))
