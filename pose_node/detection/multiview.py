"""Multi-view evidence for RGB-D detections: a detection the other cameras should confirm (ROS-free).

In a calibrated multi-camera frame, an object one camera detects sits at a 3D point every other
camera that frames it also sees. A look-alike (a plain cylinder taken for a can, a purple ball for
a plum) is often matched to that object from one viewpoint only. So each RGB-D detection is placed
in the world (the median of its mask's depth points, :func:`detection_points`) and kept only when,
among the views that should see that point (inside the image, in front of the camera, not hidden
behind nearer depth), enough also detected the same object near it (:func:`confirm_across_views`).
A detection no other camera can see is kept: one view is all the evidence there is.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pose_node.core.errors import check_fields
from pose_node.core.types import Detection, View


@dataclass(frozen=True)
class MultiViewEvidenceConfig:
    """When a detection needs other views to agree.

    Attributes:
        min_views: views (this one included) that must detect the object at the point, when at
            least that many frame it (1: off).
        match_radius_diameters: another view's detection of the same object confirms when their
            points are within this many object diameters (visible surfaces differ by view).
        min_match_radius_m: lower bound of that radius, metres (depth noise on small objects).
        occlusion_margin_m: a view whose depth at the point's pixel is nearer than the point by more
            than this (plus half the object's diameter) has it hidden: it need not confirm.
        image_margin_px: the point must project this far inside the image to count as framed.
    """

    min_views: int = 2
    match_radius_diameters: float = 0.6
    min_match_radius_m: float = 0.02
    occlusion_margin_m: float = 0.02
    image_margin_px: float = 8.0

    def __post_init__(self) -> None:
        check_fields(self, [
            ("min_views", self.min_views >= 1), ("match_radius_diameters", self.match_radius_diameters > 0),
            ("min_match_radius_m", self.min_match_radius_m >= 0), ("occlusion_margin_m", self.occlusion_margin_m >= 0),
            ("image_margin_px", self.image_margin_px >= 0),
        ])


def detection_points(view: View, detections: Sequence[Detection]) -> list[np.ndarray | None]:
    """World point of each detection: the median of its mask's back-projected depth (None without
    a mask, depth or any valid depth pixel in the mask).

    Returns:
        per detection, (3,) metres in the world frame, or None.
    """
    if view.depth is None:
        return [None] * len(detections)
    K = np.asarray(view.camera.K, dtype=np.float64)
    T_wc = np.asarray(view.camera.T_world_camera, dtype=np.float64)
    out: list[np.ndarray | None] = []
    for d in detections:
        if d.mask is None:
            out.append(None)
            continue
        v, u = np.nonzero(d.mask)
        z = view.depth[v, u].astype(np.float64)
        ok = np.isfinite(z) & (z > 0)
        if not ok.any():
            out.append(None)
            continue
        z, u, v = z[ok], u[ok], v[ok]
        p_cam = np.median(np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1), axis=0)
        out.append(T_wc[:3, :3] @ p_cam + T_wc[:3, 3])
    return out


def hidden_by_nearer_depth(view: View, point: np.ndarray, diameter_m: float, occlusion_margin_m: float) -> bool:
    """Does ``view``'s depth show something nearer than ``point`` at its pixel, by more than half
    the object's diameter plus ``occlusion_margin_m``? The one occlusion test of both multi-view
    checks (the detector's here, the refinement's support). False without depth, behind the
    camera, outside the image or on a depth hole: nothing says the point is hidden.

    Args:
        point: (3,) metres in the world frame.
    """
    if view.depth is None:
        return False
    cam = view.camera
    uv, z = cam.project(np.asarray(point, dtype=np.float64)[None])
    u, v, z = float(uv[0, 0]), float(uv[0, 1]), float(z[0])
    if z <= 0.01 or not (0 <= u < cam.width and 0 <= v < cam.height):
        return False
    observed = float(view.depth[int(v), int(u)])
    if not np.isfinite(observed) or observed <= 0:
        return False
    return observed < z - 0.5 * diameter_m - occlusion_margin_m


def _frames(view: View, point: np.ndarray, diameter_m: float, config: MultiViewEvidenceConfig) -> bool:
    """Should ``view`` see ``point`` (inside the image, in front, not behind nearer depth)? A view
    without depth cannot tell (and cannot place its own detections): no."""
    if view.depth is None:
        return False
    cam = view.camera
    uv, z = cam.project(point[None])
    u, v, z = float(uv[0, 0]), float(uv[0, 1]), float(z[0])
    m = config.image_margin_px
    if z <= 0.01 or not (m <= u < cam.width - m and m <= v < cam.height - m):
        return False
    return not hidden_by_nearer_depth(view, point, diameter_m, config.occlusion_margin_m)


def confirm_across_views(views: Sequence[View], detections: Sequence[Sequence[Detection]], diameters_m: Mapping[int, float],
                         config: MultiViewEvidenceConfig = MultiViewEvidenceConfig()) -> list[list[Detection]]:
    """Drop the detections the other views should confirm and do not (module docstring).

    Args:
        views: the frame's views (calibrated; depth where available).
        detections: per view, its detections.
        diameters_m: object id -> diameter, metres.
    Returns:
        per view, the detections kept (in their order). Views without depth keep all of theirs,
        and their detections neither confirm nor need confirming.
    """
    if config.min_views <= 1 or len(views) < 2:
        return [list(d) for d in detections]
    points = [detection_points(view, dets) for view, dets in zip(views, detections)]
    out = []
    for i, (view, dets) in enumerate(zip(views, detections)):
        kept = []
        for d, p in zip(dets, points[i]):
            if p is None:
                kept.append(d)
                continue
            diameter = float(diameters_m[d.object_id])
            radius = max(config.match_radius_diameters * diameter, config.min_match_radius_m)
            framing = support = 0
            for j, other in enumerate(views):
                if j == i or not _frames(other, p, diameter, config):
                    continue
                framing += 1
                support += any(e.object_id == d.object_id and q is not None and float(np.linalg.norm(q - p)) <= radius
                               for e, q in zip(detections[j], points[j]))
            if 1 + support >= min(config.min_views, 1 + framing):
                kept.append(d)
        out.append(kept)
    return out


__all__ = ["MultiViewEvidenceConfig", "confirm_across_views", "detection_points", "hidden_by_nearer_depth"]
