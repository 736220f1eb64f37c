"""Draw object models at given poses onto camera images (contours, axes, labels).

Uses OpenCV polygon filling of the projected triangles rather than the GL renderer: overlays are
drawn in the node's debug path and in the demo, where a silhouette outline is all that is
needed, and this keeps them independent of an EGL context.
"""
from __future__ import annotations

import cv2
import numpy as np

from pose_node.core.projection import project_cam_np
from pose_node.core.types import ObjectModel

_SUBPIXEL_BITS = 4  # cv2 fixed-point shift: polygon vertices with 1/16 px precision


def project_silhouette(model: ObjectModel, K: np.ndarray, T_camera_object: np.ndarray, width: int, height: int, *, min_depth_m: float = 1e-3) -> np.ndarray:
    """Silhouette of the model at a pose (no occlusion by other objects).

    Args:
        model: vertices (N, 3) metres.
        K: (3, 3) intrinsics, pixels.
        T_camera_object: (4, 4) metres.
        width, height: image size, pixels.
        min_depth_m: triangles with a vertex closer than this to the camera plane are skipped.
    Returns:
        (H, W) bool mask.
    """
    p_cam = model.vertices.astype(np.float64) @ T_camera_object[:3, :3].T + T_camera_object[:3, 3]
    z = p_cam[:, 2]
    uv = project_cam_np(p_cam, K, min_depth_m)
    tris = model.faces[(z[model.faces] > min_depth_m).all(1)]
    mask = np.zeros((height, width), np.uint8)
    if len(tris):
        # Pixel centres are at integer coordinates, as in OpenCV: round to the fixed-point grid.
        pts = np.round(uv[tris] * (1 << _SUBPIXEL_BITS)).astype(np.int32)
        # One call per triangle: fillPoly on many polygons uses an even-odd rule, so front and
        # back faces covering the same pixel would cancel.
        for tri in pts:
            cv2.fillConvexPoly(mask, tri, 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool)


def draw_pose_overlay(
    rgb: np.ndarray,
    model: ObjectModel,
    K: np.ndarray,
    T_camera_object: np.ndarray,
    *,
    color_rgb: tuple[int, int, int] = (0, 255, 0),
    label: str | None = None,
    axis_length_m: float | None = None,
) -> np.ndarray:
    """Return a copy of ``rgb`` with the model's outline, its frame axes and a label drawn.

    Args:
        rgb: (H, W, 3) uint8.
        model: the object.
        K: (3, 3) intrinsics.
        T_camera_object: (4, 4) metres.
        color_rgb: outline colour.
        label: text drawn near the object origin.
        axis_length_m: length of the x (red), y (green), z (blue) axes; default half the diameter.
    """
    out = rgb.copy()
    h, w = rgb.shape[:2]
    mask = project_silhouette(model, K, T_camera_object, w, h)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color_rgb, 2, lineType=cv2.LINE_AA)
    length = axis_length_m if axis_length_m is not None else model.diameter_m / 2
    axes_obj = np.array([[0, 0, 0], [length, 0, 0], [0, length, 0], [0, 0, length]], dtype=np.float64)
    p_cam = axes_obj @ T_camera_object[:3, :3].T + T_camera_object[:3, 3]
    if (p_cam[:, 2] > 1e-3).all():
        uv = project_cam_np(p_cam, K)
        origin = tuple(int(round(c)) for c in uv[0])
        for end, axis_color in zip(uv[1:], [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            cv2.line(out, origin, tuple(int(round(c)) for c in end), axis_color, 2, lineType=cv2.LINE_AA)
        if label:
            cv2.putText(out, label, (origin[0] + 4, origin[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color_rgb, 1, cv2.LINE_AA)
    return out
