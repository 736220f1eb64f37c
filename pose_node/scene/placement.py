"""Physically plausible object placement: stable rest poses, clustered on the table, no overlap.

Each instance gets a resting orientation drawn from ``trimesh.poses.compute_stable_poses`` (by
its probability: the share of random drops that end in that pose), a random yaw about the world
z axis, and is set down so that the lowest point of the mesh is exactly on the table (z = 0).

Non-interpenetration is guaranteed conservatively and without a collision library: two objects
resting on the same plane cannot intersect if the 2D convex hulls of their footprints (the
vertical projection of the whole mesh onto the table) are disjoint, which a separating-axis test
decides exactly. Objects are slid toward the cluster centre until their footprints are
``contact_gap_m`` apart, so neighbours touch (to within the gap) and occlude each other in the
camera views; a share of them is left a few centimetres apart instead.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.spatial import ConvexHull

from pose_node.core.errors import PoseNodeError
from pose_node.core.types import ObjectModel

logger = logging.getLogger(__name__)


class PlacementError(PoseNodeError):
    """The objects could not be placed on the table (too many or too large for its size)."""


@dataclass(frozen=True)
class PlacementConfig:
    """Cluster shape and contact parameters.

    Attributes:
        contact_gap_m: footprints of touching neighbours end up between this and twice this apart.
        touch_probability: share of instances slid into contact; the others get an extra gap.
        max_extra_gap_m: the extra gap, U(0, max), of instances that do not touch.
        cluster_centre_jitter_m: the cluster centre is U(-j, j) per axis around the table centre.
        table_margin_m: footprints keep this distance from the table edges.
        max_attempts: tries per instance (direction, rest pose, yaw) before giving up.
        bisection_tolerance_m: precision of the slide toward the cluster.
    """

    contact_gap_m: float = 1e-3
    touch_probability: float = 0.75
    max_extra_gap_m: float = 0.03
    cluster_centre_jitter_m: float = 0.05
    table_margin_m: float = 0.02
    max_attempts: int = 64
    bisection_tolerance_m: float = 2e-4


@dataclass(frozen=True)
class RestPoses:
    """Stable resting orientations of one model (trimesh), and its centre of mass.

    Attributes:
        transforms: (K, 4, 4) ``T_table_object`` resting on z = 0, footprint centred on the origin.
        probabilities: (K,) summing to 1.
        center_mass_m: (3,) object frame (of the closed mesh, else of its convex hull).
        hull_vertices: (Nh, 3) convex hull vertices, object frame (all footprint computations use them).
    """

    transforms: np.ndarray
    probabilities: np.ndarray
    center_mass_m: np.ndarray
    hull_vertices: np.ndarray


@dataclass(frozen=True)
class PlacedInstance:
    """One object instance on the table.

    Attributes:
        model_index: index into the model list given to :func:`place_objects`.
        object_id: the model's ``object_id``.
        T_world_object: (4, 4) metres.
        rest_pose_index: which of the model's :class:`RestPoses` was used.
        footprint_xy: (P, 2) convex footprint polygon (counter-clockwise), world xy, metres.
    """

    model_index: int
    object_id: int
    T_world_object: np.ndarray
    rest_pose_index: int
    footprint_xy: np.ndarray


def _closed_mesh(model: ObjectModel) -> trimesh.Trimesh:
    # Merging duplicated vertices (split at UV seams) makes the procedural meshes watertight.
    return trimesh.Trimesh(np.asarray(model.vertices, np.float64), np.asarray(model.faces), process=True)


def compute_rest_poses(model: ObjectModel) -> RestPoses:
    """Stable poses of a model, from its convex hull and centre of mass.

    The centre of mass is the closed mesh's (uniform density); scanned meshes with holes use the
    convex hull's instead, which is close for compact objects.
    """
    mesh = _closed_mesh(model)
    hull = mesh.convex_hull
    center_mass = mesh.center_mass if mesh.is_watertight and mesh.volume > 0 else hull.center_mass
    with np.errstate(invalid="ignore"):  # trimesh takes sqrt of tiny negative numbers on flat facets
        transforms, probabilities = trimesh.poses.compute_stable_poses(mesh, center_mass=center_mass, sigma=0.0, n_samples=1)
    if len(transforms) == 0:
        raise PlacementError(f"{model.name}: no stable pose found")
    transforms = np.asarray(transforms, float).copy()
    hull_vertices = np.asarray(hull.vertices, float)
    for T in transforms:
        p = trimesh.transform_points(hull_vertices, T)
        T[2, 3] -= p[:, 2].min()
        T[:2, 3] -= _polygon_centroid(footprint_polygon(p[:, :2]))
    probabilities = np.asarray(probabilities, float)
    return RestPoses(transforms, probabilities / probabilities.sum(), np.asarray(center_mass, float), hull_vertices)


def footprint_polygon(points_xy: np.ndarray) -> np.ndarray:
    """(P, 2) counter-clockwise convex hull of 2D points."""
    return points_xy[ConvexHull(points_xy).vertices]


def _polygon_centroid(polygon: np.ndarray) -> np.ndarray:
    x, y = polygon[:, 0], polygon[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    return np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6.0 * area)


def _edge_normals(polygon: np.ndarray) -> np.ndarray:
    edges = np.roll(polygon, -1, axis=0) - polygon
    normals = np.stack([edges[:, 1], -edges[:, 0]], 1)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def polygons_separated(a: np.ndarray, b: np.ndarray, gap_m: float = 0.0) -> bool:
    """Separating-axis test of two convex polygons with a clearance.

    Args:
        a, b: (P, 2), (Q, 2) convex polygons (any orientation).
        gap_m: required clearance.
    Returns:
        True if some edge normal separates the polygons by at least ``gap_m`` (then their
        Euclidean distance is at least ``gap_m``); False if they overlap or are closer along
        every edge normal.
    """
    axes = np.concatenate([_edge_normals(a), _edge_normals(b)])
    pa, pb = a @ axes.T, b @ axes.T
    separation = np.maximum(pb.min(0) - pa.max(0), pa.min(0) - pb.max(0))
    return bool(separation.max() >= gap_m)


def inside_table(polygon: np.ndarray, table_size_m: tuple[float, float], margin_m: float) -> bool:
    """Every corner of the (P, 2) polygon lies within the table top (centred on the origin) minus the margin."""
    half = np.asarray(table_size_m) / 2.0 - margin_m
    return bool(np.all(np.abs(polygon) <= half))


def yaw_transform(angle_rad: float) -> np.ndarray:
    """(4, 4) rotation about the world z axis."""
    T = np.eye(4)
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def place_objects(
    models: Sequence[ObjectModel],
    instance_model_indices: Sequence[int],
    rng: np.random.Generator,
    *,
    table_size_m: tuple[float, float],
    config: PlacementConfig = PlacementConfig(),
    rest_poses: Sequence[RestPoses] | None = None,
) -> list[PlacedInstance]:
    """Place instances (several may share a model) in one cluster on the table.

    Args:
        models: the object models.
        instance_model_indices: model index of each instance to place (repeats allowed).
        rng: seeded generator (the only source of randomness).
        table_size_m: (x, y) extent of the table top, centred on the world origin.
        config: cluster parameters.
        rest_poses: precomputed :func:`compute_rest_poses` per model (computed if None).
    Returns:
        One :class:`PlacedInstance` per entry of ``instance_model_indices``, in that order.
    Raises:
        PlacementError: an instance found no free spot on the table in ``config.max_attempts``.
    """
    if rest_poses is None:
        rest_poses = [compute_rest_poses(m) for m in models]
    centre = rng.uniform(-config.cluster_centre_jitter_m, config.cluster_centre_jitter_m, 2)
    order = rng.permutation(len(instance_model_indices))
    placed: dict[int, PlacedInstance] = {}
    for slot in order:
        model_index = int(instance_model_indices[slot])
        poses = rest_poses[model_index]
        for _attempt in range(config.max_attempts):
            k = int(rng.choice(len(poses.probabilities), p=poses.probabilities))
            T_rest = yaw_transform(rng.uniform(0.0, 2.0 * np.pi)) @ poses.transforms[k]
            hull = trimesh.transform_points(poses.hull_vertices, T_rest)
            footprint = footprint_polygon(hull[:, :2])  # centred on the origin up to the yaw
            direction = rng.normal(size=2)
            direction /= np.linalg.norm(direction)
            touch = rng.uniform() < config.touch_probability
            extra_gap = 0.0 if touch else rng.uniform(0.0, config.max_extra_gap_m)
            offset = _slide_to_contact(footprint, centre, direction, [p.footprint_xy for p in placed.values()], config)
            for distance in (offset + extra_gap, offset):
                candidate = footprint + centre + distance * direction
                if inside_table(candidate, table_size_m, config.table_margin_m) and all(
                    polygons_separated(candidate, p.footprint_xy, config.contact_gap_m) for p in placed.values()
                ):
                    T = np.eye(4)
                    T[:2, 3] = centre + distance * direction
                    placed[int(slot)] = PlacedInstance(
                        model_index, models[model_index].object_id, T @ T_rest, k, candidate
                    )
                    break
            if int(slot) in placed:
                break
        else:
            raise PlacementError(
                f"could not place {models[model_index].name} (instance {slot}) on the {table_size_m} m table "
                f"after {config.max_attempts} attempts; use fewer or smaller objects or a larger table"
            )
    return [placed[i] for i in range(len(instance_model_indices))]


def _slide_to_contact(
    footprint: np.ndarray, centre: np.ndarray, direction: np.ndarray, others: Sequence[np.ndarray], config: PlacementConfig
) -> float:
    """Smallest distance along ``direction`` from ``centre`` at which the footprint clears all others.

    Bisection between a colliding and a free distance; the result is free with clearance
    ``contact_gap_m`` and within ``bisection_tolerance_m`` of touching (or 0 if the centre is free).
    """

    def free(distance: float) -> bool:
        moved = footprint + centre + distance * direction
        return all(polygons_separated(moved, other, config.contact_gap_m) for other in others)

    if free(0.0):
        return 0.0
    reach = np.linalg.norm(footprint, axis=1).max() + config.contact_gap_m
    hi = reach + max(np.linalg.norm(o - centre, axis=1).max() for o in others) + config.contact_gap_m
    while not free(hi):  # the separating-axis test is conservative for nearly touching corners
        hi *= 1.5
    lo = 0.0
    while hi - lo > config.bisection_tolerance_m:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if free(mid) else (mid, hi)
    return hi
