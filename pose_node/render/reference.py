"""A slow, obviously-correct numpy rasterizer, used by the tests to check the GL renderer.

Per triangle: project the corners with ``K`` (OpenCV, pixel centres at integers), evaluate
screen-space barycentrics at every integer pixel centre inside the triangle's bounding box,
interpolate perspective-correctly (weights ``lambda_i / z_i``) and keep the nearest z per pixel.
No clipping: triangles with a corner closer than ``near_m`` are dropped.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pose_node.core.types import ObjectModel

_INSIDE_EPS = 1e-9  # barycentric tolerance: pixel centres exactly on an edge count as inside


def rasterize_reference(
    K: np.ndarray, T_camera_object: np.ndarray, models: Sequence[ObjectModel], width: int, height: int,
    *, near_m: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth, object coordinates and instance labels of M objects seen by V cameras.

    Args:
        K: (V, 3, 3) intrinsics, pixels.
        T_camera_object: (V, M, 4, 4) object poses in the camera (optical) frames, metres.
        models: M objects.
        width, height: image size, pixels.
        near_m: triangles with a corner at z < near_m are skipped.
    Returns:
        depth (V, H, W) float64 metres (0 = none), xyz (V, H, W, 3) float64 object frame,
        instance (V, H, W) int32 (index into ``models`` + 1, 0 = none).
    """
    n_views = len(K)
    depth = np.zeros((n_views, height, width))
    xyz = np.zeros((n_views, height, width, 3))
    instance = np.zeros((n_views, height, width), np.int32)
    for v in range(n_views):
        zbuf = np.full((height, width), np.inf)
        for m, model in enumerate(models):
            T = np.asarray(T_camera_object[v, m], dtype=np.float64)
            p_obj = np.asarray(model.vertices, dtype=np.float64)
            p_cam = p_obj @ T[:3, :3].T + T[:3, 3]
            uvw = p_cam @ np.asarray(K[v], dtype=np.float64).T
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = uvw[:, :2] / uvw[:, 2:3]
            for face in np.asarray(model.faces):
                z = p_cam[face, 2]
                if np.any(z < near_m):
                    continue
                _raster_triangle(uv[face], z, p_obj[face], m + 1, zbuf, xyz[v], instance[v])
        hit = np.isfinite(zbuf)
        depth[v][hit] = zbuf[hit]
    return depth, xyz, instance


def _raster_triangle(uv: np.ndarray, z: np.ndarray, p_obj: np.ndarray, label: int,
                     zbuf: np.ndarray, xyz: np.ndarray, instance: np.ndarray) -> None:
    """Rasterize one triangle (uv (3, 2) pixels, z (3,) metres, p_obj (3, 3)) into the buffers."""
    height, width = zbuf.shape
    u0, v0 = np.ceil(uv.min(0) - _INSIDE_EPS).astype(int)
    u1, v1 = np.floor(uv.max(0) + _INSIDE_EPS).astype(int)
    u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, width - 1), min(v1, height - 1)
    if u0 > u1 or v0 > v1:
        return
    (ax, ay), (bx, by), (cx, cy) = uv
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    if abs(area) < 1e-12:
        return
    px, py = np.meshgrid(np.arange(u0, u1 + 1, dtype=np.float64), np.arange(v0, v1 + 1, dtype=np.float64))
    l0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / area
    l1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / area
    l2 = 1.0 - l0 - l1
    inside = (l0 >= -_INSIDE_EPS) & (l1 >= -_INSIDE_EPS) & (l2 >= -_INSIDE_EPS)
    if not inside.any():
        return
    w = np.stack([l0[inside] / z[0], l1[inside] / z[1], l2[inside] / z[2]], -1)  # perspective-correct weights
    z_pix = 1.0 / w.sum(-1)
    rows, cols = py[inside].astype(int), px[inside].astype(int)
    nearer = z_pix < zbuf[rows, cols]
    rows, cols = rows[nearer], cols[nearer]
    zbuf[rows, cols] = z_pix[nearer]
    xyz[rows, cols] = (w[nearer] @ p_obj) * z_pix[nearer, None]
    instance[rows, cols] = label
