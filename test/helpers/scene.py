"""Synthetic-scene pieces shared by the tests: one ``look_at`` and one box model."""
from __future__ import annotations

import numpy as np
import trimesh

from pose_node.core.types import ObjectModel


def look_at(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``T_world_camera`` (4, 4) of an optical frame at ``eye`` looking at ``target`` (metres, world z up).

    Image x (right) is horizontal; the viewing ray must not be vertical.
    """
    z = np.asarray(target, float) - np.asarray(eye, float)
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    T[:3, 3] = eye
    return T


def box_model(extents_m, object_id: int = 1, *, name: str = "box", vertex_colors: np.ndarray | None = None,
              symmetries: np.ndarray | None = None) -> ObjectModel:
    """An axis-aligned box centred on the object origin (8 vertices, 12 faces), metres.

    Args:
        extents_m: (3,) side lengths, metres.
        vertex_colors: (8, 3) uint8 or None. symmetries: (S, 4, 4) or None (identity only).
    """
    mesh = trimesh.creation.box(extents=extents_m)
    return ObjectModel(
        object_id=object_id, name=name, vertices=np.asarray(mesh.vertices, np.float32), faces=np.asarray(mesh.faces, np.int32),
        normals=np.asarray(mesh.vertex_normals, np.float32), diameter_m=float(np.linalg.norm(mesh.extents)),
        vertex_colors=vertex_colors, symmetries=np.eye(4)[None] if symmetries is None else symmetries,
    )


def raycast_table_scene(K: np.ndarray, T_world_camera: np.ndarray, width: int, height: int,
                        boxes: list[tuple[float, float, float, float, float]], *, table_sag_m_per_m2: float = 0.0,
                        table_half_size_m: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Exact depth of axis-aligned boxes standing on a table, by ray casting (no GL needed).

    The table top is ``z = table_sag_m_per_m2 * (x^2 + y^2)`` (world metres; 0: the plane z = 0;
    positive: a bowl, raised by that many metres at 1 m from the centre) within
    ``|x|, |y| <= table_half_size_m``; beyond it nothing is seen (depth 0).

    Args:
        K: (3, 3) pixels. T_world_camera: (4, 4) metres.
        boxes: (x_min, x_max, y_min, y_max, z_top) world metres, each standing on z = 0.
    Returns:
        depth (H, W) float32 metres along the optical axis (0: nothing), labels (H, W) int32
        (0 table or nothing, k + 1 box k).
    """
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1
    R, origin = T_world_camera[:3, :3], T_world_camera[:3, 3]
    d = rays_cam @ R.T  # world direction per unit camera depth
    best = np.full((height, width), np.inf)
    labels = np.zeros((height, width), np.int32)
    # Table: solve origin_z + t d_z = k ((ox + t dx)^2 + (oy + t dy)^2) for the nearest t > 0.
    k = table_sag_m_per_m2
    a = k * (d[..., 0] ** 2 + d[..., 1] ** 2)
    b = 2 * k * (origin[0] * d[..., 0] + origin[1] * d[..., 1]) - d[..., 2]
    c = k * (origin[0] ** 2 + origin[1] ** 2) - origin[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        if k == 0:
            t = -c / b
        else:
            disc = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
            roots = np.stack([(-b - disc) / (2 * a), (-b + disc) / (2 * a)])
            roots[roots <= 0] = np.inf
            t = roots.min(0)
    hit = np.isfinite(t) & (t > 0)
    p = origin + t[..., None] * d
    hit &= (np.abs(p[..., 0]) <= table_half_size_m) & (np.abs(p[..., 1]) <= table_half_size_m)
    best[hit] = t[hit]
    for index, (x0, x1, y0, y1, z1) in enumerate(boxes, start=1):
        lo, hi = np.array([x0, y0, 0.0]), np.array([x1, y1, z1])
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = (lo - origin) / d
            t1 = (hi - origin) / d
        t_near = np.nanmax(np.minimum(t0, t1), axis=-1)
        t_far = np.nanmin(np.maximum(t0, t1), axis=-1)
        inside = (t_near <= t_far) & (t_near > 0) & (t_near < best)
        best[inside] = t_near[inside]
        labels[inside] = index
    depth = np.where(np.isfinite(best), best, 0.0).astype(np.float32)  # t is the camera depth (ray z = 1)
    return depth, labels
