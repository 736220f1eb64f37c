"""The per-detection pose stage: depth lookup, hypothesis agreement, and poses on a rendered workcell."""
import numpy as np
import pytest
import torch

from pose_node.correspondence.estimator import crop_cell_depth, inlier_share
from pose_node.correspondence.network import cell_centres_px
from pose_node.detection.matching import crop_camera, crop_intrinsics

S, G = 128, 16


def test_crop_cell_depth_puts_points_on_the_observed_plane():
    K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
    depth = np.full((480, 640), 0.8)
    depth[:, :40] = np.nan  # no measurement
    outline = np.array([[500.0, 300.0], [600.0, 300.0], [600.0, 420.0], [500.0, 420.0]])  # off-axis
    R_cc, f = crop_camera(K, outline, S, 0.05)
    z = crop_cell_depth(depth, K, R_cc[None], np.array([f]), S, G)[0].numpy()
    assert np.isfinite(z).all()
    uv = cell_centres_px(G, dtype=torch.float64).numpy()
    p_crop = np.concatenate([(uv - (S - 1) / 2) / f, np.ones((len(uv), 1))], 1) * z[:, None]
    p_cam = p_crop @ R_cc.T
    np.testing.assert_allclose(p_cam[:, 2], 0.8, atol=1e-9)
    # A crop looking at the left edge sees the hole: NaN, not a made-up depth.
    left = np.array([[0.0, 200.0], [30.0, 200.0], [30.0, 230.0], [0.0, 230.0]])
    R_left, f_left = crop_camera(K, left, S, 0.05)
    z_left = crop_cell_depth(depth, K, R_left[None], np.array([f_left]), S, G)[0].numpy()
    assert np.isnan(z_left).mean() > 0.5


def test_inlier_share_counts_weighted_agreement():
    torch.manual_seed(0)
    K = torch.from_numpy(crop_intrinsics(np.array([300.0]), S))
    x3d = torch.randn(1, 100, 3, dtype=torch.float64) * 0.05
    T = torch.eye(4, dtype=torch.float64)[None]
    T[0, 2, 3] = 0.6
    p = x3d + T[:, None, :3, 3]
    x2d = (p[..., :2] / p[..., 2:]) * 300.0 + (S - 1) / 2
    x2d[0, :30] += 10.0  # 30 outliers
    w = torch.ones(1, 100, 2, dtype=torch.float64)
    assert float(inlier_share(x3d, x2d, w, K, T, 2.0)) == pytest.approx(0.7)
    w[0, :30] = 0.0
    assert float(inlier_share(x3d, x2d, w, K, T, 2.0)) == pytest.approx(1.0)
