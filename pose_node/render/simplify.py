"""Coarser copies of object meshes for renders that only need silhouette, depth and coarse colour.

On a CPU (Mesa llvmpipe) a render costs about the same per triangle whatever the image size, so a
64-pixel render-and-compare of a 16k-triangle YCB mesh pays for detail it cannot show: a copy with
a few thousand triangles draws several times faster. Quadric edge collapse (``fast-simplification``,
the library trimesh's own ``simplify_quadric_decimation`` calls) keeps the shape within a fraction of
a millimetre on such meshes; colours move to per-vertex colours taken from the nearest original
vertex (a texture is sampled at that vertex's uv), which is all a 64-pixel grey comparison sees.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import trimesh

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel

logger = logging.getLogger(__name__)


def vertex_colours(model: ObjectModel) -> np.ndarray | None:
    """(N, 3) uint8 colour per vertex: the model's own, else its texture at the vertex uv (nearest
    texel, OpenGL uv: v = 0 at the bottom row), else None."""
    if model.vertex_colors is not None:
        return np.asarray(model.vertex_colors, dtype=np.uint8)[:, :3]
    if model.texture is None or model.uv is None:
        return None
    texture = np.asarray(model.texture)
    H, W = texture.shape[:2]
    uv = np.clip(np.asarray(model.uv, dtype=np.float64), 0.0, 1.0)
    cols = np.rint(uv[:, 0] * (W - 1)).astype(np.int64)
    rows = np.rint((1.0 - uv[:, 1]) * (H - 1)).astype(np.int64)
    return texture[rows, cols, :3].astype(np.uint8)


def simplified(model: ObjectModel, max_faces: int) -> ObjectModel:
    """``model`` with at most about ``max_faces`` triangles (module docstring).

    The object's identity, diameter and symmetries are kept; texture and uv are replaced by vertex
    colours. Returns ``model`` itself when it is small enough, ``max_faces`` is 0 (off), or
    ``fast-simplification`` is not installed (with a warning: renders are then slower, not wrong).

    Raises:
        InvalidInputError: ``max_faces`` is negative.
    """
    if max_faces < 0:
        raise InvalidInputError(f"max_faces: expected >= 0 (0: keep the mesh), got {max_faces}")
    if max_faces == 0 or len(model.faces) <= max_faces:
        return model
    try:
        import fast_simplification
    except ImportError:
        logger.warning("fast-simplification is not installed: object %s is rendered with all its %d triangles "
                       "(pip install -r requirements.txt)", model.name, len(model.faces))
        return model
    from scipy.spatial import cKDTree

    vertices = np.asarray(model.vertices, dtype=np.float32)
    faces = np.asarray(model.faces, dtype=np.int32)
    v, f = fast_simplification.simplify(vertices, faces, target_reduction=1.0 - max_faces / len(faces))
    if len(f) == 0:  # degenerate input: keep the original rather than render nothing
        return model
    colours = vertex_colours(model)
    if colours is not None:
        colours = colours[cKDTree(vertices).query(v)[1]]
    normals = trimesh.Trimesh(v, f, process=False).vertex_normals
    return replace(model, vertices=np.asarray(v, dtype=np.float32), faces=np.asarray(f, dtype=np.int32),
                   normals=np.asarray(normals, dtype=np.float32), vertex_colors=colours, uv=None, texture=None)


__all__ = ["simplified", "vertex_colours"]
