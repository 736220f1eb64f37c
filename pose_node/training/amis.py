"""EPro-PnP's Monte Carlo KL loss (Chen et al., CVPR 2022) with AMIS over SE(3).

The PnP cost of :mod:`pose_node.correspondence.pnp` defines a pose likelihood
``p(T) = exp(-cost(T)) / Z`` with ``Z = integral exp(-cost(T)) dT``. The training loss is the
negative log-likelihood of the ground truth (the KL divergence to a Dirac target, up to a
constant)::

    loss = cost(T_gt) + log Z

``log Z`` is estimated by Adaptive Multiple Importance Sampling (Cornuet et al. 2012), as in
EPro-PnP: ``rounds`` rounds of ``samples_per_round`` poses, translation from a multivariate
Student-t and rotation from an angular central Gaussian (ACG) on unit quaternions, both first
fitted to the solver's estimate and Laplace covariance and refitted to all weighted samples after
every round; the weights are the deterministic-mixture weights (density of every sample under
the equal mixture of all rounds' proposals)::

    log Z ~= logsumexp_i(-cost_i - log q_mix(x_i)) - log(total samples)

Measure: ``dT = dt dR`` with ``dt`` Lebesgue in cubic metres and ``dR`` the Haar measure of
SO(3) normalised to total mass 1 (the uniform probability on unit quaternions pushed to
rotations; q and -q are the same rotation and the ACG density is antipodally symmetric). Near a
pose, ``dR = d(rot) / (8 pi^2)`` in rotation-vector coordinates, so the Laplace approximation
reads ``log Z ~= -cost_min + 3 log(2 pi) + log|Sigma|/2 - log(8 pi^2)``. No other constant is
dropped; the choice of measure only shifts the loss by a constant that does not depend on the
network outputs.

Gradients: the samples and the proposals are detached (no gradient through sampling), so the
gradient w.r.t. ``x3d``, ``x2d``, ``w2d`` (and ``delta``) is
``grad cost(T_gt) - E_p[grad cost]`` with the expectation under the self-normalised weights.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose
from pose_node.correspondence.pnp import PnPConfig, _check_correspondences, _check_shape
from pose_node.training.pnp_cost import pnp_cost

logger = logging.getLogger(__name__)

_DTYPE = torch.float64  # proposals, densities and weights; the costs keep the inputs' dtype
_QUATERNION_DIM = 4
_ACG_FIT_SCALE = float(_QUATERNION_DIM)  # Tyler's fixed point: Lambda = d * E[q q^T / q^T Lambda^-1 q]


@dataclass(frozen=True)
class AmisConfig:
    """Settings of :func:`monte_carlo_pose_loss`.

    Attributes:
        rounds: AMIS rounds (proposal refits = rounds - 1).
        samples_per_round: poses drawn per round and batch element.
        student_t_dof: degrees of freedom of the translation proposal (> 0).
        min_translation_std_m: variance floor added to the translation scale, metres ...
        min_rotation_std_rad: ... and to the rotation proposal, radians (the proposal never collapses).
        proposal_scale: multiplies the standard deviations of the first proposal (the solver's
            Laplace covariance); > 1 widens it. The refits use the weighted sample moments.
            The Student-t's scale matrix is the covariance itself (its own covariance is
            ``dof / (dof - 2)`` times larger: heavier tails than the target, as EPro-PnP).
        fallback_translation_std_m: first-proposal translation std where the covariance given is
            not finite or not positive definite, metres ...
        fallback_rotation_std_rad: ... and rotation std, radians.
        acg_fit_iterations: fixed-point iterations of each ACG refit.
        min_depth_m: depth clamp of the cost (as :class:`pose_node.correspondence.pnp.PnPConfig`).
    """

    rounds: int = 4
    samples_per_round: int = 128
    student_t_dof: float = 3.0
    min_translation_std_m: float = 1e-5
    min_rotation_std_rad: float = 1e-5
    proposal_scale: float = 1.0
    fallback_translation_std_m: float = 0.05
    fallback_rotation_std_rad: float = 0.3
    acg_fit_iterations: int = 3
    min_depth_m: float = PnPConfig.min_depth_m

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.samples_per_round < 1:
            raise InvalidInputError(
                f"need rounds >= 1 and samples_per_round >= 1, got rounds={self.rounds}, "
                f"samples_per_round={self.samples_per_round}")
        if self.student_t_dof <= 0.0 or self.proposal_scale <= 0.0:
            raise InvalidInputError(
                f"need student_t_dof > 0 and proposal_scale > 0, got student_t_dof={self.student_t_dof}, "
                f"proposal_scale={self.proposal_scale}")
        if min(self.min_translation_std_m, self.min_rotation_std_rad) <= 0.0:
            raise InvalidInputError(
                f"need min_translation_std_m > 0 and min_rotation_std_rad > 0, got "
                f"{self.min_translation_std_m}, {self.min_rotation_std_rad}")


# --------------------------------------------------------------------------------------------
# translation: multivariate Student-t


@dataclass(frozen=True)
class _StudentT:
    """loc (B, 3) metres; scale_tril (B, 3, 3) Cholesky factor of the scale matrix; dof."""

    loc: torch.Tensor
    scale_tril: torch.Tensor
    dof: float

    @classmethod
    def fit(cls, cov: torch.Tensor, loc: torch.Tensor, dof: float, floor_m: float,
            previous: "_StudentT | None" = None) -> "_StudentT":
        """From a covariance (B, 3, 3) plus the floor; elements that fail keep ``previous``."""
        eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
        L, info = torch.linalg.cholesky_ex(cov + floor_m**2 * eye)
        ok = (info == 0) & torch.isfinite(L).flatten(1).all(1) & torch.isfinite(loc).all(1)
        if previous is not None:
            L = torch.where(ok[:, None, None], L, previous.scale_tril)
            loc = torch.where(ok[:, None], loc, previous.loc)
        return cls(loc, L, dof)

    @classmethod
    def fit_weighted(cls, x: torch.Tensor, weights: torch.Tensor, previous: "_StudentT",
                     floor_m: float) -> "_StudentT":
        """Weighted mean and covariance of samples x (S, B, 3), weights (S, B) summing to 1."""
        wx = weights.transpose(0, 1)[:, None, :]  # (B, 1, S)
        xb = x.transpose(0, 1)  # (B, S, 3)
        mean = (wx @ xb)[:, 0]
        diff = xb - mean[:, None]
        cov = (diff.transpose(1, 2) * wx) @ diff
        return cls.fit(cov, mean, previous.dof, floor_m, previous)

    def sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Returns (n, B, 3)."""
        B = self.loc.shape[0]
        z = torch.randn(n, B, 3, generator=generator, dtype=self.loc.dtype, device=self.loc.device)
        half_dof = torch.full((n, B), self.dof / 2.0, dtype=self.loc.dtype, device=self.loc.device)
        chi2 = 2.0 * torch._standard_gamma(half_dof, generator=generator)  # public Gamma has no generator
        scale = (self.dof / chi2.clamp_min(torch.finfo(chi2.dtype).tiny)).sqrt()
        return self.loc + (self.scale_tril @ z[..., None])[..., 0] * scale[..., None]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (S, B, 3). Returns (S, B) log density w.r.t. Lebesgue measure in m^3."""
        d = 3
        diff = (x - self.loc).permute(1, 2, 0)  # (B, 3, S)
        y = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False)
        maha = (y * y).sum(1).transpose(0, 1)  # (S, B)
        log_det = torch.diagonal(self.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        const = (math.lgamma((self.dof + d) / 2.0) - math.lgamma(self.dof / 2.0)
                 - d / 2.0 * math.log(self.dof * math.pi))
        return const - log_det - (self.dof + d) / 2.0 * torch.log1p(maha / self.dof)


# --------------------------------------------------------------------------------------------
# rotation: angular central Gaussian on unit quaternions (x, y, z, w)


def _left_perturbation_basis(q: torch.Tensor) -> torch.Tensor:
    """(B, 4, 3) ``G`` with ``q(drot) (x) q ~= q + G drot / 2`` for ``R = Exp(drot) @ R(q)``.

    Columns: the Hamilton products ``(e_i, 0) (x) q`` (orthonormal, orthogonal to ``q``).
    """
    v, w = q[..., :3], q[..., 3]
    eye = torch.eye(3, dtype=q.dtype, device=q.device)
    skew_v = torch.zeros(*v.shape[:-1], 3, 3, dtype=q.dtype, device=q.device)
    skew_v[..., 0, 1], skew_v[..., 0, 2], skew_v[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    skew_v = skew_v - skew_v.transpose(-1, -2)
    return torch.cat([w[..., None, None] * eye - skew_v, -v[..., None, :]], -2)


@dataclass(frozen=True)
class _ACG:
    """ACG with parameter ``Lambda = L L^T`` (B, 4, 4), unit trace (the density is scale-free)."""

    scale_tril: torch.Tensor

    @classmethod
    def from_matrix(cls, Lam: torch.Tensor, floor_rad: float, previous: "_ACG | None" = None) -> "_ACG":
        """From Lambda (B, 4, 4) of any scale plus the floor; elements that fail keep ``previous``."""
        eye = torch.eye(_QUATERNION_DIM, dtype=Lam.dtype, device=Lam.device)
        Lam = (Lam + Lam.transpose(-1, -2)) / 2.0
        Lam = Lam / torch.diagonal(Lam, dim1=-2, dim2=-1).sum(-1)[:, None, None]
        # The tangent eigenvalues of a concentrated unit-trace Lambda are the rotation variances.
        L, info = torch.linalg.cholesky_ex(Lam + floor_rad**2 * eye)
        if previous is not None:
            ok = (info == 0) & torch.isfinite(L).flatten(1).all(1)
            L = torch.where(ok[:, None, None], L, previous.scale_tril)
        return cls(L)

    @classmethod
    def from_mean_covariance(cls, q: torch.Tensor, cov_rot: torch.Tensor, floor_rad: float) -> "_ACG":
        """``Lambda = q q^T + G Sigma G^T``: for small Sigma, ``q`` has the rotation covariance
        Sigma in rotation-vector coordinates about the camera axes (see :func:`_left_perturbation_basis`).
        """
        G = _left_perturbation_basis(q)
        return cls.from_matrix(q[:, :, None] * q[:, None, :] + G @ cov_rot @ G.transpose(-1, -2), floor_rad)

    def sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Returns (n, B, 4) unit quaternions."""
        B = self.scale_tril.shape[0]
        z = torch.randn(n, B, _QUATERNION_DIM, generator=generator, dtype=self.scale_tril.dtype,
                        device=self.scale_tril.device)
        x = (self.scale_tril @ z[..., None])[..., 0]
        return x / x.norm(dim=-1, keepdim=True)

    def _quadratic(self, q: torch.Tensor) -> torch.Tensor:
        """(S, B) ``q^T Lambda^-1 q`` for unit q (S, B, 4)."""
        y = torch.linalg.solve_triangular(self.scale_tril, q.permute(1, 2, 0), upper=False)
        return (y * y).sum(1).transpose(0, 1)

    def log_prob(self, q: torch.Tensor) -> torch.Tensor:
        """Args: q (S, B, 4) unit. Returns (S, B) log density w.r.t. the uniform probability on S^3
        (= normalised Haar measure on SO(3)): ``-log|Lambda|/2 - 2 log(q^T Lambda^-1 q)``."""
        half_log_det = torch.diagonal(self.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        return -half_log_det - _QUATERNION_DIM / 2.0 * self._quadratic(q).log()

    def refit(self, q: torch.Tensor, weights: torch.Tensor, iterations: int, floor_rad: float) -> "_ACG":
        """Weighted maximum likelihood (Tyler's fixed point) from the current parameter.

        Args: q (S, B, 4) unit; weights (S, B) summing to 1 over S.
        """
        acg = self
        for _ in range(iterations):
            c = (weights / acg._quadratic(q)).transpose(0, 1)[:, :, None]  # (B, S, 1)
            qb = q.transpose(0, 1)  # (B, S, 4)
            Lam = _ACG_FIT_SCALE * (qb * c).transpose(1, 2) @ qb
            acg = _ACG.from_matrix(Lam, floor_rad, previous=acg)
        return acg


# --------------------------------------------------------------------------------------------
# loss


def _initial_proposal(T_pred, covariance_pred, T_gt, config: AmisConfig):
    """First proposals from the solver output, with fallbacks. Returns (StudentT, ACG, fallback (B,))."""
    B = T_pred.shape[0]
    eye3 = torch.eye(3, dtype=_DTYPE, device=T_pred.device)
    pose_ok = torch.isfinite(T_pred).flatten(1).all(1)
    center = Pose.from_matrix(torch.where(pose_ok[:, None, None], T_pred, T_gt))
    cov = covariance_pred
    cov_finite = torch.isfinite(cov).flatten(1).all(1)
    cov = torch.where(cov_finite[:, None, None], cov, torch.eye(6, dtype=_DTYPE, device=cov.device))
    cov = (cov + cov.transpose(-1, -2)) / 2.0
    _, info = torch.linalg.cholesky_ex(cov)
    cov_ok = cov_finite & (info == 0)
    fallback = ~(cov_ok & pose_ok)
    cov_t = torch.where(cov_ok[:, None, None], cov[:, :3, :3],
                        config.fallback_translation_std_m**2 * eye3.expand(B, 3, 3))
    cov_r = torch.where(cov_ok[:, None, None], cov[:, 3:, 3:],
                        config.fallback_rotation_std_rad**2 * eye3.expand(B, 3, 3))
    scale2 = config.proposal_scale**2
    trans = _StudentT.fit(scale2 * cov_t, center.t, config.student_t_dof, config.min_translation_std_m)
    rot = _ACG.from_mean_covariance(center.quaternion_xyzw(), scale2 * cov_r, config.min_rotation_std_rad)
    return trans, rot, fallback


def monte_carlo_pose_loss(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor, delta: torch.Tensor,
    T_pred: torch.Tensor, covariance_pred: torch.Tensor, T_gt: torch.Tensor,
    depth_m: torch.Tensor | None = None, depth_weight: float = 1.0,
    config: AmisConfig = AmisConfig(), generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EPro-PnP's Monte Carlo pose loss ``cost(T_gt) + log integral exp(-cost(T)) dT`` (module docstring).

    Args:
        x3d: (B, N, 3) object points, metres. x2d: (B, N, 2) pixels. w2d: (B, N, 2) 1/pixels.
        K: (B, 3, 3) intrinsics. delta: (B,) Huber thresholds (:func:`pnp.huber_delta`).
            Gradients flow to these five.
        T_pred: (B, 4, 4) solver estimate ``T_camera_object`` (detached; centre of the first
            proposal; where not finite, ``T_gt`` is used instead).
        covariance_pred: (B, 6, 6) solver covariance, ROS order (x, y, z, rot_x, rot_y, rot_z),
            metres and radians, camera axes (detached; NaN or not positive definite: the
            ``fallback_*`` standard deviations are used).
        T_gt: (B, 4, 4) ground truth ``T_camera_object``.
        depth_m: (B, N) observed depths, metres, NaN where unknown; or None. depth_weight: as
            :func:`pose_node.training.pnp_cost.pnp_cost`.
        config: sampler settings.
        generator: random source on ``x3d``'s device (None: torch's default generator).
    Returns:
        loss: (B,) in ``x3d``'s dtype: negative log-likelihood of ``T_gt`` w.r.t. ``dt`` (m^3)
            times the normalised Haar measure of SO(3).
        diagnostics: detached (B,) tensors: ``log_integral``, ``cost_gt``, ``ess_fraction``
            (effective sample size / samples) and ``proposal_fallback`` (bool).
    Raises:
        InvalidInputError: on wrong shapes.
    """
    B, N = _check_correspondences(x3d, x2d, w2d, K, depth_m)
    _check_shape("delta", delta, (B,))
    _check_shape("T_pred", T_pred, (B, 4, 4))
    _check_shape("covariance_pred", covariance_pred, (B, 6, 6))
    _check_shape("T_gt", T_gt, (B, 4, 4))
    dtype, device = x3d.dtype, x3d.device
    if B == 0:
        empty = torch.zeros(0, dtype=dtype, device=device)
        return empty, {"log_integral": empty, "cost_gt": empty, "ess_fraction": empty,
                       "proposal_fallback": torch.zeros(0, dtype=torch.bool, device=device)}

    def cost(R, t):
        return pnp_cost(R.to(dtype), t.to(dtype), x3d, x2d, w2d, K, delta, depth_m, depth_weight,
                        config.min_depth_m).to(_DTYPE)

    gt = Pose.from_matrix(T_gt.detach())
    cost_gt = cost(gt.R, gt.t)

    samples_t: list[torch.Tensor] = []
    samples_q: list[torch.Tensor] = []
    costs: list[torch.Tensor] = []
    proposals: list[tuple[_StudentT, _ACG]] = []
    with torch.no_grad():
        trans, rot, fallback = _initial_proposal(
            T_pred.detach().to(_DTYPE), covariance_pred.detach().to(_DTYPE), T_gt.detach().to(_DTYPE), config)
    # log_q[p][j]: log density of round j's samples under round p's proposal (S_round, B).
    log_q: list[list[torch.Tensor]] = []
    log_mix = None
    for round_index in range(config.rounds):
        with torch.no_grad():
            proposals.append((trans, rot))
            t_new = trans.sample(config.samples_per_round, generator)
            q_new = rot.sample(config.samples_per_round, generator)
            samples_t.append(t_new)
            samples_q.append(q_new)
        # Samples are constants: the cost has gradients w.r.t. the correspondences only.
        costs.append(cost(Pose.from_quaternion_xyzw(q_new, t_new).R, t_new))
        with torch.no_grad():
            t_all, q_all = torch.cat(samples_t), torch.cat(samples_q)
            # Only the new proposal on all samples and the old proposals on the new samples are new.
            for p, (st, acg) in enumerate(proposals[:-1]):
                log_q[p].append(st.log_prob(t_new) + acg.log_prob(q_new))
            log_q.append(list((trans.log_prob(t_all) + rot.log_prob(q_all)).split(config.samples_per_round)))
            stacked = torch.stack([torch.cat(row) for row in log_q])  # (rounds so far, S_all, B)
            log_mix = torch.logsumexp(stacked, dim=0) - math.log(len(proposals))  # (S_all, B)
            if round_index + 1 < config.rounds:
                weights = torch.softmax(-torch.cat(costs).detach() - log_mix, dim=0)
                trans = _StudentT.fit_weighted(t_all, weights, trans, config.min_translation_std_m)
                rot = rot.refit(q_all, weights, config.acg_fit_iterations, config.min_rotation_std_rad)

    log_w = -torch.cat(costs) - log_mix  # (S_all, B), gradient through the costs only
    n_samples = log_w.shape[0]
    log_integral = torch.logsumexp(log_w, dim=0) - math.log(n_samples)
    loss = cost_gt + log_integral
    with torch.no_grad():
        normalised = torch.softmax(log_w.detach(), dim=0)
        ess_fraction = 1.0 / (normalised * normalised).sum(0) / n_samples
    if bool(fallback.any()):
        logger.debug("monte_carlo_pose_loss: fallback proposal for %d of %d elements", int(fallback.sum()), B)
    diagnostics = {
        "log_integral": log_integral.detach().to(dtype),
        "cost_gt": cost_gt.detach().to(dtype),
        "ess_fraction": ess_fraction.to(dtype),
        "proposal_fallback": fallback,
    }
    return loss.to(dtype), diagnostics
