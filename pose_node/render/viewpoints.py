"""Camera poses looking at an object: look-at and viewpoints spread over a sphere (templates)."""
from __future__ import annotations

import numpy as np
import trimesh

from pose_node.core.errors import InvalidInputError


def look_at_T_camera_object(eye_obj: np.ndarray, target_obj: np.ndarray, up_obj=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Optical-frame cameras (x right, y down, z forward) at ``eye_obj`` looking at ``target_obj``.

    The image "up" (-y) follows ``up_obj`` projected onto the image plane; where the viewing
    direction is (anti)parallel to ``up_obj``, the object's y axis (then x) is used instead.

    Args:
        eye_obj: (N, 3) camera centres, metres, object frame.
        target_obj: (3,) or (N, 3) points to look at, object frame.
        up_obj: (3,) up direction in the object frame.
    Returns:
        (N, 4, 4) float64 ``T_camera_object``.
    """
    eye = np.asarray(eye_obj, dtype=np.float64).reshape(-1, 3)
    z = np.broadcast_to(np.asarray(target_obj, dtype=np.float64), eye.shape) - eye
    dist = np.linalg.norm(z, axis=1, keepdims=True)
    if np.any(dist < 1e-12):
        raise InvalidInputError("eye_obj: a camera centre coincides with its target")
    z = z / dist
    up = np.broadcast_to(np.asarray(up_obj, dtype=np.float64), eye.shape).copy()
    for fallback in ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)):
        parallel = np.linalg.norm(np.cross(z, up), axis=1) < 1e-6
        up[parallel] = fallback
    x = np.cross(z, up)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    T = np.tile(np.eye(4), (len(eye), 1, 1))
    T[:, :3, :3] = np.stack([x, y, z], axis=1)  # rows: camera axes in the object frame = R_camera_object
    T[:, :3, 3] = -np.einsum("nij,nj->ni", T[:, :3, :3], eye)
    return T


def sphere_viewpoints(subdivisions: int, distance_m: float, target_obj=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Cameras on the vertices of an icosphere around ``target_obj``, all looking at it.

    ``subdivisions`` 0, 1, 2, 3 give 12, 42, 162, 642 viewpoints (the CNOS template counts).

    Returns:
        (V, 4, 4) float64 ``T_camera_object``.
    """
    if subdivisions < 0 or distance_m <= 0:
        raise InvalidInputError(f"sphere_viewpoints: need subdivisions >= 0 and distance_m > 0, got {subdivisions}, {distance_m}")
    directions = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0).vertices
    target = np.asarray(target_obj, dtype=np.float64)
    return look_at_T_camera_object(target + distance_m * directions, target)
