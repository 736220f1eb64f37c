"""Covariance calibration: coverage of chi-square(6) regions."""
import numpy as np
import pytest
import torch
from box_scene import box_model, rot_z
from scipy.stats import chi2

from pose_node.core.geometry import Pose, perturb_pose
from pose_node.evaluation.calibration import (
    COVERAGE_LEVELS,
    closest_symmetric_pose,
    coverage_from_mahalanobis,
    covariance_coverage,
    mahalanobis_sq,
    pose_error_6d,
)

N = 4000


def _random_cov(rng):
    """A realistic SPD covariance: ~5 mm and ~2 degrees standard deviations, correlated."""
    A = rng.normal(size=(6, 6))
    Q, _ = np.linalg.qr(A)
    scales = np.array([5e-3, 3e-3, 8e-3, np.radians(2), np.radians(1), np.radians(3)])
    C = Q @ np.diag(rng.uniform(0.5, 1.5, 6)) @ Q.T
    return np.diag(scales) @ C @ np.diag(scales)


def _samples(rng, cov, symmetric_T=None):
    q = torch.as_tensor(rng.normal(size=(N, 4)))
    T_gt = Pose.from_quaternion_xyzw(q, torch.as_tensor(rng.normal(size=(N, 3)))).matrix().numpy()
    delta = rng.multivariate_normal(np.zeros(6), cov, size=N)
    base = T_gt if symmetric_T is None else T_gt @ symmetric_T
    T_est = perturb_pose(Pose.from_matrix(torch.as_tensor(base)), torch.as_tensor(delta)).matrix().numpy()
    return T_est, T_gt, delta


def test_error_inverts_perturbation():
    rng = np.random.default_rng(0)
    T_est, T_gt, delta = _samples(rng, _random_cov(rng))
    np.testing.assert_allclose(pose_error_6d(T_est, T_gt), delta, atol=1e-9)


def test_samples_from_the_covariance_are_covered_nominally():
    rng = np.random.default_rng(1)
    cov = _random_cov(rng)
    T_est, T_gt, _ = _samples(rng, cov)
    cov_b = np.broadcast_to(cov, (N, 6, 6))
    cover = covariance_coverage(T_est, cov_b, T_gt)
    for key, p in COVERAGE_LEVELS.items():
        mc_sigma = np.sqrt(p * (1 - p) / N)
        assert abs(cover[key] - p) < 4 * mc_sigma + 1e-3, (key, cover[key])


def test_overconfident_covariance_is_detected():
    rng = np.random.default_rng(2)
    cov = _random_cov(rng)
    T_est, T_gt, _ = _samples(rng, cov)
    cover = covariance_coverage(T_est, np.broadcast_to(cov / 4.0, (N, 6, 6)), T_gt)
    # d^2 is 4x larger: expected coverage chi2.cdf(q_p / 4, 6) = 0.06 / 0.21 / 0.41.
    for key, p in COVERAGE_LEVELS.items():
        expected = chi2.cdf(chi2.ppf(p, 6) / 4.0, 6)
        assert cover[key] == pytest.approx(expected, abs=0.03)
        assert cover[key] < p - 0.4


def test_symmetric_objects_use_the_closest_equivalent_gt():
    rng = np.random.default_rng(3)
    cov = _random_cov(rng)
    flip = rot_z(np.pi)
    T_est, T_gt, _ = _samples(rng, cov, symmetric_T=flip)
    syms = np.stack([np.eye(4), flip])
    model = box_model(1, [0.06, 0.04, 0.1], syms)
    cov_b = np.broadcast_to(cov, (N, 6, 6))
    cover = covariance_coverage(T_est, cov_b, T_gt, symmetries=syms, points=model.vertices.astype(float))
    assert abs(cover["68"] - 0.6827) < 0.03
    assert covariance_coverage(T_est, cov_b, T_gt)["99.7"] < 0.01  # ignoring the symmetry: all outside
    # Without points the rotation angle picks the equivalent.
    T_ref, angle = closest_symmetric_pose(T_gt[0] @ flip, T_gt[0], syms)
    np.testing.assert_allclose(T_ref, T_gt[0] @ flip, atol=1e-12)
    assert angle == pytest.approx(0.0, abs=1e-6)


def test_degenerate_covariances_count_as_outside():
    e = np.array([[0.0, 0, 0, 0, 0, 0], [1e-3, 0, 0, 0, 0, 0]])
    covs = np.stack([np.zeros((6, 6)), np.eye(6) * 1e-6])
    d2 = mahalanobis_sq(e, covs)
    assert d2[0] == np.inf and d2[1] == pytest.approx(1.0)
    assert coverage_from_mahalanobis(np.array([])) == {"68": None, "95": None, "99.7": None}
    assert coverage_from_mahalanobis(d2) == {"68": 0.5, "95": 0.5, "99.7": 0.5}
    with pytest.raises(ValueError, match="covariances"):
        mahalanobis_sq(e, np.eye(6))


def test_gaussian_nll_matches_scipy():
    from scipy.stats import multivariate_normal

    from pose_node.evaluation.calibration import gaussian_nll

    rng = np.random.default_rng(3)
    A = rng.normal(size=(4, 6, 6))
    cov = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(6)
    e = rng.normal(size=(4, 6))
    d2 = mahalanobis_sq(e, cov)
    expected = [-multivariate_normal(np.zeros(6), c).logpdf(x) for x, c in zip(e, cov)]
    np.testing.assert_allclose(gaussian_nll(d2, cov), expected, rtol=1e-9)
    bad = cov.copy()
    bad[0] = -np.eye(6)
    assert np.isinf(gaussian_nll(mahalanobis_sq(e, bad), bad)[0])


def test_coverage_by_bin_counts_each_bin_on_its_own():
    from scipy.stats import chi2

    from pose_node.evaluation.calibration import coverage_by_bin

    inside, outside = 0.5 * chi2.ppf(0.6827, 6), 2.0 * chi2.ppf(0.9973, 6)
    report = coverage_by_bin(np.array([inside, inside, outside, inside]), ["1 view", "1 view", "3+ views", "3+ views"])
    assert report["1 view"] == {"n": 2, "68": 1.0, "95": 1.0, "99.7": 1.0}
    assert report["3+ views"]["n"] == 2 and report["3+ views"]["95"] == 0.5
    with pytest.raises(ValueError, match="bin labels"):
        coverage_by_bin(np.zeros(3), ["a"])


def test_score_threshold_reaches_the_precision_and_keeps_the_most_correct_poses():
    from pose_node.evaluation.calibration import score_threshold_for_precision

    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    correct = [True, True, True, False, True, True, False, False]
    # Kept from the top: precisions 1, 1, 1, .75, .8, .83, .71, .63: at 0.8 precision the lowest is 0.4.
    assert score_threshold_for_precision(scores, correct, 0.8) == pytest.approx((0.4, 5 / 6, 1.0))
    assert score_threshold_for_precision(scores, correct, 0.95) == pytest.approx((0.7, 1.0, 0.6))
    # Ties: a threshold keeps every estimate with that score, so a tie with a wrong pose cannot be split.
    assert score_threshold_for_precision([0.9, 0.9], [True, False], 0.9)[0] > 0.9
    threshold, precision, recall = score_threshold_for_precision([0.5], [False], 0.95)
    assert threshold > 0.5 and np.isnan(precision) and recall == 0.0
