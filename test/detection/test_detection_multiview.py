"""Multi-view evidence: a detection the other cameras should confirm is kept only when they do."""
from __future__ import annotations

import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import Camera, Detection, View
from pose_node.detection.multiview import MultiViewEvidenceConfig, confirm_across_views, detection_points

W, H = 160, 120
K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])
OBJECT = 7
DIAMETERS = {OBJECT: 0.1, 8: 0.1}
POINT = np.array([0.0, 0.0, 1.0])  # an object's visible surface, on a wall 1 m in front of camera A


def _view(x_m: float, yaw_deg: float = 0.0, depth_m: float = 1.0, name: str = "cam") -> View:
    """A camera at (x, 0, 0) turned by ``yaw_deg`` about the vertical axis, seeing a flat depth."""
    a = np.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[0, 3] = x_m
    depth = np.full((H, W), depth_m, np.float32)
    return View(Camera(K, W, H, T_world_camera=T), np.zeros((H, W, 3), np.uint8), depth, name=name)


def _detection(view: View, point: np.ndarray, object_id: int = OBJECT, view_index: int = 0) -> Detection:
    """A 9 x 9 mask around ``point``'s pixel, whose depth is set to the point's."""
    uv, z = view.camera.project(point[None])
    u, v = int(round(uv[0, 0])), int(round(uv[0, 1]))
    mask = np.zeros((H, W), bool)
    mask[v - 4:v + 5, u - 4:u + 5] = True
    view.depth[mask] = z[0]
    return Detection(object_id, view_index, 0.8, np.array([u - 4, v - 4, u + 5, v + 5], float), mask)


def test_detection_point_is_the_masks_median_depth_point_in_the_world():
    view = _view(0.2)
    (p,) = detection_points(view, [_detection(view, POINT)])
    np.testing.assert_allclose(p, POINT, atol=0.01)  # within a pixel (1 cm at 1 m here)
    assert detection_points(View(view.camera, view.rgb, None), [_detection(view, POINT)]) == [None]


def test_a_detection_another_view_confirms_is_kept_and_one_it_contradicts_is_dropped():
    a, b = _view(0.0, name="a"), _view(0.2, name="b")
    da = _detection(a, POINT)
    # b frames the point and detects the same object there: both kept.
    db = _detection(b, POINT + [0.02, 0.0, 0.0], view_index=1)
    assert confirm_across_views([a, b], [[da], [db]], DIAMETERS) == [[da], [db]]
    # b frames it but saw nothing there, another object, or the object elsewhere: a's is dropped.
    a, b = _view(0.0), _view(0.2)
    da = _detection(a, POINT)
    assert confirm_across_views([a, b], [[da], []], DIAMETERS) == [[], []]
    other = _detection(b, POINT, object_id=8, view_index=1)
    far = _detection(b, POINT + [0.2, 0.0, 0.0], view_index=1)
    kept = confirm_across_views([a, b], [[da], [other, far]], DIAMETERS)
    assert kept[0] == []
    # Off: everything stays.
    assert confirm_across_views([a, b], [[da], []], DIAMETERS, MultiViewEvidenceConfig(min_views=1)) == [[da], []]


def test_a_detection_no_other_view_can_see_is_kept():
    a = _view(0.0)
    da = _detection(a, POINT)
    behind = _view(0.2, depth_m=0.5)  # something 0.5 m in front of b hides the point
    away = _view(0.2, yaw_deg=90.0)  # b looks away: the point is outside its image
    for b in (behind, away):
        assert confirm_across_views([a, b], [[da], []], DIAMETERS) == [[da], []]
    # A hole in b's depth says nothing is in front: b should see it, and does not confirm it.
    holed = _view(0.2)
    uv, _ = holed.camera.project(POINT[None])
    holed.depth[int(uv[0, 1]) - 3:int(uv[0, 1]) + 4, int(uv[0, 0]) - 3:int(uv[0, 0]) + 4] = np.nan
    assert confirm_across_views([a, holed], [[da], []], DIAMETERS) == [[], []]
    # RGB views (no depth): no point, nothing to confirm; a view without depth next to one with
    # depth neither needs confirming nor vetoes the other's detections.
    rgb = [View(v.camera, v.rgb, None) for v in (a, _view(0.2))]
    assert confirm_across_views(rgb, [[da], []], DIAMETERS) == [[da], []]
    assert confirm_across_views([a, rgb[1]], [[da], []], DIAMETERS) == [[da], []]


def test_config_is_validated():
    with pytest.raises(InvalidInputError, match="min_views"):
        MultiViewEvidenceConfig(min_views=0)
    with pytest.raises(InvalidInputError, match="match_radius_diameters"):
        MultiViewEvidenceConfig(match_radius_diameters=0.0)
