"""One batched damped least-squares (Levenberg-Marquardt) loop over SE(3) poses, apart from the cost.

PixLoc's split: the optimizer owns the iteration (damped Gauss-Newton step, accept or reject,
Marquardt's lambda schedule, per-problem stopping), the cost owns the model (residuals, robust
weights, Jacobians). :func:`solve_damped_least_squares` takes E initial poses and a cost callable and
returns the solutions with their final cost, convergence flags, iteration counts and the final normal
equations ``J^T W J`` (the inverse of which is the Laplace covariance the callers scale).

The cost hands back its normal equations ``(cost, J^T W J, J^T W r)`` rather than raw residuals and
Jacobians: both of this package's costs fuse the products (PnP: one bmm over a stacked buffer; the
multi-view alignment: per-point feature-gradient products contracted over channels before the pose
Jacobian), which saves forming ``J`` (``M x 6`` per problem, M residuals) and keeps their reduction order.
:func:`normal_equations` builds the system from residuals and Jacobians for a cost that has them.

Pose step: the ROS convention of :mod:`pose_node.core.geometry`, ``delta = (dx, dy, dz, drot_x, drot_y,
drot_z)`` in metres and radians about the parent axes, applied by :func:`perturb_pose`:
``R <- Exp(drot) R``, ``t <- t + dt``.

The two users iterate differently (the PnP solver shrinks its working set to the unfinished problems
and re-linearises at every candidate; the alignment masks finished problems in the full batch and
evaluates only the cost at a candidate), and :class:`DampedLeastSquaresOptions` keeps both ways exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, perturb_pose

POSE_DOF = 6  # (dx, dy, dz, drot_x, drot_y, drot_z)


@dataclass(frozen=True)
class DampedLeastSquaresOptions:
    """Settings of :func:`solve_damped_least_squares`.

    The damped system of a problem is ``H + lambda diag(max(diag(H), diagonal_floor)) + ridge I``
    (Marquardt's scaling of the diagonal, so the damping has the units of each parameter).

    Attributes:
        max_iterations: damped steps at most per problem.
        lambda_init: initial damping, unitless.
        lambda_max: a problem whose damping grows past this stops (no descent left).
        lambda_min: the damping never falls below this (None: no floor).
        lambda_accept_factor: an accepted step multiplies lambda by this ...
        lambda_accept_divisor: ... or, when set, divides lambda by this instead (``x / 10`` and
            ``x * 0.1`` differ in the last bit for some ``x``; the alignment has always divided).
        lambda_reject_factor: a rejected step multiplies lambda by this.
        diagonal_floor: floor of the Hessian diagonal in the damping term (keeps a direction without
            information damped), in the units of ``H``.
        ridge: added to the damped diagonal, in the units of ``H`` (0: none).
        linear_solver: ``"cholesky"``: a failed factorisation or a non-finite step rejects the
            step; ``"lu"``: non-finite step components are set to zero and the rest is tried.
        accept_equal_cost: accept a step that leaves the cost unchanged (``<=``), else only a
            strict decrease.
        stop_dt_m: an accepted step shorter than this in translation (metres) ...
        stop_drot_rad: ... and than this in rotation (radians) ends a problem's iterations.
        stop_relative_decrease: an accepted step that lowers the cost by less than this share of
            it also ends them (None: no such test).
        compact: iterate on the unfinished problems only (the cost gets their indices; the PnP
            solver's way, cheap when problems finish at different times) rather than on the full
            batch with finished problems masked (the cost always sees every problem).
        linearize_candidates: evaluate the normal equations at every candidate pose and keep an
            accepted candidate's (cheap when most steps are accepted); else evaluate only the cost at
            a candidate and re-linearise every problem of the iteration after any accepted step.
    """

    max_iterations: int = 10
    lambda_init: float = 1e-3
    lambda_max: float = 1e6
    lambda_min: float | None = None
    lambda_accept_factor: float = 0.1
    lambda_accept_divisor: float | None = None
    lambda_reject_factor: float = 10.0
    diagonal_floor: float = 0.0
    ridge: float = 0.0
    linear_solver: Literal["cholesky", "lu"] = "cholesky"
    accept_equal_cost: bool = True
    stop_dt_m: float = 1e-5
    stop_drot_rad: float = 1e-5
    stop_relative_decrease: float | None = None
    compact: bool = True
    linearize_candidates: bool = True

    def __post_init__(self) -> None:
        if self.max_iterations < 0:
            raise InvalidInputError(f"DampedLeastSquaresOptions.max_iterations: expected >= 0, got {self.max_iterations}")
        if not 0.0 < self.lambda_init <= self.lambda_max:
            raise InvalidInputError(
                f"DampedLeastSquaresOptions: need 0 < lambda_init <= lambda_max, got lambda_init={self.lambda_init}, "
                f"lambda_max={self.lambda_max}")
        if self.lambda_min is not None and not 0.0 <= self.lambda_min <= self.lambda_max:
            raise InvalidInputError(f"DampedLeastSquaresOptions.lambda_min: expected in [0, lambda_max], got {self.lambda_min}")
        if not 0.0 < self.lambda_accept_factor < 1.0 or not self.lambda_reject_factor > 1.0:
            raise InvalidInputError(
                "DampedLeastSquaresOptions: need 0 < lambda_accept_factor < 1 < lambda_reject_factor, got "
                f"{self.lambda_accept_factor}, {self.lambda_reject_factor}")
        if self.lambda_accept_divisor is not None and not self.lambda_accept_divisor > 1.0:
            raise InvalidInputError(f"DampedLeastSquaresOptions.lambda_accept_divisor: expected > 1, got {self.lambda_accept_divisor}")
        if self.diagonal_floor < 0.0 or self.ridge < 0.0:
            raise InvalidInputError(
                f"DampedLeastSquaresOptions: need diagonal_floor >= 0 and ridge >= 0, got {self.diagonal_floor}, {self.ridge}")
        if self.linear_solver not in ("cholesky", "lu"):
            raise InvalidInputError(f"DampedLeastSquaresOptions.linear_solver: expected 'cholesky' or 'lu', got {self.linear_solver!r}")


@dataclass(frozen=True)
class NormalEquations:
    """A cost and its Gauss-Newton system at E poses (the system None where only the cost was asked).

    Attributes:
        cost: (E,) robust cost, unitless.
        JtWJ: (E, 6, 6) ``J^T W J`` (W: robust IRLS weights), or None.
        JtWr: (E, 6) ``J^T W r``, the gradient of the cost, or None.
    """

    cost: torch.Tensor
    JtWJ: torch.Tensor | None = None
    JtWr: torch.Tensor | None = None


class PoseCost(Protocol):
    """A cost over E problems, evaluated at poses of some of them.

    Args:
        pose: batch shape (M,), float64.
        index: (M,) long, which problems ``pose`` belongs to, or None for all E in order.
        with_system: also return ``J^T W J`` and ``J^T W r`` (w.r.t. the step of :func:`perturb_pose`).
    Returns:
        :class:`NormalEquations` of the M problems.
    """

    def __call__(self, pose: Pose, index: torch.Tensor | None, with_system: bool) -> NormalEquations: ...


@dataclass(frozen=True)
class DampedLeastSquaresResult:
    """Solutions of E problems (float64, the initial poses' device).

    Attributes:
        pose: batch shape (E,), the last accepted pose (the initial one if no step was accepted).
        cost: (E,) the cost there.
        JtWJ: (E, 6, 6) and JtWr: (E, 6): the normal equations there (the covariance is
            ``JtWJ^-1`` up to the cost's residual scale).
        converged: (E,) bool: stopped by the step size or relative decrease test.
        iterations: (E,) long, damped steps tried.
        damping: (E,) final lambda.
    """

    pose: Pose
    cost: torch.Tensor
    JtWJ: torch.Tensor
    JtWr: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    damping: torch.Tensor


def normal_equations(cost: torch.Tensor, residuals: torch.Tensor, weights: torch.Tensor,
                     J_r_delta: torch.Tensor) -> NormalEquations:
    """The Gauss-Newton system of a weighted least-squares cost from its residuals and Jacobians.

    Args:
        cost: (E,) the (robust) cost.
        residuals: (E, M) residuals r.
        weights: (E, M) IRLS weights W (the robust loss' ``rho'(r^2)``), >= 0.
        J_r_delta: (E, M, 6) ``d r / d delta``.
    Returns:
        ``(cost, J^T W J, J^T W r)``.
    """
    WJ = J_r_delta * weights[..., None]
    return NormalEquations(cost, WJ.transpose(-1, -2) @ J_r_delta, (WJ.transpose(-1, -2) @ residuals[..., None])[..., 0])


def _damped_step(H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor,
                 options: DampedLeastSquaresOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The step ``-(H + lambda D + ridge I)^-1 g`` (E, 6) and whether it may be tried (E,) bool."""
    diagonal = torch.diagonal(H, dim1=-2, dim2=-1).clamp_min(options.diagonal_floor)
    damped = H + lam[:, None, None] * torch.diag_embed(diagonal)
    if options.ridge > 0.0:
        damped = damped + options.ridge * torch.eye(POSE_DOF, dtype=H.dtype, device=H.device)
    if options.linear_solver == "cholesky":
        L, info = torch.linalg.cholesky_ex(damped)
        step = -torch.cholesky_solve(g[..., None], L)[..., 0]
        step_ok = (info == 0) & torch.isfinite(step).all(-1)
        return torch.where(step_ok[:, None], step, torch.zeros_like(step)), step_ok
    step = -torch.linalg.solve(damped, g[..., None])[..., 0]
    step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
    return step, torch.ones_like(lam, dtype=torch.bool)


def _update_damping(lam: torch.Tensor, accept: torch.Tensor, options: DampedLeastSquaresOptions) -> torch.Tensor:
    """Marquardt's schedule: shrink lambda after an accepted step, grow it after a rejected one."""
    if options.lambda_accept_divisor is None:
        shrunk = lam * options.lambda_accept_factor
    else:
        shrunk = lam / options.lambda_accept_divisor
    return torch.where(accept, shrunk, lam * options.lambda_reject_factor)


def _stops(step: torch.Tensor, cost: torch.Tensor, cost_candidate: torch.Tensor,
           options: DampedLeastSquaresOptions) -> torch.Tensor:
    """(E,) bool: the step is small enough (or the decrease flat enough) to stop once accepted."""
    small = (step[:, :3].norm(dim=-1) < options.stop_dt_m) & (step[:, 3:].norm(dim=-1) < options.stop_drot_rad)
    if options.stop_relative_decrease is None:
        return small
    return small | (cost - cost_candidate < options.stop_relative_decrease * cost.abs())


def _where_pose(mask: torch.Tensor, a: Pose, b: Pose) -> Pose:
    return Pose(torch.where(mask[:, None, None], a.R, b.R), torch.where(mask[:, None], a.t, b.t))


def solve_damped_least_squares(
    cost_fn: PoseCost, pose_init: Pose, options: DampedLeastSquaresOptions = DampedLeastSquaresOptions(),
    active: torch.Tensor | None = None,
) -> DampedLeastSquaresResult:
    """Minimise a cost over E poses at once with Levenberg-Marquardt (module docstring).

    A problem iterates until an accepted step passes the stopping test, its damping exceeds
    ``options.lambda_max`` or ``options.max_iterations`` steps were tried; a rejected step leaves
    its pose, cost and system as they were. No Python loop over problems; whether autograd records
    is the caller's choice (the callers treat the solution as a constant).

    Args:
        cost_fn: the cost (:class:`PoseCost`).
        pose_init: batch shape (E,), float64 initial poses (finite where ``active``).
        options: loop settings.
        active: (E,) bool, problems to iterate (the others keep their initial pose and are still
            evaluated once); None: all.
    Returns:
        :class:`DampedLeastSquaresResult`.
    Raises:
        InvalidInputError: ``pose_init`` is not a batch of E poses, or ``active`` not (E,) bool.
    """
    if pose_init.R.ndim != 3 or pose_init.t.ndim != 2 or pose_init.R.shape[0] != pose_init.t.shape[0]:
        raise InvalidInputError(
            f"pose_init: expected a batch of E poses (R (E, 3, 3), t (E, 3)), got R {tuple(pose_init.R.shape)}, "
            f"t {tuple(pose_init.t.shape)}")
    E, device = pose_init.t.shape[0], pose_init.t.device
    if active is None:
        active = torch.ones(E, dtype=torch.bool, device=device)
    elif tuple(active.shape) != (E,) or active.dtype != torch.bool:
        raise InvalidInputError(f"active: expected ({E},) bool, got {tuple(active.shape)} {active.dtype}")
    active = active.clone()
    system = cost_fn(pose_init, None, True)
    state = _LoopState(pose_init, system.cost, system.JtWJ, system.JtWr,
                       torch.full((E,), options.lambda_init, dtype=pose_init.t.dtype, device=device),
                       torch.zeros(E, dtype=torch.bool, device=device), torch.zeros(E, dtype=torch.long, device=device))
    step_fn = _compact_iteration if options.compact else _masked_iteration
    for _ in range(options.max_iterations):
        if not step_fn(cost_fn, state, active, options):
            break
    return DampedLeastSquaresResult(Pose(state.R, state.t), state.cost, state.H, state.g, state.converged,
                                    state.iterations, state.lam)


class _LoopState:
    """The per-problem tensors of the loop, updated in place."""

    def __init__(self, pose: Pose, cost, H, g, lam, converged, iterations) -> None:
        self.R, self.t = pose.R.clone(), pose.t.clone()
        self.cost, self.H, self.g, self.lam = cost, H, g, lam
        self.converged, self.iterations = converged, iterations


def _compact_iteration(cost_fn: PoseCost, s: _LoopState, active: torch.Tensor,
                       options: DampedLeastSquaresOptions) -> bool:
    """One step of the unfinished problems only (gathered, solved, scattered back). False: none left."""
    idx = active.nonzero()[:, 0]
    if idx.numel() == 0:
        return False
    full = idx.numel() == active.shape[0]
    fields = (s.R, s.t, s.cost, s.H, s.g, s.lam)
    R, t, cost, H, g, lam = fields if full else (v.index_select(0, idx) for v in fields)
    index = None if full else idx
    step, step_ok = _damped_step(H, g, lam, options)
    candidate = perturb_pose(Pose(R, t), step)
    evaluated = cost_fn(candidate, index, options.linearize_candidates)
    better = evaluated.cost <= cost if options.accept_equal_cost else evaluated.cost < cost
    accept = step_ok & better
    stop = accept & _stops(step, cost, evaluated.cost, options)
    lam = _update_damping(lam, accept, options)
    if options.lambda_min is not None:
        lam = lam.clamp_min(options.lambda_min)
    pose = _where_pose(accept, candidate, Pose(R, t))
    cost = torch.where(accept, evaluated.cost, cost)
    if options.linearize_candidates:
        H = torch.where(accept[:, None, None], evaluated.JtWJ, H)
        g = torch.where(accept[:, None], evaluated.JtWr, g)
    elif bool(accept.any()):
        relinearized = cost_fn(pose, index, True)
        cost, H, g = relinearized.cost, relinearized.JtWJ, relinearized.JtWr
    updates = ((s.R, pose.R), (s.t, pose.t), (s.cost, cost), (s.H, H), (s.g, g), (s.lam, lam))
    for target, value in updates:
        if full:
            target.copy_(value)
        else:
            target.index_copy_(0, idx, value)
    s.iterations.index_add_(0, idx, torch.ones_like(idx))
    s.converged.index_copy_(0, idx, stop)
    active.index_copy_(0, idx, ~stop & (lam <= options.lambda_max))
    return True


def _masked_iteration(cost_fn: PoseCost, s: _LoopState, active: torch.Tensor,
                      options: DampedLeastSquaresOptions) -> bool:
    """One step of the full batch, finished problems masked out. False: none left."""
    if not bool(active.any()):
        return False
    step, step_ok = _damped_step(s.H, s.g, s.lam, options)
    candidate = perturb_pose(Pose(s.R, s.t), step)
    evaluated = cost_fn(candidate, None, options.linearize_candidates)
    better = evaluated.cost <= s.cost if options.accept_equal_cost else evaluated.cost < s.cost
    accept = better & step_ok & active
    s.iterations += active.long()
    pose = _where_pose(accept, candidate, Pose(s.R, s.t))
    s.R, s.t = pose.R, pose.t
    lam = torch.where(active, _update_damping(s.lam, accept, options), s.lam)
    s.lam = lam if options.lambda_min is None else lam.clamp_min(options.lambda_min)
    stop = accept & _stops(step, s.cost, evaluated.cost, options)
    s.converged |= stop
    active &= ~stop & (s.lam <= options.lambda_max)
    if options.linearize_candidates:
        s.cost = torch.where(accept, evaluated.cost, s.cost)
        s.H = torch.where(accept[:, None, None], evaluated.JtWJ, s.H)
        s.g = torch.where(accept[:, None], evaluated.JtWr, s.g)
    elif bool(accept.any()):
        relinearized = cost_fn(pose, None, True)
        s.cost, s.H, s.g = relinearized.cost, relinearized.JtWJ, relinearized.JtWr
    return True


__all__ = ["DampedLeastSquaresOptions", "DampedLeastSquaresResult", "NormalEquations", "PoseCost", "normal_equations",
           "solve_damped_least_squares"]
