"""Look-at cameras and icosphere viewpoints."""
from __future__ import annotations

import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.render.viewpoints import look_at_T_camera_object, sphere_viewpoints


@pytest.mark.parametrize("subdivisions, count", [(0, 12), (1, 42), (2, 162)])
def test_sphere_viewpoints_look_at_the_target_from_the_given_distance(subdivisions, count):
    target = np.array([0.01, -0.02, 0.05])
    T = sphere_viewpoints(subdivisions, 0.4, target)
    assert T.shape == (count, 4, 4)
    R = T[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    target_cam = np.einsum("nij,j->ni", R, target) + T[:, :3, 3]
    np.testing.assert_allclose(target_cam, np.tile([0.0, 0.0, 0.4], (count, 1)), atol=1e-12)


def test_look_at_keeps_object_up_pointing_up_in_the_image():
    T = look_at_T_camera_object(np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.3]]), np.zeros(3))
    up_cam = T[:, :3, :3] @ np.array([0.0, 0.0, 1.0])
    assert np.all(up_cam[:, 1] < -0.5)  # image y points down
    np.testing.assert_allclose(T[0, :3, :3], [[0, 1, 0], [0, 0, -1], [-1, 0, 0]], atol=1e-12)  # rows: x, y, z axes


def test_look_at_along_the_up_axis_and_degenerate_input():
    T = look_at_T_camera_object(np.array([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]]), np.zeros(3))
    assert np.all(np.isfinite(T))
    np.testing.assert_allclose(np.linalg.det(T[:, :3, :3]), 1.0)
    np.testing.assert_allclose(T[:, 2, 3], 2.0)
    with pytest.raises(InvalidInputError, match="eye_obj"):
        look_at_T_camera_object(np.zeros((1, 3)), np.zeros(3))
