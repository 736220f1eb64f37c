"""Synthetic 2D-3D correspondences for the PnP solver, its training cost and the AMIS loss."""
from __future__ import annotations

import torch

from pose_node.core.geometry import Pose, so3_exp
from pose_node.core.projection import project_points

F64 = torch.float64


def make_K(B: int, dtype: torch.dtype = F64, skew: float = 0.0) -> torch.Tensor:
    """(B, 3, 3) intrinsics of a 640 x 480 camera, f = 600 px, principal point (320, 240)."""
    K = torch.tensor([[600.0, skew, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(B, 3, 3).clone()


def make_scene(B: int, N: int, seed: int, depth_m: float | None = None, dtype: torch.dtype = F64) -> dict:
    """Object points in a 0.1 m cube, random rotation, 0.5-1 m (or ``depth_m``) in front of a 640x480 camera.

    Returns:
        x3d (B, N, 3) metres, uv (B, N, 2) exact projections, pixels (both in ``dtype``); R (B, 3, 3),
        t (B, 3) metres and T_gt (B, 4, 4): the true ``T_camera_object`` (float64); K (B, 3, 3); the
        generator g, to draw the noise from.
    """
    g = torch.Generator().manual_seed(seed)
    x3d = (torch.rand(B, N, 3, generator=g, dtype=F64) - 0.5) * 0.1
    R = so3_exp(torch.randn(B, 3, generator=g, dtype=F64))
    xy = (torch.rand(B, 2, generator=g, dtype=F64) - 0.5) * 0.2
    z = 0.5 + 0.5 * torch.rand(B, 1, generator=g, dtype=F64) if depth_m is None else torch.full((B, 1), depth_m, dtype=F64)
    t = torch.cat([xy, z], -1)
    K = make_K(B)
    uv, _ = project_points(x3d, R, t, K)
    return dict(x3d=x3d.to(dtype), uv=uv.to(dtype), R=R, t=t, T_gt=Pose(R, t).matrix(), K=K.to(dtype), g=g)
