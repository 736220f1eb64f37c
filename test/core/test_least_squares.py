"""The shared damped least-squares loop on a small nonlinear problem with a known optimum: rigid
point-set registration, residual ``r_n = R p_n + t - q_n`` with ``q_n = R* p_n + t*``."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, perturb_pose, pose_difference, skew, so3_exp
from pose_node.core.least_squares import (
    DampedLeastSquaresOptions, NormalEquations, normal_equations, solve_damped_least_squares,
)

F64 = torch.float64
TIGHT = DampedLeastSquaresOptions(max_iterations=30, stop_dt_m=1e-12, stop_drot_rad=1e-12)


class Registration:
    """E registration problems of N points; counts its calls. Cost ``0.5 sum_n w_n |r_n|^2``."""

    def __init__(self, E: int, N: int = 12, seed: int = 0, device: str = "cpu") -> None:
        g = torch.Generator().manual_seed(seed)
        self.p = (0.1 * torch.randn(E, N, 3, generator=g, dtype=F64)).to(device)
        self.truth = Pose(so3_exp(torch.randn(E, 3, generator=g, dtype=F64)), 0.5 * torch.randn(E, 3, generator=g, dtype=F64))
        self.truth = Pose(self.truth.R.to(device), self.truth.t.to(device))
        self.q = self.truth.transform(self.p)
        self.w = (0.5 + torch.rand(E, N, generator=g, dtype=F64)).to(device)
        self.calls: list[tuple[int, bool]] = []

    def residuals(self, pose: Pose, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """r (M, 3N), weights (M, 3N), d r / d delta (M, 3N, 6) of the problems ``index``."""
        p, q, w = (v if index is None else v.index_select(0, index) for v in (self.p, self.q, self.w))
        Rp = p @ pose.R.transpose(-1, -2)
        r = Rp + pose.t[:, None] - q
        # d(Exp(w) R p + t)/d(dt, dw) = [I, -skew(R p)]
        J = torch.cat([torch.eye(3, dtype=F64, device=r.device).expand(*Rp.shape, 3), -skew(Rp)], -1)
        M, N = r.shape[:2]
        return r.reshape(M, 3 * N), w.repeat_interleave(3, dim=1), J.reshape(M, 3 * N, 6)

    def __call__(self, pose: Pose, index: torch.Tensor | None, with_system: bool) -> NormalEquations:
        self.calls.append((pose.t.shape[0], with_system))
        r, w, J = self.residuals(pose, index)
        cost = 0.5 * (w * r * r).sum(-1)
        return normal_equations(cost, r, w, J) if with_system else NormalEquations(cost)


def starts(problem: Registration, angle_deg: float, shift_m: float, seed: int = 1) -> Pose:
    g = torch.Generator().manual_seed(seed)
    E = problem.p.shape[0]
    axis = torch.nn.functional.normalize(torch.randn(E, 3, generator=g, dtype=F64), dim=-1)
    direction = torch.nn.functional.normalize(torch.randn(E, 3, generator=g, dtype=F64), dim=-1)
    delta = torch.cat([shift_m * direction, math.radians(angle_deg) * axis], -1).to(problem.p.device)
    return perturb_pose(problem.truth, delta)


def errors(pose: Pose, truth: Pose) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error (degrees) and translation error (metres) per problem."""
    d = pose_difference(pose, truth)
    return torch.rad2deg(d[:, 3:].norm(dim=-1)), d[:, :3].norm(dim=-1)


@pytest.mark.parametrize("compact,linearize_candidates", list(itertools.product([True, False], [True, False])))
@pytest.mark.parametrize("linear_solver", ["cholesky", "lu"])
def test_reaches_the_known_optimum_from_far_starts(compact, linearize_candidates, linear_solver, device):
    problem = Registration(E=6, device=device)
    options = replace(TIGHT, compact=compact, linearize_candidates=linearize_candidates, linear_solver=linear_solver)
    result = solve_damped_least_squares(problem, starts(problem, 60.0, 0.2), options)
    rot_deg, trans_m = errors(result.pose, problem.truth)
    assert rot_deg.max() < 1e-8 and trans_m.max() < 1e-10
    assert (result.cost < 1e-20).all()
    assert result.converged.all() and (result.iterations < options.max_iterations).all() and (result.iterations > 0).all()
    assert result.pose.t.device.type == torch.device(device).type and result.JtWJ.shape == (6, 6, 6)
    # the final system is J^T W J at the solution: here with W > 0 and 12 points, positive definite
    assert (torch.linalg.eigvalsh(result.JtWJ) > 0).all()
    if not linearize_candidates:
        assert any(not with_system for _, with_system in problem.calls)


def test_compact_and_masked_iteration_agree():
    problem = Registration(E=5, seed=3)
    init = starts(problem, 90.0, 0.3, seed=4)
    compact = solve_damped_least_squares(problem, init, replace(TIGHT, max_iterations=6, compact=True))
    masked = solve_damped_least_squares(problem, init, replace(TIGHT, max_iterations=6, compact=False))
    torch.testing.assert_close(compact.pose.R, masked.pose.R, rtol=0, atol=1e-12)
    torch.testing.assert_close(compact.cost, masked.cost, rtol=1e-9, atol=1e-15)
    assert torch.equal(compact.iterations, masked.iterations)


def test_compact_iteration_evaluates_only_unfinished_problems():
    problem = Registration(E=4)
    init = starts(problem, 20.0, 0.05)
    init = Pose(init.R.clone(), init.t.clone())
    init.R[0], init.t[0] = problem.truth.R[0], problem.truth.t[0]  # already at the optimum: stops at once
    solve_damped_least_squares(problem, init, replace(TIGHT, stop_dt_m=1e-9, stop_drot_rad=1e-9))
    sizes = [m for m, _ in problem.calls]
    assert sizes[:2] == [4, 4] and 3 in sizes[2:] and max(sizes[2:]) <= 3


class RejectFirstCandidates(Registration):
    """Reports an infinite cost for the first ``bad`` candidates: those steps must be rejected."""

    def __init__(self, bad: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bad = bad

    def __call__(self, pose, index, with_system):
        out = super().__call__(pose, index, with_system)
        if 1 < len(self.calls) <= 1 + self.bad:
            return NormalEquations(torch.full_like(out.cost, math.inf), out.JtWJ, out.JtWr)
        return out


@pytest.mark.parametrize("compact", [True, False])
def test_a_rejected_step_keeps_the_pose_and_grows_the_damping(compact):
    problem = RejectFirstCandidates(bad=1, E=3)
    init = starts(problem, 30.0, 0.1)
    options = replace(TIGHT, max_iterations=1, lambda_init=1e-2, compact=compact)
    result = solve_damped_least_squares(problem, init, options)
    assert torch.equal(result.pose.R, init.R) and torch.equal(result.pose.t, init.t)
    assert torch.equal(result.damping, torch.full((3,), 1e-2 * 10.0, dtype=F64))
    assert result.iterations.tolist() == [1, 1, 1] and not result.converged.any()
    torch.testing.assert_close(result.cost, problem(init, None, False).cost, rtol=0, atol=0)
    # ... and the next, accepted, step shrinks it again and lowers the cost
    problem = RejectFirstCandidates(bad=1, E=3)
    result = solve_damped_least_squares(problem, init, replace(options, max_iterations=2))
    assert torch.equal(result.damping, torch.full((3,), 1e-2 * 10.0 * 0.1, dtype=F64))
    assert (result.cost < problem(init, None, False).cost).all()


def test_damping_past_lambda_max_stops_a_problem():
    problem = RejectFirstCandidates(bad=100, E=2)
    result = solve_damped_least_squares(problem, starts(problem, 30.0, 0.1),
                                        replace(TIGHT, lambda_init=1.0, lambda_max=1e3, max_iterations=20))
    # 1 -> 10 -> 100 -> 1000 (still allowed) -> 10000: stopped after the fourth rejection
    assert result.iterations.tolist() == [4, 4] and not result.converged.any()


def test_accept_divisor_and_floor():
    problem = Registration(E=2)
    init = starts(problem, 5.0, 0.01)
    factor = solve_damped_least_squares(problem, init, replace(TIGHT, max_iterations=1, lambda_init=3.0))
    divisor = solve_damped_least_squares(problem, init, replace(TIGHT, max_iterations=1, lambda_init=3.0, lambda_accept_divisor=10.0))
    floored = solve_damped_least_squares(problem, init, replace(TIGHT, max_iterations=1, lambda_init=3.0, lambda_min=1.0))
    assert torch.equal(factor.damping, torch.full((2,), 3.0 * 0.1, dtype=F64))
    assert torch.equal(divisor.damping, torch.full((2,), 3.0 / 10.0, dtype=F64))
    assert 3.0 * 0.1 != 3.0 / 10.0  # why the divisor exists: the alignment's arithmetic kept exactly
    assert torch.equal(floored.damping, torch.full((2,), 1.0, dtype=F64))


def test_strict_acceptance_rejects_an_unchanged_cost():
    problem = Registration(E=2)
    at_optimum = problem.truth  # zero gradient: the step is zero and the cost unchanged
    equal_ok = solve_damped_least_squares(problem, at_optimum, replace(TIGHT, max_iterations=1))
    strict = solve_damped_least_squares(problem, at_optimum, replace(TIGHT, max_iterations=1, accept_equal_cost=False))
    assert equal_ok.converged.all() and not strict.converged.any()
    assert torch.equal(strict.damping, torch.full((2,), TIGHT.lambda_init * 10.0, dtype=F64))


def test_relative_decrease_stops_early():
    problem = Registration(E=3)
    init = starts(problem, 30.0, 0.1)
    plain = solve_damped_least_squares(problem, init, TIGHT)
    # a share of 1: any accepted step that leaves some cost is flat enough
    flat = solve_damped_least_squares(problem, init, replace(TIGHT, stop_relative_decrease=1.0))
    assert flat.converged.all() and flat.iterations.tolist() == [1, 1, 1] and (plain.iterations > 1).all()


@pytest.mark.parametrize("compact", [True, False])
def test_inactive_problems_keep_their_start(compact):
    problem = Registration(E=3)
    init = starts(problem, 30.0, 0.1)
    active = torch.tensor([True, False, True])
    result = solve_damped_least_squares(problem, init, replace(TIGHT, compact=compact), active=active)
    assert torch.equal(result.pose.R[1], init.R[1]) and result.iterations[1] == 0 and not result.converged[1]
    rot_deg, trans_m = errors(result.pose, problem.truth)
    assert rot_deg[active].max() < 1e-8 and trans_m[active].max() < 1e-10


def test_normal_equations_gradient_matches_autograd():
    problem = Registration(E=3)
    init = starts(problem, 30.0, 0.1)
    system = problem(init, None, True)
    delta = torch.zeros(3, 6, dtype=F64, requires_grad=True)
    cost = problem(perturb_pose(init, delta), None, False).cost
    (grad,) = torch.autograd.grad(cost.sum(), delta)
    torch.testing.assert_close(system.JtWr, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("compact", [True, False])
def test_empty_batch(compact):
    problem = Registration(E=0)
    result = solve_damped_least_squares(problem, Pose.identity((0,)), replace(TIGHT, compact=compact))
    assert result.pose.R.shape == (0, 3, 3) and result.JtWJ.shape == (0, 6, 6) and result.iterations.shape == (0,)


def test_bad_inputs_raise():
    problem = Registration(E=2)
    with pytest.raises(InvalidInputError, match="pose_init"):
        solve_damped_least_squares(problem, Pose.identity((2, 1)))
    with pytest.raises(InvalidInputError, match="active"):
        solve_damped_least_squares(problem, Pose.identity((2,)), active=torch.ones(3, dtype=torch.bool))
    for bad in (dict(lambda_init=0.0), dict(lambda_init=10.0, lambda_max=1.0), dict(max_iterations=-1),
                dict(lambda_accept_factor=1.5), dict(lambda_accept_divisor=0.5), dict(ridge=-1.0), dict(linear_solver="qr")):
        with pytest.raises(InvalidInputError):
            DampedLeastSquaresOptions(**bad)
