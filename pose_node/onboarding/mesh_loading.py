"""Load object meshes (BOP PLY, OBJ/MTL, glTF/GLB) into :class:`ObjectModel` in metres.

trimesh does the parsing; this module adds what it cannot know: the declared units, sanity
checks that turn broken or mis-scaled files into a :class:`MeshLoadError` naming the file, and
BOP ``models_info.json`` symmetries.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from pose_node.core.errors import MeshLoadError
from pose_node.core.types import ObjectModel
from pose_node.core.units import UNIT_TO_METRES  # noqa: F401 - re-exported: the one list of mesh units

logger = logging.getLogger(__name__)


# Graspable workcell objects: a diameter outside this range almost always means wrong units.
PLAUSIBLE_DIAMETER_RANGE_M = (0.005, 2.0)


def model_diameter_m(vertices: np.ndarray) -> float:
    """Largest distance between two vertices (attained on the convex hull, so only hull vertices
    are compared). Args: vertices (N, 3). Returns metres (same unit as the input)."""
    points = np.asarray(vertices, dtype=np.float64)
    if len(points) > 64:
        try:
            points = points[ConvexHull(points).vertices]
        except Exception:  # degenerate (flat) point sets: fall back to all points
            logger.debug("convex hull failed; computing diameter over all %d vertices", len(points))
    return float(pdist(points).max()) if len(points) > 1 else 0.0


def symmetry_transforms(model_info: Mapping, *, max_step_fraction: float = 0.01, unit_to_m: float = 1e-3) -> np.ndarray:
    """Symmetry transforms from a BOP ``models_info.json`` entry, as bop_toolkit builds them.

    Continuous symmetries are discretized with ``ceil(pi / max_step_fraction)`` steps so that no
    surface point moves more than ``max_step_fraction`` of the diameter between steps.

    Args:
        model_info: one entry (``symmetries_discrete``: list of 16 floats row-major, translation in
            file units; ``symmetries_continuous``: list of ``{axis, offset}``).
        unit_to_m: scale from file units to metres (BOP: millimetres).
    Returns:
        (S, 4, 4) transforms ``T_obj_objsym`` in metres, identity first.
    """
    discrete = [np.eye(4)]
    for sym in model_info.get("symmetries_discrete", []):
        T = np.asarray(sym, dtype=np.float64).reshape(4, 4).copy()
        T[:3, 3] *= unit_to_m
        discrete.append(T)
    continuous = [np.eye(4)]
    for sym in model_info.get("symmetries_continuous", []):
        axis = np.asarray(sym["axis"], dtype=np.float64)
        offset = np.asarray(sym.get("offset", [0, 0, 0]), dtype=np.float64) * unit_to_m
        steps = int(np.ceil(np.pi / max_step_fraction))
        for i in range(1, steps):
            T = trimesh.transformations.rotation_matrix(2.0 * np.pi * i / steps, axis)
            T[:3, 3] = offset - T[:3, :3] @ offset
            continuous.append(T)
    return np.stack([C @ D for D in discrete for C in continuous])


def _as_single_mesh(loaded, path: Path) -> trimesh.Trimesh:
    if isinstance(loaded, trimesh.Scene):
        geometries = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
        if not geometries:
            raise MeshLoadError(f"{path}: the file contains no triangle mesh")
        if len(geometries) == 1:
            return geometries[0]
        # Multi-part glTF/OBJ: trimesh merges the parts' textures into one atlas when it can and
        # falls back to per-vertex colours otherwise.
        return trimesh.util.concatenate(geometries)
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshLoadError(f"{path}: expected a triangle mesh, got {type(loaded).__name__} (point cloud or path?)")
    return loaded


def _visuals(mesh: trimesh.Trimesh) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Returns (vertex_colors (N,3) uint8 | None, uv (N,2) float32 | None, texture (H,W,3) uint8 | None)."""
    visual = mesh.visual
    if visual.kind == "texture" and getattr(visual, "uv", None) is not None:
        image = getattr(visual.material, "image", None)
        if image is None and hasattr(visual.material, "baseColorTexture"):
            image = visual.material.baseColorTexture
        if image is not None:
            texture = np.asarray(image.convert("RGB"), dtype=np.uint8)
            return None, np.asarray(visual.uv, dtype=np.float32), texture
        logger.warning("mesh has texture coordinates but no texture image; using a uniform colour")
    if visual.kind == "vertex":
        return np.asarray(visual.vertex_colors[:, :3], dtype=np.uint8), None, None
    if visual.kind == "face":
        # Faces with colours: average onto vertices (renderers interpolate per vertex).
        return np.asarray(visual.to_color().vertex_colors[:, :3], dtype=np.uint8), None, None
    return None, None, None


def load_object_model(
    path: str | Path,
    *,
    units: str,
    object_id: int,
    name: str | None = None,
    symmetries: np.ndarray | None = None,
    plausible_diameter_range_m: tuple[float, float] = PLAUSIBLE_DIAMETER_RANGE_M,
) -> ObjectModel:
    """Load a mesh file and convert it to metres.

    Args:
        path: .ply (BOP: per-vertex texture_u/texture_v and ``comment TextureFile``), .obj (+.mtl),
            .gltf/.glb, .stl, .off.
        units: the unit the file is written in: one of ``m``, ``cm``, ``mm``, ``in``. Meshes carry
            no reliable unit field, so this must be declared.
        object_id: id of the object.
        name: defaults to the file stem.
        symmetries: (S, 4, 4) ``T_obj_objsym`` in metres, identity included; default identity only.
        plausible_diameter_range_m: a diameter outside raises (almost always wrong units).
    Raises:
        MeshLoadError: missing, unreadable, empty or broken file, or implausible size.
    """
    path = Path(path)
    if units not in UNIT_TO_METRES:
        raise MeshLoadError(f"{path}: unknown units {units!r}; expected one of {sorted(UNIT_TO_METRES)}")
    if not path.is_file():
        raise MeshLoadError(f"{path}: mesh file not found")
    try:
        # process=False keeps vertices split at UV seams (merging them would corrupt textures).
        loaded = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many types for malformed files
        detail = " ".join(str(exc).split())  # one line: the CLIs print the message as their error line
        raise MeshLoadError(f"{path}: could not parse mesh ({type(exc).__name__}: {detail})") from exc
    mesh = _as_single_mesh(loaded, path)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(vertices) < 3 or len(faces) == 0:
        raise MeshLoadError(f"{path}: mesh is empty ({len(vertices)} vertices, {len(faces)} faces)")
    if not np.all(np.isfinite(vertices)):
        raise MeshLoadError(f"{path}: vertices contain NaN or inf")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshLoadError(f"{path}: face indices out of range [0, {len(vertices)})")

    scale = UNIT_TO_METRES[units]
    vertices_m = vertices * scale
    diameter_m = model_diameter_m(vertices_m)
    lo, hi = plausible_diameter_range_m
    if not lo <= diameter_m <= hi:
        hints = [u for u, s in UNIT_TO_METRES.items() if lo <= diameter_m / scale * s <= hi]
        raise MeshLoadError(
            f"{path}: diameter {diameter_m:.4g} m with units={units!r} is outside the plausible "
            f"range [{lo}, {hi}] m; check the declared units (plausible: {hints or 'none'})"
        )
    vertex_colors, uv, texture = _visuals(mesh)
    normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
    return ObjectModel(
        object_id=int(object_id),
        name=name or path.stem,
        vertices=vertices_m.astype(np.float32),
        faces=faces.astype(np.int32),
        normals=normals,
        diameter_m=diameter_m,
        vertex_colors=vertex_colors,
        uv=uv,
        texture=texture,
        symmetries=np.eye(4)[None] if symmetries is None else np.asarray(symmetries, dtype=np.float64),
        source_units=units,
        source_path=str(path),
    )


_BOP_MODEL_RE = re.compile(r"obj_(\d{6})\.ply$")


def load_bop_models(
    models_dir: str | Path, *, object_ids: Sequence[int] | None = None, names: Mapping[int, str] | None = None
) -> list[ObjectModel]:
    """Load a BOP ``models/`` directory (PLY in millimetres, ``models_info.json`` symmetries).

    Args:
        models_dir: directory holding ``obj_XXXXXX.ply`` and ``models_info.json``.
        object_ids: subset to load (default: all listed in models_info.json).
        names: optional id -> name (default ``obj_XXXXXX``).
    Raises:
        MeshLoadError: missing directory, missing models_info.json or model file.
    """
    models_dir = Path(models_dir)
    info_path = models_dir / "models_info.json"
    if not info_path.is_file():
        raise MeshLoadError(f"{models_dir}: no models_info.json (is this a BOP models directory?)")
    models_info = {int(k): v for k, v in json.loads(info_path.read_text()).items()}
    ids = sorted(models_info) if object_ids is None else list(object_ids)
    models = []
    for obj_id in ids:
        if obj_id not in models_info:
            raise MeshLoadError(f"{info_path}: object id {obj_id} is not listed")
        models.append(
            load_object_model(
                models_dir / f"obj_{obj_id:06d}.ply",
                units="mm",
                object_id=obj_id,
                name=(names or {}).get(obj_id, f"obj_{obj_id:06d}"),
                symmetries=symmetry_transforms(models_info[obj_id]),
            )
        )
    return models
