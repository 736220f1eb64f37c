"""Geometry-only instance proposals from one depth map (no learning, no colour).

Objects rest on a support surface (the table). Whatever sticks out of it and is separated from
its surroundings by a depth jump or a concave crease is a candidate instance:

1. Grid: the valid depth pixels of every ``stride_px``-th row and column are back-projected (no
   pooling, so depth edges stay sharp). Everything below works on the grid, in the bounding box
   of the foreground.
2. Support plane: RANSAC over a seeded subsample (all hypotheses scored in one matrix product),
   then least squares on the inliers; or the world z = 0 plane from ``T_world_camera``
   (``plane_source``), refined the same way. The normal points to the camera side, so the
   signed distance is the height above the table; points lower than
   ``min_height_above_plane_m`` (the table, the floor, the table's sides) are removed. No plane
   found: a warning, and every valid point is clustered (the table then forms a cluster larger
   than any object, which the size gate splits or drops).
3. Links: 4-neighbours are linked when their depth difference is below ``depth_jump_abs_m +
   tan(depth_jump_max_slope_deg) * z * stride_px / f``: the lateral spacing of two samples grows
   with depth, so does the depth step of a slanted surface between them.
4. Touching objects: where two objects touch, a few links across the contact would merge them.
   Three cues keep them apart:
   - creases: objects meet at concave folds, while most object surfaces are convex or mildly
     curved; nodes where the smoothed normal turns concavely by more than ``concave_turn_deg``
     over ``2 * concave_baseline_cells`` cells are crease nodes (normals use links between
     foreground nodes only, so the table makes no crease at an object's foot);
   - bridges: the seeds ("cores") of the clusters are the nodes off creases and farther than
     ``bridge_erosion_cells`` from any depth jump or cluster border, so a contact narrower than
     about twice that does not join two cores;
   - growth order: the cores grow over smooth links (no crease, normals within
     ``bridge_max_normal_angle_deg``) first and over all links second, so two clusters meet
     where the surface folds. Two clusters that still meet over smooth links were separated by
     the erosion alone (a thin-waisted object: scissors, a clamp) and merge again when that
     boundary is at least ``bridge_merge_ratio`` of the thinner one's width.
   Nodes no core reaches (a steep rim or a face seen edge-on, cut off by a depth jump) join an
   adjacent cluster under ``rim_link_scale`` times the link threshold, or are dropped. Clusters
   smaller than ``min_area_px`` join the neighbour they share most links with (pieces of
   concave objects). A cluster larger than ``max_object_diameter_m`` is clustered again with the
   depth-jump threshold and the crease angle scaled by ``split_threshold_scale`` and one more
   cell of erosion (up to ``max_split_passes`` times); what is still too large is dropped.
5. Gates: a cluster is kept when its robust 3D extent along its first principal axis is at
   most ``max_object_diameter_m``, its extent diagonal at least ``min_visible_extent_fraction *
   min_object_diameter_m`` (partly occluded objects show less than their diameter), and its
   full-resolution mask has at least ``min_area_px`` pixels.
6. Masks at full resolution: each pixel takes the cluster of its nearest grid node when its own
   depth agrees with that node's and it stands above the plane; a morphological closing and
   the filling of enclosed holes up to ``max_hole_fill_fraction`` of the mask (sensor dropouts)
   make the mask match the silhouette. Pixels of another cluster stay with it.

Score: solidity (mask area / convex hull area) times depth coverage (share of mask pixels with
valid depth), in [0, 1]: compact, well-measured regions score high, ragged leftovers low.

Known limits: objects whose visible surfaces meet flush (no fold, no depth jump, e.g. two boxes
of the same height side by side) stay one cluster unless it exceeds the maximum diameter;
objects flatter than ``min_height_above_plane_m`` vanish with the table; an object with a
concave fold of its own (a bottle's shoulder, a can's recessed lid) can come as two proposals;
thin objects a few grid cells wide (a clamp or a marker a metre away) touching another object
at a flat contact can merge with it.

Everything is numpy / OpenCV on the CPU; thin matrix products are written as einsum or column
sums because multi-threaded BLAS spins on them.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.linalg import eigh, norm  # imported here: numpy loads them lazily, on the first frame otherwise
from numpy.random import default_rng

from pose_node.core.errors import InvalidInputError, check_fields
from pose_node.detection.proposal_types import Proposal

logger = logging.getLogger(__name__)

PLANE_SOURCES: tuple[str, ...] = ("ransac", "world", "auto")
_REFINE_MAX_POINTS = 20000  # least-squares plane refits use at most about this many points
_TABLE_FIT_MAX_POINTS = 5000  # the table surface's fits (6 coefficients) use at most about this many


@dataclass(frozen=True)
class DepthProposalConfig:
    """Parameters of :func:`depth_proposals` (see the module docstring for the steps).

    Attributes:
        stride_px: grid step of the clustering, pixels (1 = every pixel; 2 is 4x faster).
        min_depth_m, max_depth_m: depth values outside this range are invalid.
        plane_source: ``"ransac"`` (fit the dominant plane), ``"world"`` (the world z = 0 plane
            from ``T_world_camera``, which must be given) or ``"auto"`` (world when
            ``T_world_camera`` is given, else RANSAC).
        plane_ransac_iterations: plane hypotheses (3 random points each).
        plane_ransac_sample_size: points the hypotheses are scored on (a seeded subsample).
        plane_inlier_threshold_m: point-to-plane distance of a plane inlier.
        plane_min_inlier_fraction: below this share of valid grid points there is no plane.
        plane_refine_iterations: least-squares refits on the inliers (also applied to the world
            plane, which absorbs small extrinsic errors; 0 takes the world plane as is).
        min_height_above_plane_m: points lower than this above the plane are support surface.
        depth_jump_abs_m, depth_jump_max_slope_deg: samples ``k`` pixels apart at depth ``z`` are
            linked when their depth difference is below ``abs + tan(slope) * z * k / f`` (``f``
            the mean focal length, pixels; ``z * k / f`` is their lateral spacing), i.e. when the
            surface between them is inclined less than ``slope`` to the image plane, up to the
            absolute noise allowance.
        normal_window_cells: side of the box window that smooths the tangent vectors, grid cells.
        concave_baseline_cells: the normal turn is measured between nodes this many cells on
            either side of a node.
        concave_turn_deg: a node whose surface turns concavely by more than this (along x or y)
            is a crease between objects.
        bridge_erosion_cells: cluster cores are the nodes farther than this from any crease,
            depth jump or cluster border (grid cells); connections thinner than about twice
            this between two cores do not merge them.
        bridge_merge_ratio: two cores joined over a bridge without crease or depth jump are one
            cluster again when the bridge is at least this fraction of the thinner core's width
            (thin-waisted objects); 0 keeps every erosion split. Only links whose surface normals
            differ by less than ``bridge_max_normal_angle_deg`` count as bridge.
        rim_link_scale: nodes no core grows into (thin rims cut off by a depth jump at grazing
            view) join an adjacent cluster when their depth jump is below this times the link
            threshold (1: never), up to ``rim_max_cells`` grid cells away from the cluster.
        min_object_diameter_m, max_object_diameter_m: diameter range of the known objects (the
            pipeline passes min / max over its objects, with a margin).
        min_visible_extent_fraction: clusters whose 3D extent diagonal is below this fraction of
            ``min_object_diameter_m`` are dropped.
        extent_percentile: the extents ignore this share (percent) of points at either end of each
            principal axis (flying pixels).
        min_area_px: minimum mask area at full resolution, pixels.
        max_split_passes: re-clustering passes of clusters above the maximum diameter.
        split_threshold_scale: factor applied to the depth-jump thresholds and the concave angle
            in each further pass (which also erodes one cell more and merges no bridges).
        mask_closing_px: diameter of the elliptic closing kernel, pixels (0: none).
        max_hole_fill_fraction: enclosed holes up to this fraction of the mask area are filled.
        max_proposals: best-scoring proposals returned.
        table_curvature: model the table top as a quadratic surface over the plane (tables
            sag, depth sensors bend planes slightly): :class:`TableSurface`, fitted to the points
            within ``table_fit_band_m`` of the plane; heights are measured from it.
        table_fit_band_m: see ``table_curvature``; the correction is clipped to this, metres.
        low_relief_min_height_m: objects too flat for ``min_height_above_plane_m`` (a card, a
            spatula a few millimetres proud of the table) are proposed when the 3x3-averaged
            height of connected nodes off the foreground is at least this, metres (0: off).
        hole_fill_px: sensor holes up to about twice this many pixels wide are filled with the
            farthest valid depth around them before clustering (:func:`fill_depth_holes`; 0: off).
        seed: seed of the RANSAC sampling (results are deterministic).
    """

    stride_px: int = 2
    min_depth_m: float = 0.05
    max_depth_m: float = 6.0
    plane_source: str = "ransac"
    plane_ransac_iterations: int = 200
    plane_ransac_sample_size: int = 3000
    plane_inlier_threshold_m: float = 0.008
    plane_min_inlier_fraction: float = 0.15
    plane_refine_iterations: int = 2
    min_height_above_plane_m: float = 0.008
    depth_jump_abs_m: float = 0.004
    depth_jump_max_slope_deg: float = 70.0
    bridge_erosion_cells: int = 2
    bridge_merge_ratio: float = 0.5
    bridge_max_normal_angle_deg: float = 20.0
    rim_link_scale: float = 3.0
    rim_max_cells: int = 8
    normal_window_cells: int = 5
    concave_baseline_cells: int = 2
    concave_turn_deg: float = 35.0
    min_object_diameter_m: float = 0.03
    max_object_diameter_m: float = 0.35
    min_visible_extent_fraction: float = 0.3
    extent_percentile: float = 2.0
    min_area_px: int = 100
    max_split_passes: int = 2
    split_threshold_scale: float = 0.7
    mask_closing_px: int = 5
    max_hole_fill_fraction: float = 0.2
    max_proposals: int = 50
    hole_fill_px: int = 4
    table_curvature: bool = True
    table_fit_band_m: float = 0.025
    low_relief_min_height_m: float = 0.003
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("stride_px", self.stride_px >= 1),
            ("min_depth_m", self.min_depth_m >= 0),
            ("max_depth_m", self.max_depth_m > self.min_depth_m),
            ("plane_source", self.plane_source in PLANE_SOURCES),
            ("plane_ransac_iterations", self.plane_ransac_iterations >= 1),
            ("plane_ransac_sample_size", self.plane_ransac_sample_size >= 3),
            ("plane_inlier_threshold_m", self.plane_inlier_threshold_m > 0),
            ("plane_min_inlier_fraction", 0 <= self.plane_min_inlier_fraction <= 1),
            ("plane_refine_iterations", self.plane_refine_iterations >= 0),
            ("min_height_above_plane_m", self.min_height_above_plane_m >= 0),
            ("depth_jump_abs_m", self.depth_jump_abs_m >= 0),
            ("depth_jump_max_slope_deg", 0 <= self.depth_jump_max_slope_deg < 90),
            ("bridge_erosion_cells", self.bridge_erosion_cells >= 0),
            ("bridge_merge_ratio", self.bridge_merge_ratio >= 0),
            ("bridge_max_normal_angle_deg", 0 < self.bridge_max_normal_angle_deg <= 180),
            ("rim_link_scale", self.rim_link_scale >= 1),
            ("rim_max_cells", self.rim_max_cells >= 0),
            ("normal_window_cells", self.normal_window_cells >= 1),
            ("concave_baseline_cells", self.concave_baseline_cells >= 1),
            ("concave_turn_deg", 0 < self.concave_turn_deg <= 180),
            ("min_object_diameter_m", self.min_object_diameter_m > 0),
            ("max_object_diameter_m", self.max_object_diameter_m >= self.min_object_diameter_m),
            ("min_visible_extent_fraction", 0 <= self.min_visible_extent_fraction <= 1),
            ("extent_percentile", 0 <= self.extent_percentile < 50),
            ("min_area_px", self.min_area_px >= 1),
            ("max_split_passes", self.max_split_passes >= 0),
            ("split_threshold_scale", 0 < self.split_threshold_scale < 1),
            ("mask_closing_px", self.mask_closing_px >= 0),
            ("max_hole_fill_fraction", 0 <= self.max_hole_fill_fraction <= 1),
            ("max_proposals", self.max_proposals >= 1), ("hole_fill_px", self.hole_fill_px >= 0),
            ("table_fit_band_m", self.table_fit_band_m > 0), ("low_relief_min_height_m", self.low_relief_min_height_m >= 0),
        ]
        check_fields(self, checks)


@dataclass(frozen=True)
class SupportPlane:
    """A plane ``normal . p + offset_m = height`` in the camera frame.

    Attributes:
        normal: (3,) unit vector, camera frame, pointing toward the camera side of the plane.
        offset_m: signed distance of the camera centre from the plane (positive above it).
        inlier_fraction: share of the valid points within the inlier threshold.
    """

    normal: np.ndarray
    offset_m: float
    inlier_fraction: float

    def height_m(self, points_cam: np.ndarray) -> np.ndarray:
        """Signed heights above the plane. Args: points_cam (..., 3) metres. Returns (...,) metres."""
        # einsum, not a BLAS product: multi-threaded BLAS spins on these thin products.
        return np.einsum("...c,c->...", points_cam, self.normal.astype(points_cam.dtype)) + np.asarray(
            self.offset_m, points_cam.dtype)


def _oriented_plane(normal: np.ndarray, offset: float, inlier_fraction: float) -> SupportPlane:
    """Normalize and orient the plane so the camera centre (origin) lies above it."""
    scale = float(norm(normal))
    normal, offset = normal / scale, offset / scale
    if offset < 0:
        normal, offset = -normal, -offset
    return SupportPlane(normal.astype(np.float64), float(offset), float(inlier_fraction))


def _scatter(q: np.ndarray) -> np.ndarray:
    """(3, 3) float64 ``q^T q`` of (N, 3) centred points, by columns (BLAS threads spin on it)."""
    q = q.astype(np.float64, copy=False)
    out = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            out[i, j] = out[j, i] = (q[:, i] * q[:, j]).sum()
    return out


def _least_squares_plane(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Total least squares plane of (N, 3) points (N >= 3): (normal (3,), offset)."""
    centre = points.mean(0, dtype=np.float64)
    q = points.astype(np.float64) - centre
    _, eigenvectors = eigh(_scatter(q))
    normal = eigenvectors[:, 0]
    return normal, -float(normal @ centre)


def _refine_plane(points: np.ndarray, plane: SupportPlane, threshold_m: float, iterations: int) -> SupportPlane:
    """Least-squares refits on the inliers of ``plane`` among ``points`` (N, 3) metres."""
    for _ in range(iterations):
        inliers = np.abs(plane.height_m(points)) < threshold_m
        if np.count_nonzero(inliers) < 3:
            break
        normal, offset = _least_squares_plane(points[inliers])
        candidate = _oriented_plane(normal, offset, 0.0)
        if float(candidate.normal @ plane.normal) < 0.9:  # a refit must not jump to another surface
            break
        plane = candidate
    fraction = float(np.mean(np.abs(plane.height_m(points)) < threshold_m)) if len(points) else 0.0
    return SupportPlane(plane.normal, plane.offset_m, fraction)


def fit_support_plane(points_cam: np.ndarray, config: DepthProposalConfig, *,
                      refine_points: np.ndarray | None = None) -> SupportPlane | None:
    """Dominant plane of a point cloud: seeded RANSAC, then least squares on its inliers.

    Args:
        points_cam: (N, 3) metres, camera frame (finite).
        config: RANSAC and refinement parameters.
        refine_points: (M, 3) metres, the points of the least-squares refits and of the final
            inlier fraction (default ``points_cam``; a subsample is faster).
    Returns:
        The plane (normal toward the camera side), or None when fewer than
        ``plane_min_inlier_fraction`` of the points support the best hypothesis.
    """
    points = np.asarray(points_cam, np.float32)
    n_points = len(points)
    if n_points < 3:
        return None
    rng = default_rng(config.seed)
    sample = points[rng.integers(0, n_points, size=config.plane_ransac_sample_size)]
    picks = rng.integers(0, len(sample), size=(config.plane_ransac_iterations, 3))
    p0, p1, p2 = sample[picks[:, 0]], sample[picks[:, 1]], sample[picks[:, 2]]
    normals = np.cross(p1 - p0, p2 - p0)
    norms = norm(normals, axis=1)
    good = norms > 1e-9
    if not np.any(good):
        return None
    normals = normals[good] / norms[good, None]
    offsets = -np.einsum("ij,ij->i", normals, p0[good])
    distances = np.abs(sample[:, 0:1] * normals[:, 0] + sample[:, 1:2] * normals[:, 1] + sample[:, 2:3] * normals[:, 2]
                       + offsets)
    inlier_counts = (distances < config.plane_inlier_threshold_m).sum(0)
    best = int(np.argmax(inlier_counts))
    if inlier_counts[best] < config.plane_min_inlier_fraction * len(sample):
        return None
    plane = _oriented_plane(normals[best].astype(np.float64), float(offsets[best]), 0.0)
    refine_points = points if refine_points is None else np.asarray(refine_points, np.float32)
    plane = _refine_plane(refine_points, plane, config.plane_inlier_threshold_m, config.plane_refine_iterations)
    return plane if plane.inlier_fraction >= config.plane_min_inlier_fraction else None


def world_support_plane(T_world_camera: np.ndarray) -> SupportPlane:
    """The world z = 0 plane (the workcell table top) in a camera frame.

    Args:
        T_world_camera: (4, 4) rigid transform, metres (world z up).
    Returns:
        The plane; ``height_m`` of a camera point is its world z.
    Raises:
        InvalidInputError: the rotation part of ``T_world_camera`` is zero.
    """
    T = np.asarray(T_world_camera, np.float64)
    # z_world = R[2] . p_cam + t[2]: the third row of R is the world up axis seen in the camera frame.
    scale = float(norm(T[2, :3]))
    if not scale > 0:
        raise InvalidInputError(f"world_support_plane: T_world_camera has no rotation part: {T.tolist()}")
    return SupportPlane(T[2, :3] / scale, float(T[2, 3]) / scale, float("nan"))


def _validate(depth_m: np.ndarray, K: np.ndarray, T_world_camera: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    depth = np.asarray(depth_m)
    if depth.ndim != 2 or depth.shape[0] < 2 or depth.shape[1] < 2:
        raise InvalidInputError(f"depth_proposals: depth_m must be (H, W) with H, W >= 2, got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise InvalidInputError(f"depth_proposals: depth_m must be floating point metres, got dtype {depth.dtype}")
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InvalidInputError(
            f"depth_proposals: K must be a finite (3, 3) pinhole matrix with fx, fy > 0, got {K.tolist()}")
    if T_world_camera is not None:
        T = np.asarray(T_world_camera)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise InvalidInputError(
                f"depth_proposals: T_world_camera must be a finite (4, 4) matrix, got shape {T.shape}")
    return depth.astype(np.float32, copy=False), K


def _link_threshold(z: np.ndarray, separation_px: float, rel_per_px: float, config: DepthProposalConfig) -> np.ndarray:
    """Largest depth difference (metres) of two linked samples ``separation_px`` apart at depth z
    (metres); ``rel_per_px`` = tan(max slope) / focal length."""
    return np.float32(config.depth_jump_abs_m) + np.float32(rel_per_px * separation_px) * z


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("...c,...c->...", v, v))


@dataclass(frozen=True)
class _Grid:
    """The strided grid (h, w nodes, a crop around the foreground) with what every pass needs.

    Attributes:
        points: (h, w, 3) float32 metres, camera frame (0 where invalid).
        z: (h, w) float32 metres (0 where invalid).
        valid: (h, w) bool, the depth is valid.
        foreground: (h, w) bool, valid and above the support plane.
        jump_x, jump_y: (h, w - 1), (h - 1, w) float32 depth difference of neighbours over their
            link threshold: a link holds where the ratio is below the pass's scale (inf where a
            node is invalid).
        normals: (h, w, 3) float32 unit normals toward the camera (0 where unknown).
        turn: (h, w) float32 largest concave normal turn (sine) along x or y, 0 where unknown.
    """

    points: np.ndarray
    z: np.ndarray
    valid: np.ndarray
    foreground: np.ndarray
    jump_x: np.ndarray
    jump_y: np.ndarray
    normals: np.ndarray
    turn: np.ndarray


def _jump_ratios(z: np.ndarray, valid: np.ndarray, stride: int, rel_per_px: float,
                 config: DepthProposalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Depth steps between grid neighbours over their link threshold (a link holds below 1).

    Returns (h, w - 1) for horizontal and (h - 1, w) for vertical neighbours, float32, inf where
    a node is invalid.
    """
    ratios = []
    for a, b, ok in ((z[:, :-1], z[:, 1:], valid[:, :-1] & valid[:, 1:]), (z[:-1], z[1:], valid[:-1] & valid[1:])):
        ratio = np.abs(a - b) / _link_threshold(np.minimum(a, b), stride, rel_per_px, config)
        ratios.append(np.where(ok, ratio, np.float32(np.inf)).astype(np.float32))
    return ratios[0], ratios[1]


def _smoothed_normals(points: np.ndarray, foreground: np.ndarray, jump_x: np.ndarray, jump_y: np.ndarray,
                      window: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (h, w, 3) toward the camera and their validity (h, w), on the foreground.

    Tangents are differences over links between foreground nodes only (never across a depth
    jump, never onto the support plane), summed in a ``window`` box, so a normal never mixes two
    surfaces at an occlusion boundary and the table never makes a crease at an object's foot.
    """
    h, w, _ = points.shape
    tangents = []
    for axis, ratio in ((1, jump_x), (0, jump_y)):
        both = foreground[:, 1:] & foreground[:, :-1] if axis == 1 else foreground[1:] & foreground[:-1]
        linked = ((ratio < 1.0) & both).astype(np.float32)
        diff = np.diff(points, axis=axis) * linked[..., None]
        total = np.zeros_like(points)
        count = np.zeros((h, w), np.float32)
        if axis == 1:
            total[:, :-1] += diff
            total[:, 1:] += diff
            count[:, :-1] += linked
            count[:, 1:] += linked
        else:
            total[:-1] += diff
            total[1:] += diff
            count[:-1] += linked
            count[1:] += linked
        total = cv2.boxFilter(total, -1, (window, window), normalize=False, borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter(count, -1, (window, window), normalize=False, borderType=cv2.BORDER_CONSTANT)
        tangents.append((total, count))
    (tx, cx), (ty, cy) = tangents
    normals = np.cross(ty, tx)  # image y points down: ty x tx points toward the camera
    length = _norm(normals)
    ok = foreground & (cx > 0) & (cy > 0) & (length > 1e-12)
    normals /= np.where(ok, length, np.float32(1))[..., None]
    normals[~ok] = 0
    return normals, ok


def _concave_turn(grid_points: np.ndarray, normals: np.ndarray, normal_ok: np.ndarray, z: np.ndarray,
                  stride: int, rel_per_px: float, config: DepthProposalConfig) -> np.ndarray:
    """(h, w) float32: the larger concave normal turn along x or y (sine of the angle; 0 = none).

    Turn along x at node j: ``-(n[j+k] - n[j-k]) . unit(p[j+k] - p[j-k])``, positive where the
    surface folds toward the camera (concave seen from the camera), for ``k`` =
    ``concave_baseline_cells``; measured only where both ends are on the same surface (their
    depth difference is within the link threshold for their separation).
    """
    k = config.concave_baseline_cells
    h, w = z.shape
    turn = np.zeros((h, w), np.float32)
    for axis in (0, 1):
        if (h if axis == 0 else w) <= 2 * k:
            continue
        lo = (slice(None), slice(None, -2 * k)) if axis == 1 else (slice(None, -2 * k), slice(None))
        hi = (slice(None), slice(2 * k, None)) if axis == 1 else (slice(2 * k, None), slice(None))
        mid = (slice(None), slice(k, -k)) if axis == 1 else (slice(k, -k), slice(None))
        dp = grid_points[hi] - grid_points[lo]
        dn = normals[hi] - normals[lo]
        length = _norm(dp)
        za, zb = z[lo], z[hi]
        ok = (normal_ok[lo] & normal_ok[hi]
              & (np.abs(za - zb) < _link_threshold(np.minimum(za, zb), 2 * k * stride, rel_per_px, config)))
        t = -np.einsum("ijc,ijc->ij", dn, dp) / np.maximum(length, np.float32(1e-9))
        np.maximum(turn[mid], np.where(ok, t, np.float32(0)), out=turn[mid])
    return turn


def _label_links(nodes: np.ndarray, link_x: np.ndarray, link_y: np.ndarray) -> np.ndarray:
    """Connected components of a grid graph: (h, w) int32 labels 1.. (0 = not a node).

    The graph is drawn on a (2h - 1, 2w - 1) image, nodes at even coordinates and a pixel
    between two nodes where they are linked, so OpenCV's 4-connected labelling applies.
    """
    h, w = nodes.shape
    canvas = np.zeros((2 * h - 1, 2 * w - 1), np.uint8)
    canvas[::2, ::2] = nodes
    canvas[::2, 1::2] = link_x & nodes[:, :-1] & nodes[:, 1:]
    canvas[1::2, ::2] = link_y & nodes[:-1] & nodes[1:]
    _, labels = cv2.connectedComponents(canvas, connectivity=4, ltype=cv2.CV_32S)
    return labels[::2, ::2].copy()


def _grow(labels: np.ndarray, nodes: np.ndarray, link_x: np.ndarray, link_y: np.ndarray, max_steps: int) -> np.ndarray:
    """Geodesic growth: unlabelled ``nodes`` take the label of a linked labelled neighbour, layer
    by layer (the largest label wins a tie), for at most ``max_steps`` layers."""
    labels = labels.copy()
    for _ in range(max_steps):
        free = nodes & (labels == 0)
        if not free.any():
            break
        offer = np.zeros_like(labels)
        np.maximum(offer[:, 1:], np.where(link_x, labels[:, :-1], 0), out=offer[:, 1:])
        np.maximum(offer[:, :-1], np.where(link_x, labels[:, 1:], 0), out=offer[:, :-1])
        np.maximum(offer[1:], np.where(link_y, labels[:-1], 0), out=offer[1:])
        np.maximum(offer[:-1], np.where(link_y, labels[1:], 0), out=offer[:-1])
        new = free & (offer > 0)
        if not new.any():
            break
        labels[new] = offer[new]
    return labels


def _merge_small(labels: np.ndarray, link_x: np.ndarray, link_y: np.ndarray, min_nodes: int) -> np.ndarray:
    """Merge components smaller than ``min_nodes`` into the neighbour they share most links with."""
    count = int(labels.max())
    if count < 2:
        return labels
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    pairs = []
    for a, b, link in ((labels[:, :-1], labels[:, 1:], link_x), (labels[:-1], labels[1:], link_y)):
        cross = link & (a > 0) & (b > 0) & (a != b)
        pairs.append(np.stack([a[cross], b[cross]], 1))
    pairs = np.concatenate(pairs)
    if len(pairs) == 0:
        return labels
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = pairs[sizes[pairs[:, 0]] < min_nodes]
    if len(pairs) == 0:
        return labels
    keys, shared = np.unique(pairs[:, 0].astype(np.int64) * (count + 1) + pairs[:, 1], return_counts=True)
    src, dst = keys // (count + 1), keys % (count + 1)
    # Per small component: the neighbour with most shared links, then the larger one.
    order = np.lexsort((-sizes[dst], -shared, src))
    src, dst = src[order], dst[order]
    first = np.r_[True, src[1:] != src[:-1]]
    identity = np.arange(count + 1)
    target = identity.copy()
    target[src[first]] = dst[first]
    mutual = target[target] == identity
    target[mutual] = np.minimum(identity, target)[mutual]  # a <-> b: both go to min(a, b)
    for _ in range(8):  # a small piece merged into another small piece: follow the chain
        following = target[target]
        if np.array_equal(following, target):
            break
        target = following
    return target[labels].astype(np.int32)


def _smooth_links(grid: _Grid, crease: np.ndarray, link_x: np.ndarray, link_y: np.ndarray,
                  config: DepthProposalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Links between non-crease nodes whose normals differ by less than ``bridge_max_normal_angle_deg``."""
    min_cos = np.float32(math.cos(math.radians(config.bridge_max_normal_angle_deg)))
    n = grid.normals
    smooth_x = link_x & ~crease[:, :-1] & ~crease[:, 1:] & (np.einsum("ijc,ijc->ij", n[:, :-1], n[:, 1:]) >= min_cos)
    smooth_y = link_y & ~crease[:-1] & ~crease[1:] & (np.einsum("ijc,ijc->ij", n[:-1], n[1:]) >= min_cos)
    return smooth_x, smooth_y


def _merge_wide_bridges(labels: np.ndarray, distance: np.ndarray, smooth_x: np.ndarray, smooth_y: np.ndarray,
                        ratio: float) -> np.ndarray:
    """Undo erosion splits of thin-waisted objects.

    Grown over smooth links first, two clusters meet over smooth links only where nothing but
    the erosion separated them. They are merged when that boundary is at least ``ratio`` times
    as long as the thinner cluster is wide (twice its largest distance to a border, grid
    cells): a bridge as wide as the parts it joins (scissor blades, a clamp's arms) belongs to
    one object, a bridge much narrower than both (touching objects leaking at their contact)
    does not.
    """
    count = int(labels.max())
    if count < 2:
        return labels
    pairs = []
    for a, b, smooth in ((labels[:, :-1], labels[:, 1:], smooth_x), (labels[:-1], labels[1:], smooth_y)):
        smooth = smooth & (a > 0) & (b > 0) & (a != b)
        pairs.append(np.stack([np.minimum(a, b)[smooth], np.maximum(a, b)[smooth]], 1))
    pairs = np.concatenate(pairs)
    if len(pairs) == 0:
        return labels
    keys, shared = np.unique(pairs[:, 0].astype(np.int64) * (count + 1) + pairs[:, 1], return_counts=True)
    width = np.zeros(count + 1, np.float32)
    np.maximum.at(width, labels.ravel(), distance.ravel())
    width *= 2
    src, dst = keys // (count + 1), keys % (count + 1)
    merge = shared >= ratio * np.minimum(width[src], width[dst])
    if not merge.any():
        return labels
    parent = np.arange(count + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in zip(src[merge], dst[merge]):
        ra, rb = root(int(a)), root(int(b))
        parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(count + 1)])[labels].astype(np.int32)


def _segment(grid: _Grid, nodes: np.ndarray, stride: int, config: DepthProposalConfig, level: int) -> np.ndarray:
    """One clustering pass over ``nodes`` (h, w) bool: (h, w) int32 labels (0 = none).

    Level 0 uses the configured thresholds; each further level scales the depth-jump threshold
    and the concave angle by ``split_threshold_scale`` and erodes one cell more.
    """
    scale = config.split_threshold_scale**level
    link_x, link_y = grid.jump_x < scale, grid.jump_y < scale
    crease = grid.turn > math.sin(math.radians(config.concave_turn_deg * scale))
    # Cores: nodes off creases and farther than the erosion radius from a depth jump or from valid
    # depth outside ``nodes``, so that thin bridges (where touching objects leak into each other)
    # vanish. Missing depth is no border: sensor holes would cut objects apart.
    border = grid.valid & ~nodes
    broken_x = np.isfinite(grid.jump_x) & ~link_x
    broken_y = np.isfinite(grid.jump_y) & ~link_y
    border[:, :-1] |= broken_x
    border[:, 1:] |= broken_x
    border[:-1] |= broken_y
    border[1:] |= broken_y
    erosion = config.bridge_erosion_cells + level
    core = nodes & ~crease & ~border
    if erosion > 0:
        distance = cv2.distanceTransform(np.pad(~border, 1, constant_values=True).astype(np.uint8), cv2.DIST_L2, 3)
        core &= distance[1:-1, 1:-1] > erosion
    labels = _label_links(core, link_x, link_y)
    # Grow the cores over smooth links first (no crease, similar normals), then over all links,
    # so that clusters meet where the surface folds or jumps rather than half-way.
    smooth_x, smooth_y = _smooth_links(grid, crease, link_x, link_y, config)
    labels = _grow(labels, nodes, smooth_x, smooth_y, sum(nodes.shape))
    labels = _grow(labels, nodes, link_x, link_y, sum(nodes.shape))
    if erosion > 0 and level == 0 and config.bridge_merge_ratio > 0:
        labels = _merge_wide_bridges(labels, distance[1:-1, 1:-1], smooth_x, smooth_y, config.bridge_merge_ratio)
    rest = nodes & (labels == 0)
    if rest.any() and labels.any() and config.rim_link_scale > 1:
        # Pieces too thin to hold a core that no core reaches over links (the steep rim of a
        # curved surface or a face seen edge-on, cut off by a depth jump) join an adjacent
        # cluster under a looser depth-jump threshold.
        relaxed = scale * config.rim_link_scale
        labels = _grow(labels, rest, grid.jump_x < relaxed, grid.jump_y < relaxed, config.rim_max_cells)
    # Whatever is still unlabelled is too thin to be an object seen well enough: it is dropped.
    min_nodes = max(1, int(math.ceil(config.min_area_px / stride**2)))
    return _merge_small(labels, link_x, link_y, min_nodes)


def _segment_within(grid: _Grid, nodes: np.ndarray, stride: int, config: DepthProposalConfig, level: int) -> np.ndarray:
    """:func:`_segment` of ``nodes`` (h, w) run on the grid cropped to their bounding box (faster)."""
    rows, cols = np.flatnonzero(nodes.any(1)), np.flatnonzero(nodes.any(0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, nodes.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, nodes.shape[1])
    box = (slice(r0, r1), slice(c0, c1))
    sub = _Grid(grid.points[box], grid.z[box], grid.valid[box], grid.foreground[box], grid.jump_x[r0:r1, c0:c1 - 1],
                grid.jump_y[r0:r1 - 1, c0:c1], grid.normals[box], grid.turn[box])
    labels = np.zeros(nodes.shape, np.int32)
    labels[box] = _segment(sub, nodes[box], stride, config, level)
    return labels


def _extents_m(points: np.ndarray, percentile: float) -> np.ndarray:
    """(3,) robust extents of (N, 3) points along their principal axes, largest first, metres."""
    if len(points) < 4:
        return np.zeros(3)
    q = points - points.mean(0)
    _, axes = eigh(_scatter(q))
    projected = np.einsum("nc,ck->nk", q, axes[:, ::-1].astype(np.float32))
    lo, hi = np.percentile(projected, [percentile, 100.0 - percentile], axis=0)
    return (hi - lo).astype(np.float64)


def _gate_and_split(grid: _Grid, labels: np.ndarray, stride: int, config: DepthProposalConfig) -> list[np.ndarray]:
    """Node masks (h, w) of the clusters that pass the size gates, splitting oversized ones."""
    min_extent_m = config.min_visible_extent_fraction * config.min_object_diameter_m
    min_nodes = max(1, int(math.ceil(config.min_area_px / stride**2)))
    points_flat = grid.points.reshape(-1, 3)
    kept: list[np.ndarray] = []
    pending = [(labels, 0)]
    while pending:
        current, level = pending.pop()
        count = int(current.max())
        if count == 0:
            continue
        flat = current.ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(1, count + 2))
        for label in range(1, count + 1):
            index = order[bounds[label - 1]:bounds[label]]
            if len(index) < min_nodes:
                continue
            extents = _extents_m(points_flat[index], config.extent_percentile)
            if extents[0] > config.max_object_diameter_m:
                if level < config.max_split_passes:
                    nodes = np.zeros(current.shape, bool)
                    nodes.ravel()[index] = True
                    pending.append((_segment_within(grid, nodes, stride, config, level + 1), level + 1))
                else:
                    logger.debug("depth_proposals: dropped a cluster of extent %.3f m > max diameter %.3f m",
                                 extents[0], config.max_object_diameter_m)
                continue
            if float(norm(extents)) < min_extent_m:
                continue
            nodes = np.zeros(current.shape, bool)
            nodes.ravel()[index] = True
            kept.append(nodes)
    return kept


def _clean_mask(crop_labels: np.ndarray, label: int, config: DepthProposalConfig) -> np.ndarray:
    """Closed, hole-filled (h, w) bool mask of ``label`` in a crop of the full-resolution labels."""
    mask = (crop_labels == label).astype(np.uint8)
    if config.mask_closing_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (config.mask_closing_px, config.mask_closing_px))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if config.max_hole_fill_fraction > 0:
        n, holes, stats, _ = cv2.connectedComponentsWithStats(1 - mask, connectivity=4)
        ch, cw = mask.shape
        x, y, bw, bh, hole_area = stats[1:].T
        enclosed = (x > 0) & (y > 0) & (x + bw < cw) & (y + bh < ch)
        enclosed &= hole_area <= config.max_hole_fill_fraction * mask.sum()
        if enclosed.any():
            mask[np.isin(holes, 1 + np.flatnonzero(enclosed))] = 1
    return mask.astype(bool) & ((crop_labels == 0) | (crop_labels == label))


def _solidity(mask: np.ndarray) -> float:
    """Mask area over the area of its convex hull, in [0, 1]."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
    return float(min(1.0, np.count_nonzero(mask) / hull_area)) if hull_area > 0 else 0.0


def depth_proposals(
    depth_m: np.ndarray,
    K: np.ndarray,
    config: DepthProposalConfig = DepthProposalConfig(),
    *,
    T_world_camera: np.ndarray | None = None,
) -> list[Proposal]:
    """Instance proposals from one depth map (see the module docstring for the method).

    Args:
        depth_m: (H, W) float metres along the optical axis; 0, negative, NaN, inf or outside
            ``[min_depth_m, max_depth_m]`` are invalid.
        K: (3, 3) pinhole intrinsics of the depth image, pixels (pixel centres at integers).
        config: parameters.
        T_world_camera: (4, 4) metres, optional; with ``plane_source`` ``"world"`` or ``"auto"``
            the support plane is the world z = 0 plane (refined by least squares on its inliers).
    Returns:
        Up to ``max_proposals`` proposals with ``source="depth"``, best score first; each carries
        the grid samples of its cluster as ``points_cam`` (N, 3) float32 metres, camera frame.
        Empty when no depth is valid or nothing stands out of the support plane.
    Raises:
        InvalidInputError: bad shapes or dtypes, or ``plane_source="world"`` without
            ``T_world_camera``.
    """
    started = time.perf_counter()
    depth, K = _validate(depth_m, K, T_world_camera)
    if config.plane_source == "world" and T_world_camera is None:
        raise InvalidInputError("depth_proposals: plane_source='world' needs T_world_camera")
    H, W = depth.shape
    with np.errstate(invalid="ignore"):
        valid_full = (depth >= config.min_depth_m) & (depth <= config.max_depth_m)  # False for NaN
    depth = np.where(valid_full, depth, np.float32(0))
    measured = valid_full
    if config.hole_fill_px > 0:
        depth, valid_full = fill_depth_holes(depth, valid_full, config.hole_fill_px)
    s = config.stride_px
    z = np.ascontiguousarray(depth[::s, ::s])
    valid = valid_full[::s, ::s]
    if not valid.any():
        logger.debug("depth_proposals: no valid depth")
        return []
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rel_per_px = math.tan(math.radians(config.depth_jump_max_slope_deg)) * 2.0 / (fx + fy)
    ray_x = ((np.arange(W, dtype=np.float64) - cx) / fx).astype(np.float32)
    ray_y = ((np.arange(H, dtype=np.float64) - cy) / fy).astype(np.float32)
    points = np.stack([z * ray_x[None, ::s], z * ray_y[::s, None], z], axis=2)

    plane = _support_plane(points[valid], config, T_world_camera)
    t_plane = time.perf_counter()
    surface = None
    low = np.zeros_like(valid)
    if plane is None:
        logger.warning("depth_proposals: no support plane found (best < %.0f%% of %d points); "
                       "clustering every valid point", 100 * config.plane_min_inlier_fraction, int(valid.sum()))
        foreground = valid
    else:
        if config.table_curvature:
            surface = fit_table_surface(points[valid], plane, config)
        height = surface.height_m(points) if surface is not None else plane.height_m(points)
        foreground = valid & (height >= config.min_height_above_plane_m)
        if config.low_relief_min_height_m > 0:
            low = _low_relief_nodes(height, valid, foreground, config)
    if not (foreground | low).any():
        return []
    # Work on the bounding box of the foreground (plus the reach of the normal window).
    margin = config.normal_window_cells + config.concave_baseline_cells + 1
    rows, cols = np.flatnonzero((foreground | low).any(1)), np.flatnonzero((foreground | low).any(0))
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, z.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, z.shape[1])
    crop = (slice(r0, r1), slice(c0, c1))
    z_c, valid_c, points_c = z[crop], valid[crop], np.ascontiguousarray(points[crop])
    jump_x, jump_y = _jump_ratios(z_c, valid_c, s, rel_per_px, config)
    normals, normal_ok = _smoothed_normals(points_c, foreground[crop], jump_x, jump_y, config.normal_window_cells)
    turn = _concave_turn(points_c, normals, normal_ok, z_c, s, rel_per_px, config)
    grid = _Grid(points_c, z_c, valid_c, foreground[crop], jump_x, jump_y, normals, turn)
    labels = _segment(grid, grid.foreground, s, config, 0)
    t_cluster = time.perf_counter()

    kept = _gate_and_split(grid, labels, s, config)
    num_raised = len(kept)
    if low.any():
        kept += _gate_and_split(grid, _label_links(low[crop], grid.jump_x < 1, grid.jump_y < 1), s, config)
    t_gate = time.perf_counter()
    proposals = _build_proposals(depth, valid_full, measured, plane, surface, (ray_x, ray_y), grid, (r0, c0), kept,
                                 num_raised, s, rel_per_px, config)
    logger.debug("depth_proposals: %d proposals in %.1f ms (plane %.1f, cluster %.1f, gate %.1f, masks %.1f)",
                 len(proposals), 1e3 * (time.perf_counter() - started), 1e3 * (t_plane - started),
                 1e3 * (t_cluster - t_plane), 1e3 * (t_gate - t_cluster), 1e3 * (time.perf_counter() - t_gate))
    return proposals


def _support_plane(points: np.ndarray, config: DepthProposalConfig,
                   T_world_camera: np.ndarray | None) -> SupportPlane | None:
    """The support plane from the chosen source; least-squares refits run on a subsample."""
    step = max(1, len(points) // _REFINE_MAX_POINTS)
    refine_points = points[::step]
    if config.plane_source == "world" or (config.plane_source == "auto" and T_world_camera is not None):
        return _refine_plane(refine_points, world_support_plane(T_world_camera), config.plane_inlier_threshold_m,
                             config.plane_refine_iterations)
    return fit_support_plane(points, config, refine_points=refine_points)


@dataclass(frozen=True)
class TableSurface:
    """The table top as a quadratic surface over a support plane.

    ``height(p) = plane.height(p) - q(u, v)`` with ``(u, v)`` the coordinates of ``p`` along two
    axes in the plane (metres, centred on ``centre_uv``) and ``q`` a quadratic polynomial whose
    value is clipped to ``[-clip_m, clip_m]`` (far from the table, e.g. on the floor, the
    polynomial extrapolates).

    Attributes:
        plane: the support plane. axes: (2, 3) in-plane unit axes, camera frame.
        centre_uv: (2,) metres. coefficients: (6,) of ``1, u, v, u^2, uv, v^2``. clip_m: metres.
    """

    plane: SupportPlane
    axes: np.ndarray
    centre_uv: np.ndarray
    coefficients: np.ndarray
    clip_m: float

    def height_from_depth(self, depth_m: np.ndarray, ray_x: np.ndarray, ray_y: np.ndarray) -> np.ndarray:
        """Heights (h, w) metres of the pixels of depth (h, w) metres whose rays are
        ``(ray_x[j], ray_y[i], 1)`` (ray_x (w,), ray_y (h,)); same as :meth:`height_m`."""
        def along(a: np.ndarray) -> np.ndarray:
            a = a.astype(np.float32)
            return depth_m * (a[0] * ray_x[None, :] + a[1] * ray_y[:, None] + a[2])
        uv = np.stack([along(self.axes[0]), along(self.axes[1])], axis=-1) - self.centre_uv.astype(np.float32)
        n = self.plane.normal
        plane_height = along(n) + np.float32(self.plane.offset_m)
        return plane_height - np.clip(_quadratic(uv, self.coefficients), -self.clip_m, self.clip_m)

    def height_m(self, points_cam: np.ndarray) -> np.ndarray:
        """Heights (...,) metres above the table of points_cam (..., 3) metres."""
        uv = np.einsum("...c,kc->...k", points_cam, self.axes.astype(points_cam.dtype)) - self.centre_uv.astype(points_cam.dtype)
        return self.plane.height_m(points_cam) - np.clip(_quadratic(uv, self.coefficients), -self.clip_m, self.clip_m)


def _quadratic(uv: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    u, v = uv[..., 0], uv[..., 1]
    c = coefficients.astype(uv.dtype)
    return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v


def fit_table_surface(points_cam: np.ndarray, plane: SupportPlane, config: DepthProposalConfig) -> TableSurface | None:
    """Quadratic table surface (:class:`TableSurface`) fitted to the points near ``plane``.

    Least squares on the points within ``table_fit_band_m`` of the plane, then twice on those
    within ``plane_inlier_threshold_m`` of the fit (so objects standing on the table, even flat
    ones, hardly pull it). A curved table or a sensor that bends planes would otherwise rise
    above ``min_height_above_plane_m`` away from where the plane fits best and come out as
    table-sized clusters.

    Args:
        points_cam: (N, 3) metres, camera frame (valid points).
    Returns:
        The surface, or None when fewer than 50 points lie near the plane.
    """
    step = max(1, len(points_cam) // _TABLE_FIT_MAX_POINTS)
    points = np.asarray(points_cam[::step], np.float64)
    normal = plane.normal
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(normal, helper)
    e1 /= norm(e1)
    axes = np.stack([e1, np.cross(normal, e1)])
    height = plane.height_m(points)
    inliers = np.abs(height) < config.table_fit_band_m
    if np.count_nonzero(inliers) < 50:
        return None
    uv_all = points @ axes.T
    centre = uv_all[inliers].mean(0)
    uv_all -= centre
    design = np.stack([np.ones(len(points)), uv_all[:, 0], uv_all[:, 1], uv_all[:, 0] ** 2, uv_all[:, 0] * uv_all[:, 1],
                       uv_all[:, 1] ** 2], axis=1)
    coefficients = np.zeros(6)
    for _ in range(3):
        if np.count_nonzero(inliers) < 50:
            break
        # Normal equations by einsum (6 x 6): multi-threaded BLAS spins on these thin products.
        a = design[inliers]
        coefficients = np.linalg.solve(np.einsum("ni,nj->ij", a, a) + 1e-12 * np.eye(6), np.einsum("ni,n->i", a, height[inliers]))
        inliers = np.abs(height - design @ coefficients) < config.plane_inlier_threshold_m
    return TableSurface(plane, axes, centre, coefficients, config.table_fit_band_m)


def _low_relief_nodes(height: np.ndarray, valid: np.ndarray, foreground: np.ndarray, config: DepthProposalConfig) -> np.ndarray:
    """(h, w) bool grid nodes of flat objects: off the (dilated) foreground, 3x3-averaged height
    at least ``low_relief_min_height_m`` (the average divides the sensor noise by about 3)."""
    h = np.where(valid, height, 0).astype(np.float32)
    total = cv2.boxFilter(h, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    count = cv2.boxFilter(valid.astype(np.float32), -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    mean = total / np.maximum(count, 1.0)
    near_raised = cv2.dilate(foreground.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    low = valid & ~near_raised & (count >= 5) & (mean >= config.low_relief_min_height_m) & (height < config.min_height_above_plane_m)
    if not low.any():
        return low
    # Sensor noise makes specks; only pieces that could hold an object's mask go on (and widen the crop).
    n, labels, stats, _ = cv2.connectedComponentsWithStats(low.astype(np.uint8), connectivity=8)
    min_nodes = max(1, int(math.ceil(config.min_area_px / config.stride_px**2)))
    large = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_nodes)
    return low & np.isin(labels, large[large > 0])


def fill_depth_holes(depth_m: np.ndarray, valid: np.ndarray, max_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Small sensor holes filled with the farthest valid depth around them.

    Dark and glossy surfaces return no depth in blobs, which would cut an object into pieces (its
    cores cannot link across a hole). Each of ``max_px`` passes gives every invalid pixel with a
    valid 8-neighbour the largest (farthest) neighbouring depth, so holes up to about ``2 *
    max_px`` pixels wide close. The farthest value, not a mean: a hole beside an occluding edge
    (the sensor's shadow) takes the background's depth instead of bridging the two surfaces, and
    a hole inside an object takes a depth of that object's own surface.

    Args:
        depth_m: (H, W) float32 metres, 0 where invalid. valid: (H, W) bool.
        max_px: passes (0: nothing filled).
    Returns:
        (filled depth (H, W) float32, its validity (H, W) bool).
    """
    depth = depth_m.copy()
    valid = valid.copy()
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(max_px):
        if valid.all():
            break
        grown = cv2.dilate(depth, kernel)  # invalid pixels are 0, so the max is over valid neighbours
        fill = ~valid & (grown > 0)
        if not fill.any():
            break
        np.copyto(depth, grown, where=fill)
        valid |= fill
    return depth, valid


def _build_proposals(depth: np.ndarray, valid_full: np.ndarray, measured: np.ndarray, plane: SupportPlane | None,
                     surface: TableSurface | None, rays: tuple[np.ndarray, np.ndarray], grid: _Grid, origin: tuple[int, int],
                     kept: list[np.ndarray], num_raised: int, stride: int, rel_per_px: float,
                     config: DepthProposalConfig) -> list[Proposal]:
    """Full-resolution masks, boxes and scores of the kept clusters (node masks on the grid crop;
    the first ``num_raised`` stand above ``min_height_above_plane_m``, the rest are low-relief
    clusters, whose pixels need only ``low_relief_min_height_m``); heights are measured from
    ``surface`` when there is one, else from ``plane``."""
    if not kept:
        return []
    H, W = depth.shape
    h, w = grid.z.shape
    r0, c0 = origin
    labels = np.zeros((h, w), np.int32)
    for i, nodes in enumerate(kept, start=1):
        labels[nodes] = i
    # Full-resolution window of the grid crop, padded for the closing.
    pad = config.mask_closing_px + stride
    y0, x0 = max(r0 * stride - pad, 0), max(c0 * stride - pad, 0)
    y1, x1 = min((r0 + h) * stride + pad, H), min((c0 + w) * stride + pad, W)
    # Each pixel takes the label of its nearest grid node if its depth agrees with the node's.
    node_rows = np.clip((np.arange(y0, y1) + stride // 2) // stride - r0, 0, h - 1)
    node_cols = np.clip((np.arange(x0, x1) + stride // 2) // stride - c0, 0, w - 1)
    up_labels = labels[node_rows][:, node_cols]
    up_z = grid.z[node_rows][:, node_cols]
    d = depth[y0:y1, x0:x1]
    keep = valid_full[y0:y1, x0:x1] & (up_labels > 0)
    keep &= np.abs(d - up_z) < _link_threshold(up_z, stride, rel_per_px, config)
    if plane is not None:
        ray_x, ray_y = rays
        if surface is not None:
            height = surface.height_from_depth(d, ray_x[x0:x1], ray_y[y0:y1])
        else:
            n = plane.normal.astype(np.float32)
            height = d * (n[0] * ray_x[None, x0:x1] + n[1] * ray_y[y0:y1, None] + n[2]) + np.float32(plane.offset_m)
        min_height = np.full(len(kept) + 1, np.float32(config.min_height_above_plane_m))
        min_height[num_raised + 1:] = config.low_relief_min_height_m
        keep &= height >= min_height[up_labels]
    full = np.where(keep, up_labels, 0)
    plane_cam = None if plane is None else np.r_[plane.normal, plane.offset_m]
    valid_window = measured[y0:y1, x0:x1]  # the score's depth coverage counts measured pixels only
    taken = np.zeros(full.shape, bool)
    proposals = []
    for i, nodes in enumerate(kept, start=1):
        ys, xs = np.nonzero(nodes)
        # The label's pixels lie within one stride of its nodes; add the closing's reach.
        by0 = max((int(ys.min()) + r0) * stride - pad - y0, 0)
        bx0 = max((int(xs.min()) + c0) * stride - pad - x0, 0)
        by1 = min((int(ys.max()) + r0) * stride + pad - y0 + 1, y1 - y0)
        bx1 = min((int(xs.max()) + c0) * stride + pad - x0 + 1, x1 - x0)
        crop_mask = _clean_mask(full[by0:by1, bx0:bx1], i, config)
        # The closings of two clusters can reach the same unlabelled pixel: the first keeps it.
        crop_mask &= ~taken[by0:by1, bx0:bx1]
        taken[by0:by1, bx0:bx1] |= crop_mask
        area = int(np.count_nonzero(crop_mask))
        if area < config.min_area_px:
            continue
        oy, ox = y0 + by0, x0 + bx0
        mask = np.zeros((H, W), bool)
        mask[oy:oy + crop_mask.shape[0], ox:ox + crop_mask.shape[1]] = crop_mask
        mask_rows, mask_cols = np.flatnonzero(crop_mask.any(1)), np.flatnonzero(crop_mask.any(0))
        box = np.array([ox + mask_cols[0], oy + mask_rows[0], ox + mask_cols[-1] + 1, oy + mask_rows[-1] + 1])
        coverage = np.count_nonzero(valid_window[by0:by1, bx0:bx1] & crop_mask) / area
        score = _solidity(crop_mask) * coverage
        proposals.append(Proposal(mask=mask, box_xyxy=box, score=score, source="depth", points_cam=grid.points[nodes],
                                  support_plane_cam=plane_cam))
    proposals.sort(key=lambda p: -p.score)
    return proposals[: config.max_proposals]
