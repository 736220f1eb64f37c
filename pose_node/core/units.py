"""Length units of mesh files: the one list shared by the node's configuration, ``pose_onboard``
and the docs (mesh files carry no reliable unit, so every mesh is declared in one of these)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

UNIT_TO_METRES: Mapping[str, float] = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "in": 0.0254}
MESH_UNITS: tuple[str, ...] = tuple(UNIT_TO_METRES)

# A size ratio within this factor of 1 is the declared unit being right (pose noise, partial views).
UNIT_RATIO_TOLERANCE = 2.0


def likely_units(declared: str, ratio: float, tolerance: float = UNIT_RATIO_TOLERANCE) -> str | None:
    """The unit a mesh is probably in when its size looks ``ratio`` times too large.

    Args:
        declared: the declared unit (a key of :data:`UNIT_TO_METRES`).
        ratio: model size in metres (with the declared unit) / the size observed (e.g. from
            depth); 10 means the model comes out ten times too large.
        tolerance: ratios within [1 / tolerance, tolerance] agree with the declared unit.
    Returns:
        The unit whose scale explains the ratio within ``tolerance``; None when the declared
        unit fits; ``"unknown"`` when the sizes disagree but no unit explains it.
    Raises:
        KeyError: unknown ``declared``.
    """
    if not (math.isfinite(ratio) and ratio > 0) or 1.0 / tolerance <= ratio <= tolerance:
        return None
    wanted = UNIT_TO_METRES[declared] / ratio
    best = min(UNIT_TO_METRES, key=lambda u: abs(math.log(UNIT_TO_METRES[u] / wanted)))
    return best if abs(math.log(UNIT_TO_METRES[best] / wanted)) <= math.log(tolerance) else "unknown"


# A detection's depth points give a size only with enough of them (a few pixels are noise).
MIN_EXTENT_POINTS = 50


def observed_extent_m(depth: np.ndarray, mask: np.ndarray, K: np.ndarray, *, percentile: float = 5.0) -> float | None:
    """Size of what a detection covers in the depth image: the diagonal of the bounding box of its
    back-projected depth points, between the ``percentile`` and ``100 - percentile`` percentiles
    per axis (stray background pixels at the mask border do not count).

    Args:
        depth: (H, W) metres, 0 or non-finite = no return.
        mask: (H, W) bool, the detection's pixels.
        K: (3, 3) intrinsics, pixels.
    Returns:
        Metres, or None with fewer than ``MIN_EXTENT_POINTS`` valid depth pixels in the mask.
    """
    v, u = np.nonzero(mask & np.isfinite(depth) & (depth > 0))
    if len(u) < MIN_EXTENT_POINTS:
        return None
    z = depth[v, u].astype(np.float64)
    points = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=1)
    low, high = np.percentile(points, [percentile, 100.0 - percentile], axis=0)
    return float(np.linalg.norm(high - low))


def depth_distance_ratio(T_world_object: np.ndarray, views: Sequence, window_px: int = 2) -> tuple[float, str] | None:
    """How many times farther an estimated object is than the depth observed at its centre.

    A mesh declared in the wrong units is estimated at a distance scaled by the unit error
    (PnP with a ten times too large model puts it ten times farther), while the depth image
    measures the true distance. Used on an object's first detection in RGB-D mode.

    Args:
        T_world_object: (4, 4) estimated pose, metres.
        views: :class:`~pose_node.core.types.View` s (camera K, size, ``T_world_camera``; depth
            (H, W) metres, 0 = no return).
        window_px: the depth is the median of the valid pixels within this many pixels of the
            projected centre.
    Returns:
        ``(estimated z / observed depth, view name)`` from the first view where the centre
        projects in front of the camera onto valid depth, or None.
    """
    p_world = np.append(np.asarray(T_world_object, dtype=np.float64)[:3, 3], 1.0)
    for view in views:
        if view.depth is None:
            continue
        p_cam = np.linalg.inv(view.camera.T_world_camera) @ p_world
        if p_cam[2] <= 0:
            continue
        u, v, _ = view.camera.K @ (p_cam[:3] / p_cam[2])
        col, row = int(round(u)), int(round(v))
        height, width = view.depth.shape
        if not (0 <= col < width and 0 <= row < height):
            continue
        patch = view.depth[max(row - window_px, 0):row + window_px + 1, max(col - window_px, 0):col + window_px + 1]
        valid = patch[np.isfinite(patch) & (patch > 0)]
        if valid.size:
            return float(p_cam[2] / np.median(valid)), view.name
    return None


__all__ = ["MESH_UNITS", "MIN_EXTENT_POINTS", "depth_distance_ratio", "observed_extent_m", "UNIT_RATIO_TOLERANCE", "UNIT_TO_METRES", "likely_units"]
