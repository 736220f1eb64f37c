"""Covariance calibration: do the reported 6x6 pose covariances match the actual errors?

The 6-D error is the ROS-convention perturbation taking the GT pose to the estimate
(:func:`pose_node.core.geometry.pose_difference`): ``e = (t_est - t_gt, Log(R_est R_gt^T))``,
metres and radians about the fixed parent axes, the same convention as
``PoseEstimate.covariance``. For a calibrated Gaussian estimator ``d^2 = e^T Sigma^-1 e`` follows a
chi-square law with 6 degrees of freedom, so the fraction of estimates with ``d^2`` below
``chi2.ppf(p, 6)`` should be ``p`` for p = 68.27 / 95.45 / 99.73 % (the 1/2/3-sigma masses).

Symmetric objects: the error is taken w.r.t. the symmetry-equivalent GT pose closest to the
estimate (smallest maximum vertex displacement, i.e. the MSSD argmin).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.stats import chi2

from pose_node.core.geometry import Pose, pose_difference
from pose_node.evaluation.metrics import transform_points

#: Coverage levels reported, keyed as in results.json: the 1, 2 and 3 sigma probability masses.
COVERAGE_LEVELS: Mapping[str, float] = {"68": 0.6827, "95": 0.9545, "99.7": 0.9973}
POSE_DOF = 6


def pose_error_6d(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """ROS-convention 6-D error of estimates w.r.t. GT.

    Args:
        T_est, T_gt: (..., 4, 4) poses in the same parent frame, metres.
    Returns:
        (..., 6) ``(t_est - t_gt, Log(R_est R_gt^T))``, metres and radians.
    """
    est = Pose.from_matrix(torch.as_tensor(np.asarray(T_est, dtype=np.float64)))
    gt = Pose.from_matrix(torch.as_tensor(np.asarray(T_gt, dtype=np.float64)))
    return pose_difference(est, gt).numpy()


def closest_symmetric_pose(T_est: np.ndarray, T_gt: np.ndarray, symmetries: np.ndarray | None,
                           points: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The symmetry-equivalent GT pose ``T_gt @ S_k`` closest to the estimate.

    Args:
        T_est, T_gt: (4, 4) metres.
        symmetries: (S, 4, 4) T_obj_objsym incl. identity; None = identity only.
        points: (N, 3) model vertices, metres: closeness = max vertex displacement (MSSD). Without
            points: the geodesic rotation angle, ties broken by translation distance.
    Returns:
        The (4, 4) closest equivalent and its distance (metres, or radians without points).
    """
    T_est = np.asarray(T_est, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    S = np.eye(4)[None] if symmetries is None else np.asarray(symmetries, dtype=np.float64)
    candidates = T_gt @ S  # (S, 4, 4)
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        diff = transform_points(T_est, pts)[None] - transform_points(candidates, pts)
        cost = np.sqrt((diff * diff).sum(-1)).max(-1)
    else:
        tr = np.einsum("ij,sij->s", T_est[:3, :3], candidates[:, :3, :3])
        angle = np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))
        cost = angle + 1e-9 * np.linalg.norm(candidates[:, :3, 3] - T_est[:3, 3], axis=-1)
    k = int(np.argmin(cost))
    return candidates[k], float(cost[k])


def mahalanobis_sq(errors: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances ``e^T Sigma^-1 e``.

    Args:
        errors: (B, 6); covariances: (B, 6, 6).
    Returns:
        (B,); inf where a covariance is not positive definite (an unusable covariance counts as
        outside every region, never as inside).
    """
    errors = np.asarray(errors, dtype=np.float64)
    covariances = np.asarray(covariances, dtype=np.float64)
    if errors.ndim != 2 or covariances.shape != (*errors.shape, errors.shape[-1]):
        raise ValueError(f"expected errors (B, D) and covariances (B, D, D), got {errors.shape} and {covariances.shape}")
    out = np.full(len(errors), np.inf)
    for b in range(len(errors)):
        try:
            L = np.linalg.cholesky(covariances[b])
        except np.linalg.LinAlgError:
            continue
        if not np.all(np.isfinite(L)):
            continue
        y = np.linalg.solve(L, errors[b])
        out[b] = float(y @ y)
    return out


def coverage_from_mahalanobis(d2: np.ndarray, levels: Mapping[str, float] = COVERAGE_LEVELS,
                              dof: int = POSE_DOF) -> dict[str, float | None]:
    """Fraction of ``d2`` inside each chi-square(dof) region; None for every level when empty."""
    d2 = np.asarray(d2, dtype=np.float64)
    if d2.size == 0:
        return {k: None for k in levels}
    return {k: float(np.mean(d2 <= chi2.ppf(p, dof))) for k, p in levels.items()}


def covariance_coverage(
    T_est: np.ndarray,
    covariances: np.ndarray,
    T_gt: np.ndarray,
    symmetries: Sequence[np.ndarray | None] | np.ndarray | None = None,
    points: Sequence[np.ndarray | None] | np.ndarray | None = None,
    levels: Mapping[str, float] = COVERAGE_LEVELS,
) -> dict[str, float | None]:
    """Coverage of the chi-square(6) regions by paired estimates and GT poses.

    Args:
        T_est: (B, 4, 4) estimates; covariances: (B, 6, 6) in the ROS convention, same frame.
        T_gt: (B, 4, 4) the GT matched to each estimate.
        symmetries: None, one (S, 4, 4) array for all, or a per-estimate sequence.
        points: None, one (N, 3) array for all, or a per-estimate sequence (see
            :func:`closest_symmetric_pose`).
    Returns:
        level key -> fraction in [0, 1] (None when B = 0).
    """
    T_est = np.asarray(T_est, dtype=np.float64).reshape(-1, 4, 4)
    T_gt = np.asarray(T_gt, dtype=np.float64).reshape(-1, 4, 4)
    B = len(T_est)
    per_sym = symmetries if isinstance(symmetries, (list, tuple)) else [symmetries] * B
    per_pts = points if isinstance(points, (list, tuple)) else [points] * B
    T_ref = np.stack([closest_symmetric_pose(T_est[b], T_gt[b], per_sym[b], per_pts[b])[0] for b in range(B)]) if B else T_gt
    d2 = mahalanobis_sq(pose_error_6d(T_est, T_ref), np.asarray(covariances, dtype=np.float64).reshape(-1, 6, 6))
    return coverage_from_mahalanobis(d2, levels)


def gaussian_nll(d2: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each error under its Gaussian: ``(d2 + log det(2 pi Sigma)) / 2``.

    Units are those of the covariance (metres and radians), so values compare between methods on
    the same targets, not between datasets.

    Args:
        d2: (B,) squared Mahalanobis distances (:func:`mahalanobis_sq`); covariances: (B, 6, 6).
    Returns:
        (B,); inf where ``d2`` is inf or the covariance is not positive definite.
    """
    d2 = np.asarray(d2, dtype=np.float64)
    covariances = np.asarray(covariances, dtype=np.float64).reshape(len(d2), POSE_DOF, POSE_DOF)
    sign, logdet = np.linalg.slogdet(2.0 * np.pi * covariances) if len(d2) else (np.zeros(0), np.zeros(0))
    return np.where((sign > 0) & np.isfinite(d2), 0.5 * (d2 + logdet), np.inf)


def coverage_by_bin(d2: np.ndarray, keys: Sequence, levels: Mapping[str, float] = COVERAGE_LEVELS
                    ) -> dict[str, dict[str, float | int | None]]:
    """Coverage of each level and the estimate count per bin.

    Args:
        d2: (B,) squared Mahalanobis distances; keys: B bin labels (any printable values).
    Returns:
        ``str(label) -> {"n": count, level key: coverage, ...}``, labels in sorted order.
    """
    d2 = np.asarray(d2, dtype=np.float64)
    labels = np.asarray([str(k) for k in keys], dtype=object)
    if len(labels) != len(d2):
        raise ValueError(f"coverage_by_bin: {len(d2)} distances but {len(labels)} bin labels")
    return {label: {"n": int((labels == label).sum()), **coverage_from_mahalanobis(d2[labels == label], levels)}
            for label in sorted(set(labels.tolist()))}


def score_threshold_for_precision(scores: Sequence[float], correct: Sequence[bool], min_precision: float
                                  ) -> tuple[float, float, float]:
    """The lowest score threshold whose kept estimates are correct at least ``min_precision`` of the time.

    Estimates with ``score >= threshold`` are kept (published). Among all thresholds at which the
    kept set's precision reaches ``min_precision``, the lowest keeps the most correct poses.

    Args:
        scores: (B,) estimate scores in [0, 1]; correct: (B,) whether each estimate is right.
        min_precision: required share of correct estimates among those kept, in (0, 1].
    Returns:
        ``(threshold, precision, recall)``: recall is the share of correct estimates kept. When no
        threshold reaches the precision, the threshold is just above the highest score (nothing
        is kept) with precision nan and recall 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if s.shape != c.shape or s.ndim != 1:
        raise ValueError(f"score_threshold_for_precision: scores {s.shape} and correct {c.shape} must be equal 1-D shapes")
    if not 0.0 < min_precision <= 1.0:
        raise ValueError(f"score_threshold_for_precision: min_precision must be in (0, 1], got {min_precision}")
    order = np.argsort(-s, kind="stable")
    s_sorted, c_sorted = s[order], c[order]
    kept_correct = np.cumsum(c_sorted)
    precision = kept_correct / np.arange(1, len(s) + 1)
    # A threshold equal to a score keeps every estimate with that score: only the last of a run of ties counts.
    last_of_ties = np.r_[s_sorted[1:] != s_sorted[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    ok = np.flatnonzero(last_of_ties & (precision >= min_precision))
    if not len(ok):
        return (float(s.max()) + 1e-6 if len(s) else 0.0), float("nan"), 0.0
    i = int(ok[-1])
    total_correct = max(int(c.sum()), 1)
    return float(s_sorted[i]), float(precision[i]), float(kept_correct[i] / total_correct)


__all__ = ["COVERAGE_LEVELS", "POSE_DOF", "closest_symmetric_pose", "coverage_by_bin", "covariance_coverage",
           "coverage_from_mahalanobis", "gaussian_nll", "mahalanobis_sq", "pose_error_6d", "score_threshold_for_precision"]
