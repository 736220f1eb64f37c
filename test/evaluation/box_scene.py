"""Test helpers: box objects, an exact ray-cast depth renderer for boxes, tiny BOP scenes."""
from __future__ import annotations

import numpy as np

from helpers import scene
from pose_node.core import ObjectModel

K_SMALL = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]])
W_SMALL, H_SMALL = 160, 120


def box_model(obj_id: int, extents, symmetries: np.ndarray | None = None) -> ObjectModel:
    """An axis-aligned box centred on the object origin (8 vertices, 12 faces), metres."""
    return scene.box_model(
        np.asarray(extents, dtype=np.float64), obj_id, name=f"box{obj_id}",
        vertex_colors=np.tile(np.array([[40 * obj_id % 255, 120, 200]], np.uint8), (8, 1)),
        symmetries=None if symmetries is None else np.asarray(symmetries, np.float64),
    )


def rot_z(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def rot_x(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    T = np.eye(4)
    T[1:3, 1:3] = [[c, -s], [s, c]]
    return T


def translation(x, y, z) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = [x, y, z]
    return T


def render_box_depth(K, T_camera_object, width, height, half_extents) -> np.ndarray:
    """Exact z-buffer of an axis-aligned box (slab ray casting through pixel centres).

    Returns (H, W) float32 depth along z, metres, 0 where the box is not hit.
    """
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(T_camera_object, dtype=np.float64)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1
    R, t = T[:3, :3], T[:3, 3]
    o = -R.T @ t
    d = d_cam @ R  # R^T d per pixel
    hi = np.asarray(half_extents, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-hi - o) * inv
        t2 = (hi - o) * inv
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    hit = (t_far >= t_near) & (t_near > 0)
    return np.where(hit, t_near, 0.0).astype(np.float32)


class BoxDepthRenderer:
    """A :data:`pose_node.evaluation.metrics.DepthRenderer` for box models (counts its calls)."""

    def __init__(self, models):
        self.half_extents = {m.object_id: (m.vertices.max(0) - m.vertices.min(0)) / 2.0 for m in models}
        self.calls = 0

    def __call__(self, obj_id, K, T_camera_object, width, height):
        self.calls += 1
        return render_box_depth(K, T_camera_object, width, height, self.half_extents[obj_id])


def render_scene(renderer: BoxDepthRenderer, K, width, height, instances):
    """Depth, unoccluded masks and visible masks of several boxes.

    Args: instances: list of (obj_id, T_camera_object).
    Returns: depth (H, W) float32 (0 background), masks list, masks_visib list.
    """
    depths = [renderer(o, K, T, width, height) for o, T in instances]
    stack = np.stack([np.where(d > 0, d, np.inf) for d in depths])
    nearest = stack.min(0)
    scene_depth = np.where(np.isfinite(nearest), nearest, 0.0).astype(np.float32)
    owner = stack.argmin(0)
    masks = [d > 0 for d in depths]
    visib = [(owner == i) & masks[i] for i in range(len(instances))]
    return scene_depth, masks, visib
