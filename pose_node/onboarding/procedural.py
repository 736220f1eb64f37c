"""Procedural textured objects, so a fresh clone has objects to onboard, render and test on.

Each object is a primitive (box, cylinder, capsule, cone, ellipsoid, bottle) with random
dimensions between 4 and 20 cm and a texture atlas: every face is textured by planar projection
onto the bounding-box side its normal points to most, and each of the six sides gets its own
pattern and a letter, so the appearance breaks the shape's symmetries (pose is observable).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import trimesh

from pose_node.core.types import ObjectModel
from pose_node.onboarding.mesh_loading import model_diameter_m

SHAPES: tuple[str, ...] = ("box", "cylinder", "capsule", "cone", "ellipsoid", "bottle")


@dataclass(frozen=True)
class ProceduralObjectConfig:
    """Size and appearance ranges of procedural objects."""

    size_range_m: tuple[float, float] = (0.04, 0.20)
    texture_size_px: int = 512
    target_faces: int = 4000


def _primitive(shape: str, dims_m: np.ndarray, rng: np.random.Generator, target_faces: int) -> trimesh.Trimesh:
    """A watertight primitive with its base on z = 0 (x, y centred). dims_m: (3,) extents."""
    sx, sy, sz = dims_m
    if shape == "box":
        mesh = trimesh.creation.box(extents=dims_m)
    elif shape == "cylinder":
        mesh = trimesh.creation.cylinder(radius=min(sx, sy) / 2, height=sz, sections=48)
    elif shape == "capsule":
        radius = min(sx, sy, sz) / 2
        mesh = trimesh.creation.capsule(height=max(sz - 2 * radius, 1e-3), radius=radius, count=[24, 24])
    elif shape == "cone":
        mesh = trimesh.creation.cone(radius=min(sx, sy) / 2, height=sz, sections=48)
    elif shape == "ellipsoid":
        # A UV sphere meets a face budget closely (about 8 * rows^2 faces for cols = 2 * rows).
        rows = max(6, int(round(np.sqrt(target_faces / 8.0))))
        mesh = trimesh.creation.uv_sphere(radius=1.0, count=[rows, 2 * rows])
        mesh.apply_scale(dims_m / 2)
    elif shape == "bottle":
        r = min(sx, sy) / 2
        neck = r * rng.uniform(0.3, 0.5)
        shoulder = sz * rng.uniform(0.55, 0.7)
        profile = np.array(
            [[0, 0], [r, 0], [r, shoulder], [neck, shoulder + 0.15 * sz], [neck, sz], [0, sz]], dtype=np.float64
        )
        mesh = trimesh.creation.revolve(profile, sections=48)
    else:
        raise ValueError(f"unknown procedural shape {shape!r}; expected one of {SHAPES}")
    mesh.apply_translation([0.0, 0.0, -mesh.bounds[0, 2]])
    mesh.apply_translation([-mesh.bounds.mean(0)[0], -mesh.bounds.mean(0)[1], 0.0])
    return mesh


def _subdivide_to(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """Subdivide (each step x4 faces) while the result stays within 1.3x the target."""
    while len(mesh.faces) * 4 <= target_faces * 1.3:
        mesh = mesh.subdivide()
    return mesh


def _texture_atlas(rng: np.random.Generator, size_px: int) -> np.ndarray:
    """(size, size, 3) uint8 atlas of 3x2 tiles, one per bounding-box side, each distinct."""
    atlas = np.zeros((size_px, size_px, 3), np.uint8)
    tile_w, tile_h = size_px // 3, size_px // 2
    base_hue = rng.uniform(0, 180)
    for side in range(6):
        row, col = divmod(side, 3)
        tile = np.empty((tile_h, tile_w, 3), np.uint8)
        hue = (base_hue + side * rng.uniform(15, 40)) % 180
        tile[:] = cv2.cvtColor(np.uint8([[[hue, rng.uniform(90, 230), rng.uniform(110, 240)]]]), cv2.COLOR_HSV2RGB)[0, 0]
        for _ in range(int(rng.integers(4, 9))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = rng.integers(0, 3)
            p = (int(rng.integers(0, tile_w)), int(rng.integers(0, tile_h)))
            if kind == 0:
                cv2.circle(tile, p, int(rng.integers(tile_w // 16, tile_w // 5)), color, -1)
            elif kind == 1:
                q = (int(rng.integers(0, tile_w)), int(rng.integers(0, tile_h)))
                cv2.rectangle(tile, p, q, color, -1)
            else:
                q = (int(rng.integers(0, tile_w)), int(rng.integers(0, tile_h)))
                cv2.line(tile, p, q, color, int(rng.integers(2, max(3, tile_w // 20))))
        letter = "ABCDEF"[side]
        cv2.putText(tile, letter, (tile_w // 4, 3 * tile_h // 4), cv2.FONT_HERSHEY_SIMPLEX, tile_h / 60, (20, 20, 20), max(2, tile_h // 25))
        atlas[row * tile_h : (row + 1) * tile_h, col * tile_w : (col + 1) * tile_w] = tile
    return atlas


def _atlas_uv(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unmerge vertices per face and project each face onto its dominant bounding-box side.

    Returns vertices (3F, 3), faces (F, 3), normals (3F, 3) (smooth, from the merged mesh),
    uv (3F, 2) in OpenGL convention (v = 0 at the bottom of the texture image).
    """
    faces = np.asarray(mesh.faces)
    corners = mesh.vertices[faces]  # (F, 3, 3)
    normals = mesh.vertex_normals[faces]  # (F, 3, 3)
    fn = mesh.face_normals
    axis = np.abs(fn).argmax(1)
    side = axis * 2 + (fn[np.arange(len(fn)), axis] < 0)  # 0..5
    lo, hi = mesh.bounds
    unit = (corners - lo) / np.maximum(hi - lo, 1e-9)  # (F, 3, 3) in [0, 1]
    other = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # the two in-plane axes per face
    a = np.take_along_axis(unit, other[:, None, 0:1].repeat(3, 1), 2)[..., 0]
    b = np.take_along_axis(unit, other[:, None, 1:2].repeat(3, 1), 2)[..., 0]
    row, col = np.divmod(side, 3)
    margin = 0.04  # keep bilinear lookups inside the tile
    u = (col[:, None] + margin + (1 - 2 * margin) * a) / 3.0
    v_img = (row[:, None] + margin + (1 - 2 * margin) * (1 - b)) / 2.0  # image rows, top = 0
    uv = np.stack([u, 1.0 - v_img], -1).reshape(-1, 2)
    return corners.reshape(-1, 3), np.arange(3 * len(faces)).reshape(-1, 3), normals.reshape(-1, 3), uv


def make_procedural_object(
    object_id: int, seed: int, *, target_faces: int | None = None, shape: str | None = None,
    config: ProceduralObjectConfig = ProceduralObjectConfig(),
) -> ObjectModel:
    """Generate one textured object (deterministic for a given ``seed``).

    Args:
        object_id: id to assign.
        seed: random seed; the same seed gives the same object.
        target_faces: approximate face count (default ``config.target_faces``).
        shape: one of :data:`SHAPES` (default: random).
    """
    rng = np.random.default_rng(seed)
    shape = shape or SHAPES[int(rng.integers(0, len(SHAPES)))]
    lo, hi = config.size_range_m
    dims = rng.uniform(lo, hi, 3)
    if shape in ("cylinder", "cone", "bottle", "capsule"):
        dims[1] = dims[0]
    target_faces = target_faces or config.target_faces
    mesh = _subdivide_to(_primitive(shape, dims, rng, target_faces), target_faces)
    vertices, faces, normals, uv = _atlas_uv(mesh)
    return ObjectModel(
        object_id=int(object_id),
        name=f"{shape}_{object_id:02d}",
        vertices=vertices.astype(np.float32),
        faces=faces.astype(np.int32),
        normals=normals.astype(np.float32),
        diameter_m=model_diameter_m(mesh.vertices),
        uv=uv.astype(np.float32),
        texture=_texture_atlas(rng, config.texture_size_px),
        source_units="m",
        source_path=f"procedural:{shape}:seed={seed}",
    )


def make_procedural_objects(n: int, seed: int, *, first_id: int = 1, **kwargs) -> list[ObjectModel]:
    """``n`` objects with ids ``first_id..first_id+n-1``, shapes cycling through :data:`SHAPES`."""
    rng = np.random.default_rng(seed)
    offset = int(rng.integers(0, len(SHAPES)))
    return [
        make_procedural_object(first_id + i, seed * 1000 + i, shape=SHAPES[(offset + i) % len(SHAPES)], **kwargs)
        for i in range(n)
    ]
