"""Class-agnostic instance proposals: what a proposal stage hands to descriptor matching.

A proposal is an image region that probably holds one object instance, with no object identity
yet. Boxes follow the core convention (:class:`pose_node.core.types.Detection`): pixels,
``x_min y_min x_max y_max`` with exclusive max, pixel centres at integer coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pose_node.core.errors import InvalidInputError

PROPOSAL_SOURCES: tuple[str, ...] = ("depth", "rgb", "onnx")


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight box of a mask.

    Args:
        mask: (H, W) bool, at least one pixel set.
    Returns:
        (4,) int64 ``x_min, y_min, x_max, y_max`` pixels, exclusive max.
    Raises:
        InvalidInputError: the mask is empty or not 2-D.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInputError(f"box_from_mask: mask must be (H, W), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise InvalidInputError("box_from_mask: mask is empty")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int64)


@dataclass(frozen=True)
class Proposal:
    """One class-agnostic instance proposal in one view.

    Arrays are stored read-only (the dataclass is frozen, its arrays are too).

    Attributes:
        mask: (H, W) bool silhouette of the instance, image size.
        box_xyxy: (4,) int64 pixels, ``x_min y_min x_max y_max``, exclusive max, inside the image.
        score: objectness in [0, 1] (higher is better; meaning depends on the source).
        source: which proposal stage made it, one of :data:`PROPOSAL_SOURCES`.
        points_cam: (N, 3) float32 metres, camera optical frame (x right, y down, z forward):
            back-projected depth samples of the instance, or None (RGB-only proposals).
        support_plane_cam: (4,) float64 ``(n_x, n_y, n_z, offset_m)``, camera frame: the support
            surface the instance stands on, ``n . p + offset_m`` the height (metres) of a point
            ``p`` above it (``n`` unit, toward the camera), or None (unknown). Depth proposals
            carry it so that verification can measure heights above the table.
    """

    mask: np.ndarray
    box_xyxy: np.ndarray
    score: float
    source: str
    points_cam: np.ndarray | None = None
    support_plane_cam: np.ndarray | None = None

    def __post_init__(self) -> None:
        mask = np.array(self.mask, dtype=bool, copy=True)
        if mask.ndim != 2:
            raise InvalidInputError(f"Proposal.mask: expected (H, W), got shape {mask.shape}")
        box = np.asarray(self.box_xyxy)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or not np.all(box == np.round(box)):
            raise InvalidInputError(f"Proposal.box_xyxy: expected (4,) integer pixels, got {self.box_xyxy!r}")
        box = box.astype(np.int64)
        H, W = mask.shape
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
            raise InvalidInputError(f"Proposal.box_xyxy: {box.tolist()} is empty or outside a {W}x{H} image")
        score = float(self.score)
        if not 0.0 <= score <= 1.0:
            raise InvalidInputError(f"Proposal.score: expected a value in [0, 1], got {self.score!r}")
        if self.source not in PROPOSAL_SOURCES:
            raise InvalidInputError(f"Proposal.source: expected one of {PROPOSAL_SOURCES}, got {self.source!r}")
        points = None
        if self.points_cam is not None:
            points = np.array(self.points_cam, dtype=np.float32, copy=True)
            if points.ndim != 2 or points.shape[1] != 3:
                raise InvalidInputError(f"Proposal.points_cam: expected (N, 3), got shape {points.shape}")
            points.setflags(write=False)
        plane = None
        if self.support_plane_cam is not None:
            plane = np.array(self.support_plane_cam, dtype=np.float64, copy=True)
            if plane.shape != (4,) or not np.all(np.isfinite(plane)) or abs(float(np.linalg.norm(plane[:3])) - 1.0) > 1e-3:
                raise InvalidInputError(f"Proposal.support_plane_cam: expected finite (4,) with a unit normal, got {self.support_plane_cam!r}")
            plane.setflags(write=False)
        mask.setflags(write=False)
        box.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "box_xyxy", box)
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "points_cam", points)
        object.__setattr__(self, "support_plane_cam", plane)

    @property
    def area_px(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if a.shape != b.shape:
        raise InvalidInputError(f"mask_iou: shapes differ, {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0
