"""The one pinhole projection: known values, the pixel-centre rule, numpy and torch agree."""
import math

import numpy as np
import torch
from helpers.pnp_scene import F64, make_K

from pose_node.core.geometry import so3_exp
from pose_node.core.projection import project_cam_np, project_points

K = np.array([[500.0, 0.0, 319.5], [0.0, 480.0, 239.5], [0.0, 0.0, 1.0]])


def test_optical_axis_lands_on_principal_point_without_half_pixel_shift():
    uv = project_cam_np(np.array([[0.0, 0.0, 2.0]]), K)
    np.testing.assert_array_equal(uv, [[319.5, 239.5]])


def test_known_values_numpy():
    uv = project_cam_np(np.array([[0.1, -0.2, 2.0], [0.0, 0.5, 1.0]]), K)
    np.testing.assert_allclose(uv, [[319.5 + 25.0, 239.5 - 48.0], [319.5, 239.5 + 240.0]], rtol=0, atol=1e-12)


def test_min_depth_guards_the_division_and_leaves_points_in_front_exact():
    p_cam = np.array([[0.1, 0.0, -1.0], [0.1, 0.0, 0.0], [0.1, -0.2, 2.0]])
    uv = project_cam_np(p_cam, K, min_depth_m=0.5)
    assert np.isfinite(uv).all()
    np.testing.assert_array_equal(uv[2], project_cam_np(p_cam[2:], K)[0])


def test_torch_matches_numpy_batched(device):
    rng = np.random.default_rng(0)
    p_obj = rng.uniform(-0.1, 0.1, (2, 5, 3))
    t = np.array([[0.0, 0.0, 1.0], [0.05, -0.02, 0.7]])
    uv_t, z_t = project_points(torch.tensor(p_obj, device=device), torch.eye(3, dtype=torch.float64, device=device).expand(2, 3, 3),
                               torch.tensor(t, device=device), torch.tensor(K, device=device))
    assert uv_t.device == torch.device(device) and z_t.device == torch.device(device)
    uv_t, z_t = uv_t.cpu(), z_t.cpu()
    p_cam = p_obj + t[:, None]
    np.testing.assert_allclose(uv_t.numpy(), project_cam_np(p_cam, K), rtol=0, atol=1e-9)
    np.testing.assert_allclose(z_t.numpy(), p_cam[..., 2], rtol=0, atol=1e-15)
    assert uv_t.shape == (2, 5, 2)


def test_project_points_known_values():
    x3d = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, -0.05, 0.1]], dtype=F64)
    K = make_K(1)[0]
    t = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    uv, z = project_points(x3d, torch.eye(3, dtype=F64), t, K)
    expected = torch.tensor([[320.0, 240.0], [380.0, 240.0], [320.0, 240.0 - 600.0 * 0.05 / 1.1]], dtype=F64)
    torch.testing.assert_close(uv, expected)
    torch.testing.assert_close(z, torch.tensor([1.0, 1.0, 1.1], dtype=F64))
    # 90 degrees about the optical axis: object x goes to camera y (down in the image).
    Rz = so3_exp(torch.tensor([0.0, 0.0, math.pi / 2], dtype=F64))
    uv, _ = project_points(x3d[1:2], Rz, t, K)
    torch.testing.assert_close(uv, torch.tensor([[320.0, 300.0]], dtype=F64))
    # skew enters u only
    uv, _ = project_points(torch.tensor([[0.0, 0.1, 0.0]], dtype=F64), torch.eye(3, dtype=F64), t, make_K(1, skew=10.0)[0])
    torch.testing.assert_close(uv, torch.tensor([[321.0, 300.0]], dtype=F64))
