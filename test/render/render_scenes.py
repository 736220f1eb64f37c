"""Test helpers: small meshes (quads, boxes, spheres) and cameras with known geometry."""
from __future__ import annotations

import numpy as np
import trimesh

from pose_node.core.types import ObjectModel


def K_matrix(fx: float, fy: float, cx: float, cy: float, skew: float = 0.0) -> np.ndarray:
    return np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def translation(x: float, y: float, z: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


def rotation(axis, angle_rad: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = trimesh.transformations.rotation_matrix(angle_rad, axis)[:3, :3]
    return T


def unproject(K: np.ndarray, uv: np.ndarray, z: float) -> np.ndarray:
    """(N, 2) pixels -> (N, 3) camera-frame points at depth z."""
    uv1 = np.concatenate([np.asarray(uv, dtype=np.float64), np.ones((len(uv), 1))], 1)
    return z * uv1 @ np.linalg.inv(K).T


def quad_model(corners: np.ndarray, *, uv=None, texture=None, vertex_colors=None, name: str = "quad") -> ObjectModel:
    """Two triangles over 4 corners (in order around the quad), normal from the winding."""
    corners = np.asarray(corners, dtype=np.float32)
    normal = np.cross(corners[1] - corners[0], corners[2] - corners[0])
    normal /= np.linalg.norm(normal)
    return ObjectModel(
        object_id=1, name=name, vertices=corners, faces=np.array([[0, 1, 2], [0, 2, 3]], np.int32),
        normals=np.repeat(normal[None], 4, 0).astype(np.float32), diameter_m=float(np.linalg.norm(corners[2] - corners[0])),
        uv=None if uv is None else np.asarray(uv, np.float32), texture=texture,
        vertex_colors=None if vertex_colors is None else np.asarray(vertex_colors, np.uint8),
    )


def mesh_model(mesh: trimesh.Trimesh, object_id: int = 1, name: str = "mesh") -> ObjectModel:
    return ObjectModel(
        object_id=object_id, name=name, vertices=np.asarray(mesh.vertices, np.float32), faces=np.asarray(mesh.faces, np.int32),
        normals=np.asarray(mesh.vertex_normals, np.float32), diameter_m=float(np.linalg.norm(mesh.extents)),
    )


def sphere_model(radius_m: float, subdivisions: int = 2, object_id: int = 1) -> ObjectModel:
    return mesh_model(trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius_m), object_id, "sphere")
