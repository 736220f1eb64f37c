"""Clutter of photoreal workcells: a room (floor, partition walls, table legs) and distractors.

Every clutter item is described by a small JSON-able :class:`ClutterItem` (a primitive kind, its
dimensions and ``T_world_object``) from which :func:`clutter_model` rebuilds the exact mesh, so
``scene_world.json`` can record the clutter and anyone can re-render the full occlusion geometry.
Clutter is part of the ground-truth geometry pass (it occludes objects and has depth) but is
never a GT instance.

Distractors are untextured primitives (boxes, cylinders, spheres; ``trimesh.creation``) resting
on the table among and around the objects; like the objects themselves
(:mod:`pose_node.scene.placement`), they cannot intersect anything because their convex
footprints on the table are kept apart with a separating-axis test.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh

from pose_node.core.errors import InvalidInputError, check_fields
from pose_node.core.types import ObjectModel
from pose_node.scene.placement import PlacedInstance, footprint_polygon, inside_table, polygons_separated, yaw_transform

logger = logging.getLogger(__name__)

CLUTTER_KINDS: tuple[str, ...] = ("box", "cylinder", "sphere", "wall")
DISTRACTOR_KINDS: tuple[str, ...] = ("box", "cylinder", "sphere")


@dataclass(frozen=True)
class ClutterConfig:
    """Room and distractor ranges.

    Attributes:
        num_distractors: (min, max) distractors per scene (both included).
        distractor_size_m: (min, max) box side / cylinder and sphere diameter.
        distractor_gap_m: minimum footprint clearance to objects and other distractors.
        distractor_ring_m: (min, max) distance of a distractor from the object cluster centre.
        max_attempts: placement tries per distractor before it is left out.
        room_half_size_m: (min, max) half side of the square room around the table centre.
        floor_z_m: floor height (the table top is z = 0).
        wall_top_z_m: (min, max) height of the partition walls' top edge (above it: the environment).
        leg_side_m: side of the square table legs.
    """

    num_distractors: tuple[int, int] = (3, 8)
    distractor_size_m: tuple[float, float] = (0.03, 0.10)
    distractor_gap_m: float = 0.005
    distractor_ring_m: tuple[float, float] = (0.0, 0.30)
    max_attempts: int = 40
    room_half_size_m: tuple[float, float] = (1.8, 2.5)
    floor_z_m: float = -0.75
    wall_top_z_m: tuple[float, float] = (0.9, 1.6)
    leg_side_m: float = 0.05

    def __post_init__(self) -> None:
        checks = [
            ("num_distractors", 0 <= self.num_distractors[0] <= self.num_distractors[1]),
            ("distractor_size_m", 0 < self.distractor_size_m[0] <= self.distractor_size_m[1]),
            ("distractor_ring_m", 0 <= self.distractor_ring_m[0] <= self.distractor_ring_m[1]),
            ("room_half_size_m", 0 < self.room_half_size_m[0] <= self.room_half_size_m[1]),
            ("floor_z_m", self.floor_z_m < 0), ("wall_top_z_m", 0 < self.wall_top_z_m[0] <= self.wall_top_z_m[1]),
        ]
        check_fields(self, checks)


@dataclass(frozen=True)
class ClutterItem:
    """One clutter primitive.

    Attributes:
        kind: one of :data:`CLUTTER_KINDS`.
        size_m: box (x, y, z) extents; cylinder (radius, height, 0), axis = z; sphere (radius, 0, 0);
            wall (width along x, height along y, 0): a rectangle in the object xy plane, centred,
            facing +z.
        T_world_object: (4, 4) metres.
        role: "distractor", "wall", "floor" or "leg".
    """

    kind: str
    size_m: tuple[float, float, float]
    T_world_object: np.ndarray
    role: str

    def to_json(self) -> dict:
        return {"kind": self.kind, "size_m": list(self.size_m), "T_world_object": np.asarray(self.T_world_object).tolist(),
                "role": self.role}

    @staticmethod
    def from_json(data: dict) -> "ClutterItem":
        return ClutterItem(data["kind"], tuple(float(s) for s in data["size_m"]), np.asarray(data["T_world_object"], float),
                           data["role"])


def clutter_mesh(kind: str, size_m: Sequence[float]) -> trimesh.Trimesh:
    """The primitive's mesh in its object frame (metres), smooth-shaded where the surface is curved.

    Raises:
        InvalidInputError: unknown kind or non-positive size.
    """
    a, b, c = (float(s) for s in size_m)
    if kind == "box" and min(a, b, c) > 0:
        return trimesh.creation.box(extents=(a, b, c))
    if kind == "cylinder" and min(a, b) > 0:
        return trimesh.creation.cylinder(radius=a, height=b, sections=32)
    if kind == "sphere" and a > 0:
        return trimesh.creation.icosphere(subdivisions=3, radius=a)
    if kind == "wall" and min(a, b) > 0:
        vertices = np.array([[-a / 2, -b / 2, 0], [a / 2, -b / 2, 0], [a / 2, b / 2, 0], [-a / 2, b / 2, 0]])
        return trimesh.Trimesh(vertices, [[0, 1, 2], [0, 2, 3]], process=False)
    raise InvalidInputError(f"clutter_mesh: bad kind {kind!r} (expected one of {CLUTTER_KINDS}) or size {tuple(size_m)}")


def clutter_model(item: ClutterItem, texture: np.ndarray | None = None, *, texel_m: float = 0.004) -> ObjectModel:
    """An :class:`ObjectModel` of a clutter item (object_id 0: never a GT object).

    Args:
        item: the primitive.
        texture: (Ht, Wt, 3) uint8 for walls: mapped by planar projection along the object z axis,
            repeating every ``Wt * texel_m`` metres.
    """
    mesh = clutter_mesh(item.kind, item.size_m)
    if item.kind != "wall":
        mesh = mesh.smooth_shaded  # splits vertices at sharp edges: flat box faces, round cylinder sides
    vertices = np.asarray(mesh.vertices, np.float32)
    normals = np.asarray(mesh.vertex_normals, np.float32)
    uv = None
    if texture is not None:
        tile_m = np.array([texture.shape[1], texture.shape[0]]) * texel_m
        uv = (vertices[:, :2] / tile_m + 0.5).astype(np.float32)
    return ObjectModel(
        object_id=0, name=f"clutter_{item.role}_{item.kind}", vertices=vertices, faces=np.asarray(mesh.faces, np.int32),
        normals=normals, diameter_m=float(np.linalg.norm(vertices.max(0) - vertices.min(0))), uv=uv,
        texture=None if texture is None else np.ascontiguousarray(texture, np.uint8), source_path=f"clutter:{item.kind}",
    )


def _pose(R: np.ndarray, t: Sequence[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def sample_room(rng: np.random.Generator, table_size_m: tuple[float, float], table_thickness_m: float,
                config: ClutterConfig) -> list[ClutterItem]:
    """Floor, four partition walls facing the table and four table legs."""
    half = float(rng.uniform(*config.room_half_size_m))
    top = float(rng.uniform(*config.wall_top_z_m))
    floor_z, height = config.floor_z_m, top - config.floor_z_m
    items = [ClutterItem("wall", (2 * half, 2 * half, 0.0), _pose(np.eye(3), (0, 0, floor_z)), "floor")]
    for k in range(4):
        yaw = k * np.pi / 2.0
        inward = -np.array([np.cos(yaw), np.sin(yaw), 0.0])  # the wall's +z faces the table
        x_axis = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        R = np.stack([x_axis, np.cross(inward, x_axis), inward], 1)
        centre = -inward * half + [0.0, 0.0, floor_z + height / 2.0]
        items.append(ClutterItem("wall", (2 * half, height, 0.0), _pose(R, centre), "wall"))
    leg_height = -table_thickness_m - floor_z
    for sx in (-1, 1):
        for sy in (-1, 1):
            x = sx * (table_size_m[0] / 2.0 - config.leg_side_m)
            y = sy * (table_size_m[1] / 2.0 - config.leg_side_m)
            items.append(ClutterItem("box", (config.leg_side_m, config.leg_side_m, leg_height),
                                     _pose(np.eye(3), (x, y, floor_z + leg_height / 2.0)), "leg"))
    return items


def _distractor_rest(kind: str, size: float, rng: np.random.Generator) -> tuple[tuple[float, float, float], np.ndarray]:
    """Dimensions and resting ``T_table_object`` (lowest point on z = 0, footprint at the origin)."""
    if kind == "box":
        dims = tuple(float(d) for d in size * rng.uniform(0.5, 1.0, 3))
        return dims, _pose(np.eye(3), (0, 0, dims[2] / 2.0))
    if kind == "cylinder":
        radius, height = size / 2.0, float(size * rng.uniform(0.6, 2.0))
        if rng.uniform() < 0.3:  # lying on its side
            R = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
            return (radius, height, 0.0), _pose(R, (0, 0, radius))
        return (radius, height, 0.0), _pose(np.eye(3), (0, 0, height / 2.0))
    radius = size / 2.0
    return (radius, 0.0, 0.0), _pose(np.eye(3), (0, 0, radius))


def place_distractors(rng: np.random.Generator, placed: Sequence[PlacedInstance], table_size_m: tuple[float, float],
                      config: ClutterConfig, *, table_margin_m: float = 0.02) -> list[ClutterItem]:
    """Distractors on the table around the objects, footprints clear of every object and each other.

    A distractor that finds no free spot in ``config.max_attempts`` tries is left out (logged).
    """
    footprints = [p.footprint_xy for p in placed]
    centre = np.mean([f.mean(0) for f in footprints], 0) if footprints else np.zeros(2)
    count = int(rng.integers(config.num_distractors[0], config.num_distractors[1] + 1))
    items = []
    for _ in range(count):
        kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
        dims, T_rest = _distractor_rest(kind, float(rng.uniform(*config.distractor_size_m)), rng)
        hull = np.asarray(clutter_mesh(kind, dims).convex_hull.vertices)
        for _attempt in range(config.max_attempts):
            angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(*config.distractor_ring_m)
            T = yaw_transform(rng.uniform(0, 2 * np.pi)) @ T_rest
            T[:2, 3] += centre + radius * np.array([np.cos(angle), np.sin(angle)])
            footprint = footprint_polygon(trimesh.transform_points(hull, T)[:, :2])
            if inside_table(footprint, table_size_m, table_margin_m) and all(
                polygons_separated(footprint, other, config.distractor_gap_m) for other in footprints
            ):
                footprints.append(footprint)
                items.append(ClutterItem(kind, dims, T, "distractor"))
                break
        else:
            logger.debug("no free spot for a %s distractor; left out", kind)
    return items
