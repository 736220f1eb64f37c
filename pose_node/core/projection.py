"""The pinhole projection, written once for numpy and torch, with the pixel-centre rule.

Convention (OpenCV, used by every stage, the renderer's ``K`` and the datasets): pixel centres sit at
integer coordinates, so the pixel ``(i, j)`` (row, column) covers ``u in [j - 0.5, j + 0.5)`` and
``v in [i - 0.5, i + 0.5)``, and a point ``p = (x, y, z)`` in the optical frame (x right, y down,
z forward, metres) projects to ``u = fx x/z + s y/z + cx``, ``v = fy y/z + cy``, with no half-pixel
shift. ``K``'s last row is ``(0, 0, 1)``. Consumers that use another centre rule (GL viewports,
``grid_sample`` with ``align_corners=False``, Mitsuba) convert at their boundary and say so there.
"""
from __future__ import annotations

import numpy as np
import torch


def project_cam_np(p_cam: np.ndarray, K: np.ndarray, min_depth_m: float | None = None) -> np.ndarray:
    """Project camera-frame points (numpy).

    Args:
        p_cam: (..., N, 3) points, metres, camera optical frame.
        K: (3, 3) intrinsics, pixels.
        min_depth_m: when given, the homogeneous ``K p`` is divided by ``max(z, min_depth_m)``: a
            guard against division by zero only. Points in front of it project exactly; the pixels
            of clamped points are finite but meaningless (callers drop those points), unlike
            :func:`project_points`, which clamps with the principal point kept outside the division.
    Returns:
        (..., N, 2) pixels, pixel centres at integer coordinates.
    """
    z = p_cam[..., 2]
    zc = z if min_depth_m is None else np.maximum(z, min_depth_m)
    return (p_cam @ K.T)[..., :2] / zc[..., None]


def project_points(
    x3d_obj: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
    min_depth_m: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project object points with ``T_camera_object = (R, t)`` through a pinhole ``K`` (torch, batched).

    Args:
        x3d_obj: (..., N, 3) points, metres, object frame.
        R: (..., 3, 3) rotation camera <- object. t: (..., 3) translation, metres, camera frame.
        K: (..., 3, 3) intrinsics (last row (0, 0, 1)); leading dims broadcast.
        min_depth_m: when given, depths below it are clamped to it before the division
            (``uv = K[:2, :2] p_xy / max(z, min_depth_m) + (cx, cy)``, as
            :func:`pose_node.training.pnp_cost.pnp_cost`).
    Returns:
        uv: (..., N, 2) pixels (OpenCV: pixel centres at integer coordinates).
        z: (..., N) depth along the optical axis, metres (not clamped).
    """
    p = x3d_obj @ R.transpose(-1, -2) + t[..., None, :]
    z = p[..., 2]
    zc = z if min_depth_m is None else z.clamp_min(min_depth_m)
    uv_c = p[..., :2] @ K[..., :2, :2].transpose(-1, -2)
    return uv_c / zc[..., None] + K[..., None, :2, 2], z
