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
