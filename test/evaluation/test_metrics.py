"""Hand-computed checks of the BOP pose-error functions."""
import numpy as np
import pytest
from box_scene import H_SMALL, K_SMALL, W_SMALL, BoxDepthRenderer, box_model, render_box_depth, rot_x, rot_z, translation

from pose_node.evaluation import metrics
from pose_node.onboarding.mesh_loading import symmetry_transforms

EXTENTS = np.array([0.06, 0.04, 0.10])
BOX = box_model(1, EXTENTS)
PTS = BOX.vertices.astype(np.float64)
SYM_180_Z = np.stack([np.eye(4), rot_z(np.pi)])
T_GT = translation(0.01, -0.02, 0.5) @ rot_x(0.3) @ rot_z(0.2)


def test_identity_pose_gives_zero_errors():
    assert metrics.mssd(T_GT, T_GT, PTS) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mspd(T_GT, T_GT, K_SMALL, PTS) == pytest.approx(0.0, abs=1e-9)
    assert metrics.add(T_GT, T_GT, PTS) == pytest.approx(0.0, abs=1e-12)
    assert metrics.add_s(T_GT, T_GT, PTS) == pytest.approx(0.0, abs=1e-12)
    assert metrics.rotation_error_deg(T_GT, T_GT) == pytest.approx(0.0, abs=1e-5)
    assert metrics.translation_error_m(T_GT, T_GT) == 0.0
    ren = BoxDepthRenderer([BOX])
    depth = ren(1, K_SMALL, T_GT, W_SMALL, H_SMALL)
    np.testing.assert_array_equal(
        metrics.vsd(ren, 1, T_GT, T_GT, depth, K_SMALL, BOX.diameter_m), np.zeros(len(metrics.VSD_TAUS))
    )


def test_translation_offset():
    offset = np.array([0.02, 0.0, 0.0])
    T_est = translation(*offset) @ T_GT
    assert metrics.mssd(T_est, T_GT, PTS) == pytest.approx(0.02, abs=1e-12)
    assert metrics.add(T_est, T_GT, PTS) == pytest.approx(0.02, abs=1e-12)
    assert metrics.translation_error_m(T_est, T_GT) == pytest.approx(0.02)
    # Planar points at z = 0 seen face-on at 1 m: every projection moves by fx * dx / z.
    planar = np.array([[0.03, 0.02, 0.0], [-0.03, 0.01, 0.0], [0.0, -0.02, 0.0]])
    T_face = translation(0.0, 0.0, 1.0)
    assert metrics.mspd(translation(*offset) @ T_face, T_face, K_SMALL, planar) == pytest.approx(150.0 * 0.02)
    # Points at several depths: the maximum shift is at the nearest point.
    deep = np.array([[0.0, 0.0, -0.2], [0.0, 0.0, 0.0], [0.0, 0.0, 0.3]])
    assert metrics.mspd(translation(*offset) @ T_face, T_face, K_SMALL, deep) == pytest.approx(150.0 * 0.02 / 0.8)


def test_symmetric_object_rotated_by_its_symmetry():
    T_est = T_GT @ rot_z(np.pi)
    assert metrics.mssd(T_est, T_GT, PTS, SYM_180_Z) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mspd(T_est, T_GT, K_SMALL, PTS, SYM_180_Z) == pytest.approx(0.0, abs=1e-9)
    # Without the symmetry, every vertex moves to its opposite in x-y: 2 * half-diagonal.
    assert metrics.mssd(T_est, T_GT, PTS) == pytest.approx(np.hypot(0.06, 0.04), abs=1e-7)
    # The box maps onto itself, so ADD-S is 0 while ADD is not.
    assert metrics.add_s(T_est, T_GT, PTS) == pytest.approx(0.0, abs=1e-7)
    assert metrics.add(T_est, T_GT, PTS) == pytest.approx(np.hypot(0.06, 0.04), abs=1e-7)
    assert metrics.rotation_error_deg(T_est, T_GT) == pytest.approx(180.0, abs=1e-4)


def test_continuous_symmetry_discretization_bounds_the_error():
    syms = symmetry_transforms({"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]})
    T_est = T_GT @ rot_z(1.2345)
    e = metrics.mssd(T_est, T_GT, PTS, syms)
    radius = np.hypot(0.03, 0.02)
    assert e <= radius * np.pi / np.ceil(np.pi / 0.01) + 1e-9
    assert metrics.mssd(T_est, T_GT, PTS) > 0.03


def test_batch_shapes():
    T_est = np.stack([np.stack([translation(0.001 * (i + j), 0, 0) @ T_GT for j in range(2)]) for i in range(4)])
    T_gt = np.broadcast_to(T_GT, (4, 2, 4, 4))
    for fn in (lambda a, b: metrics.mssd(a, b, PTS, SYM_180_Z), lambda a, b: metrics.mspd(a, b, K_SMALL, PTS),
               lambda a, b: metrics.add(a, b, PTS), lambda a, b: metrics.add_s(a, b, PTS),
               metrics.rotation_error_deg, metrics.translation_error_m):
        assert np.shape(fn(T_est, T_gt)) == (4, 2)
    np.testing.assert_allclose(metrics.mssd(T_est, T_gt, PTS)[:, 1], 0.001 * (np.arange(4) + 1), atol=1e-12)
    with pytest.raises(ValueError, match="4, 4"):
        metrics.mssd(np.eye(3), np.eye(3), PTS)
    with pytest.raises(ValueError, match="N, 3"):
        metrics.mssd(T_GT, T_GT, np.zeros((0, 3)))


def test_rotation_error_known_angle():
    assert metrics.rotation_error_deg(T_GT @ rot_x(np.radians(90)), T_GT) == pytest.approx(90.0)
    assert metrics.rotation_error_deg(rot_z(np.radians(10)), np.eye(4)) == pytest.approx(10.0)


def test_depth_to_distance():
    depth = np.full((H_SMALL, W_SMALL), 2.0)
    dist = metrics.depth_to_distance(depth, K_SMALL)
    x, y = (0 - 79.5) / 150.0, (0 - 59.5) / 150.0
    assert dist[0, 0] == pytest.approx(2.0 * np.sqrt(1 + x * x + y * y))
    assert dist[60, 80] == pytest.approx(2.0 * np.sqrt(1 + (0.5 / 150) ** 2 * 2))


def test_vsd_hand_computed_squares():
    """Two 40x40 squares at 1 m, the estimate 10 px to the right and 12 mm deeper."""
    h, w = H_SMALL, W_SMALL
    gt = np.zeros((h, w))
    gt[40:80, 40:80] = 1.0
    est = np.zeros((h, w))
    est[40:80, 50:90] = 1.012
    diameter = 0.1
    errors = metrics.vsd_from_depths(est, gt, gt.copy(), K_SMALL, diameter)
    # Union 2000 px, intersection 1200 px; in the intersection |dist difference| = 12 mm * r
    # with 1 <= r < 1.011 (0.12 r of the diameter): a cost for tau <= 0.1 only.
    expected = np.array([(1200 + 800) / 2000] * 2 + [800 / 2000] * 8)
    np.testing.assert_allclose(errors, expected)
    # A visibility tolerance below the depth offset changes nothing here: the estimate is behind
    # the GT surface but visible there through visib_gt.
    np.testing.assert_allclose(metrics.vsd_from_depths(est, gt, gt, K_SMALL, diameter, delta_m=0.005), expected)
    # Neither pose visible -> error 1.
    zero = np.zeros((h, w))
    np.testing.assert_array_equal(metrics.vsd_from_depths(zero, zero, gt, K_SMALL, diameter), np.ones(10))
    # Occluded GT: the test depth is 0.2 m in front of everything -> nothing visible -> 1.
    occluder = np.full((h, w), 0.8)
    np.testing.assert_array_equal(metrics.vsd_from_depths(est, gt, occluder, K_SMALL, diameter), np.ones(10))


def test_vsd_box_with_known_lateral_shift():
    """A thin plate facing the camera, shifted sideways by 4 px: error = 1 - overlap / union."""
    plate = box_model(2, [0.1, 0.1, 0.002])
    ren = BoxDepthRenderer([plate])
    T_gt = translation(0.0, 0.0, 0.375)  # 0.1 m -> 40 px at fx = 150
    T_est = translation(0.01, 0.0, 0.0) @ T_gt  # 0.01 m -> 4 px
    depth_test = ren(2, K_SMALL, T_gt, W_SMALL, H_SMALL)
    errors = metrics.vsd(ren, 2, T_est, T_gt, depth_test, K_SMALL, plate.diameter_m)
    expected = 1.0 - (40 * 36) / (40 * 44)
    np.testing.assert_allclose(errors, expected, atol=1e-9)  # edges fall between pixel centres
    # Depth shift of the same plate by 0.1 diameters: taus <= 0.1 see a mismatch everywhere.
    T_far = translation(0.0, 0.0, 0.1 * plate.diameter_m) @ T_gt
    errors = metrics.vsd(ren, 2, T_far, T_gt, depth_test, K_SMALL, plate.diameter_m)
    assert errors[0] == pytest.approx(1.0) and errors[1] == pytest.approx(1.0)  # tau 0.05, 0.1
    # Only the silhouette shrinkage remains: 40 px * 0.375 / 0.3891 = 38.5 px -> 38 x 38 pixels.
    np.testing.assert_allclose(errors[2:], 1.0 - 38**2 / 40**2)


def test_vsd_skips_rendering_when_spheres_do_not_overlap():
    ren = BoxDepthRenderer([BOX])
    depth = render_box_depth(K_SMALL, T_GT, W_SMALL, H_SMALL, EXTENTS / 2)
    far = translation(0.5, 0.0, 0.0) @ T_GT
    np.testing.assert_array_equal(metrics.vsd(ren, 1, far, T_GT, depth, K_SMALL, BOX.diameter_m), np.ones(10))
    assert ren.calls == 0
    assert metrics.mspd_scale(160) == 4.0


def test_vectorized_errors_match_a_per_symmetry_loop():
    """The bop_toolkit formulation (loop over symmetries), on random points and a continuous axis."""
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(300, 3)) * [0.03, 0.05, 0.02]
    syms = symmetry_transforms({"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 10.0]}]})
    T_gt = translation(0.02, -0.01, 0.7) @ rot_x(0.4)
    T_est = translation(0.004, 0.002, -0.003) @ T_gt @ rot_z(0.9) @ rot_x(0.05)
    ref_mssd = min(np.linalg.norm(metrics.transform_points(T_est, pts) - metrics.transform_points(T_gt @ S, pts), axis=1).max()
                   for S in syms)
    ref_mspd = min(np.linalg.norm(metrics.project_points(K_SMALL, T_est, pts) - metrics.project_points(K_SMALL, T_gt @ S, pts),
                                  axis=1).max() for S in syms)
    assert metrics.mssd(T_est, T_gt, pts, syms) == pytest.approx(ref_mssd, rel=1e-12)
    assert metrics.mssd(T_est, T_gt, metrics.hull_points(pts), syms) == pytest.approx(ref_mssd, rel=1e-12)
    assert metrics.mspd(T_est, T_gt, K_SMALL, pts, syms) == pytest.approx(ref_mspd, rel=1e-12)
    assert len(metrics.hull_points(pts)) < len(pts)
