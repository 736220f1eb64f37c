"""Metric-size verification of RGB-D proposals against the known objects.

Descriptor scores alone do not separate a known object from a look-alike under real lighting:
on path-traced workcells untextured distractors (spheres, boxes, cylinders of 3-10 cm) and
pieces of the room score as high as the objects themselves, and a white object under a coloured
light matches a small cube as well as itself. Depth says how large a proposal is, in metres, and
the meshes say how large each object can be, so before an object is chosen for a proposal the
objects it cannot be are ruled out (:func:`feasible_objects`, used by the detector's matching):

- upper bounds (always): the visible surface's robust extent along its first principal axis and
  its vertical extent above the support plane are at most the object's diameter (times
  ``max_diameter_scale``, plus ``tolerance_m`` of depth noise), and its second and third extents
  at most the object's second and third box extents times ``max_box_extent_scale`` (a part of
  a box is no wider than the box in any direction, but the principal axes of its visible surface
  need not be the box's: three faces of a cube seen from a corner span 1.41 and 1.15 sides along
  their second and third axes): a proposal larger than the object is something else (a
  distractor, the room, two objects merged);
- lower bounds (only when the proposal's silhouette is not occluded, see below): its first and
  second extents are at least ``min_extent_scale`` times the object's second and third box
  extents (whatever the view, the visible surface spans about the object's second-largest side
  along some direction, and its smallest side along another), and its top stands at least
  ``min_top_height_scale`` times the smallest side above the table (an object resting on the
  table is at least that high wherever it is seen from); an object whose top is at most
  ``lying_top_height_scale`` times its smallest side high lies on its largest face, so seen from
  above (the cameras look down on the table) its visible surface spans at least
  ``lying_min_extent_scale`` times its first and second box extents along its first and second
  axes (a 5 cm cube is neither a lying marker nor a flat box). An occluded or truncated proposal shows only part of its object, so it
  is never rejected for being small.

Occlusion: pixels of a ring around the mask (``ring_inner_px`` .. ``ring_outer_px`` from it, so
flying pixels at the silhouette do not count) are *free* when their depth shows the table (lower
than ``free_height_m`` above the support plane) or a surface farther than the proposal; a ring
pixel on something nearer or at the proposal's depth (a neighbour in front, a touching object,
another piece of the same object) or outside the image is not free; pixels without depth do not
count. The silhouette is unoccluded when at least ``min_free_fraction`` of the ring is free.

Several instances of one object are unaffected: each proposal is verified on its own.
Proposals without depth samples (RGB mode) pass every object.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import trimesh

from pose_node.core.errors import InvalidInputError, check_fields
from pose_node.core.types import ObjectModel
from pose_node.detection.proposal_types import Proposal


@dataclass(frozen=True)
class VerificationConfig:
    """Parameters of :func:`feasible_objects` (module docstring).

    Attributes:
        enabled: rule out objects by size (False: every object is feasible).
        max_diameter_scale: the first extent and the vertical extent are at most this times the
            object's diameter (plus tolerance).
        max_box_extent_scale: the second and third extents are at most this times the object's
            second and third box extents (plus tolerance).
        min_extent_scale: lower bounds (unoccluded proposals) are this times the object's
            second / third box extent (minus tolerance).
        min_top_height_scale: an unoccluded proposal's top is at least this times the object's
            smallest box extent above the support plane (minus tolerance).
        lying_top_height_scale, lying_min_extent_scale: see the module docstring (lying objects).
        tolerance_m: slack of every bound for depth noise and the extents' percentiles, metres.
        extent_percentile: extents ignore this share (percent) of points at either end of each
            axis (flying pixels).
        ring_inner_px, ring_outer_px: the occlusion ring's distance from the mask, pixels.
        free_height_m: ring pixels lower than this above the support plane are table (free).
        depth_margin_m: ring pixels at least this much farther than the nearby proposal pixels
            are background (free).
        min_free_fraction: the silhouette is unoccluded when at least this share of the ring's
            pixels with depth is free.
    """

    enabled: bool = True
    max_diameter_scale: float = 1.25
    max_box_extent_scale: float = 1.45
    min_extent_scale: float = 0.7
    min_top_height_scale: float = 0.75
    lying_top_height_scale: float = 1.3
    lying_min_extent_scale: float = 0.4
    tolerance_m: float = 0.004
    extent_percentile: float = 2.0
    ring_inner_px: int = 2
    ring_outer_px: int = 6
    free_height_m: float = 0.01
    depth_margin_m: float = 0.01
    min_free_fraction: float = 0.85

    def __post_init__(self) -> None:
        checks = [
            ("max_diameter_scale", self.max_diameter_scale > 0), ("max_box_extent_scale", self.max_box_extent_scale > 0), ("min_extent_scale", self.min_extent_scale >= 0),
            ("min_top_height_scale", self.min_top_height_scale >= 0),
            ("lying_top_height_scale", self.lying_top_height_scale >= 0), ("lying_min_extent_scale", self.lying_min_extent_scale >= 0), ("tolerance_m", self.tolerance_m >= 0),
            ("extent_percentile", 0 <= self.extent_percentile < 50), ("ring_inner_px", self.ring_inner_px >= 0),
            ("ring_outer_px", self.ring_outer_px > self.ring_inner_px), ("free_height_m", self.free_height_m >= 0),
            ("depth_margin_m", self.depth_margin_m >= 0), ("min_free_fraction", 0 <= self.min_free_fraction <= 1),
        ]
        check_fields(self, checks)


@dataclass(frozen=True)
class ObjectSize:
    """Size of an object model.

    Attributes:
        box_extents_m: (3,) side lengths of its minimum-volume oriented bounding box, largest
            first, metres.
        diameter_m: largest distance between two of its vertices, metres.
    """

    box_extents_m: np.ndarray
    diameter_m: float


def object_size(model: ObjectModel) -> ObjectSize:
    """The oriented bounding box and diameter of a model (computed once per object)."""
    vertices = np.asarray(model.vertices, np.float64)
    if len(vertices) < 4:
        raise InvalidInputError(f"object {model.object_id}: needs at least 4 vertices for its size, got {len(vertices)}")
    _, extents = trimesh.bounds.oriented_bounds(vertices)
    return ObjectSize(np.sort(np.asarray(extents, np.float64))[::-1].copy(), float(model.diameter_m))


@dataclass(frozen=True)
class ProposalGeometry:
    """What verification measures of one RGB-D proposal.

    Attributes:
        extents_m: (3,) robust extents of its depth samples along their principal axes, largest
            first, metres.
        top_height_m: robust highest height of its samples above the support plane, metres (nan:
            no plane).
        vertical_extent_m: robust span of those heights, metres (nan: no plane).
        unoccluded: its silhouette is not occluded or truncated (module docstring).
    """

    extents_m: np.ndarray
    top_height_m: float
    vertical_extent_m: float
    unoccluded: bool


def _extents(points: np.ndarray, percentile: float) -> np.ndarray:
    if len(points) < 4:
        return np.zeros(3)
    q = points.astype(np.float64) - points.mean(0, dtype=np.float64)
    _, axes = np.linalg.eigh(np.einsum("ni,nj->ij", q, q))
    projected = q @ axes[:, ::-1]
    lo, hi = np.percentile(projected, [percentile, 100.0 - percentile], axis=0)
    return hi - lo


def _unoccluded(proposal: Proposal, depth_m: np.ndarray, K: np.ndarray, config: VerificationConfig) -> bool:
    """Whether enough of the ring around the mask shows table or background (module docstring)."""
    H, W = depth_m.shape
    x0, y0, x1, y1 = (int(v) for v in proposal.box_xyxy)
    r = config.ring_outer_px
    if x0 - r < 0 or y0 - r < 0 or x1 + r > W or y1 + r > H:
        return False  # truncated by the image border (or too close to it to tell)
    rows, cols = slice(y0 - r, y1 + r), slice(x0 - r, x1 + r)
    mask = proposal.mask[rows, cols].astype(np.uint8)
    depth = depth_m[rows, cols]
    valid = np.isfinite(depth) & (depth > 0)
    outer = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    k = config.ring_inner_px
    inner = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))) if k else mask
    ring = outer.astype(bool) & ~inner.astype(bool) & valid
    if not ring.any():
        return False
    # The proposal's depth near each ring pixel: the smallest mask depth within the ring's reach.
    own = np.where(mask.astype(bool) & valid, depth, np.inf).astype(np.float32)
    near_own = cv2.erode(own, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1)),
                         borderType=cv2.BORDER_CONSTANT, borderValue=float("inf"))
    with np.errstate(invalid="ignore"):
        free = depth >= near_own + np.float32(config.depth_margin_m)  # background behind the proposal
    plane = proposal.support_plane_cam
    if plane is not None:
        # Height above the support plane of the ring pixels: n . (z * ray) + offset.
        u = (np.arange(x0 - r, x1 + r, dtype=np.float64) - K[0, 2]) / K[0, 0]
        v = (np.arange(y0 - r, y1 + r, dtype=np.float64) - K[1, 2]) / K[1, 1]
        height = depth * (plane[0] * u[None, :] + plane[1] * v[:, None] + plane[2]) + plane[3]
        free |= height < config.free_height_m
    return float(np.count_nonzero(free & ring)) >= config.min_free_fraction * float(np.count_nonzero(ring))


def proposal_geometry(proposal: Proposal, depth_m: np.ndarray, K: np.ndarray, config: VerificationConfig) -> ProposalGeometry | None:
    """Measure one proposal (None: it has no depth samples, so it cannot be verified).

    Args:
        proposal: with ``points_cam`` (and ideally ``support_plane_cam``).
        depth_m: (H, W) metres, the view's depth (0 or non-finite: no depth).
        K: (3, 3) intrinsics, pixels.
    """
    points = proposal.points_cam
    if points is None or len(points) < 4:
        return None
    extents = _extents(points, config.extent_percentile)
    top = span = float("nan")
    plane = proposal.support_plane_cam
    if plane is not None:
        heights = points.astype(np.float64) @ plane[:3] + plane[3]
        lo, hi = np.percentile(heights, [config.extent_percentile, 100.0 - config.extent_percentile])
        top, span = float(hi), float(hi - min(lo, 0.0))
    return ProposalGeometry(extents, top, span, _unoccluded(proposal, depth_m, K, config))


def feasible_objects(geometries: Sequence[ProposalGeometry | None], sizes: Sequence[ObjectSize],
                     config: VerificationConfig) -> np.ndarray:
    """(P, O) bool: proposal ``p`` may be object ``o`` by size (module docstring).

    Args:
        geometries: P measured proposals (None: unverifiable, every object feasible).
        sizes: O object sizes.
    """
    P, O = len(geometries), len(sizes)
    out = np.ones((P, O), bool)
    if not config.enabled or O == 0:
        return out
    diameter = np.array([s.diameter_m for s in sizes])
    box = np.stack([s.box_extents_m for s in sizes])  # (O, 3) largest first
    tol = config.tolerance_m
    upper = config.max_diameter_scale * diameter + tol
    upper_box = config.max_box_extent_scale * box + tol
    for p, g in enumerate(geometries):
        if g is None:
            continue
        ok = (g.extents_m[0] <= upper) & (g.extents_m[1] <= upper_box[:, 1]) & (g.extents_m[2] <= upper_box[:, 2])
        if np.isfinite(g.vertical_extent_m):
            ok &= g.vertical_extent_m <= upper
        if g.unoccluded:
            ok &= g.extents_m[0] >= config.min_extent_scale * box[:, 1] - tol
            ok &= g.extents_m[1] >= config.min_extent_scale * box[:, 2] - tol
            if np.isfinite(g.top_height_m):
                ok &= g.top_height_m >= config.min_top_height_scale * box[:, 2] - tol
                lying = g.top_height_m <= config.lying_top_height_scale * box[:, 2] + tol
                ok &= ~lying | ((g.extents_m[0] >= config.lying_min_extent_scale * box[:, 0] - tol)
                                & (g.extents_m[1] >= config.lying_min_extent_scale * box[:, 1] - tol))
        out[p] = ok
    return out
