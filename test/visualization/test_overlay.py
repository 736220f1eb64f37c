import numpy as np
import trimesh

from pose_node.core.types import ObjectModel
from pose_node.visualization import draw_pose_overlay, project_silhouette


def _square_model(side_m: float) -> ObjectModel:
    mesh = trimesh.creation.box(extents=[side_m, side_m, 1e-4])
    return ObjectModel(
        object_id=1, name="plate", vertices=mesh.vertices.astype(np.float32), faces=mesh.faces.astype(np.int32),
        normals=mesh.vertex_normals.astype(np.float32), diameter_m=side_m * np.sqrt(2),
    )


def test_silhouette_of_a_fronto_parallel_square_has_the_predicted_extent():
    K = np.array([[400.0, 0, 80], [0, 400, 60], [0, 0, 1]])
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 1.0]
    mask = project_silhouette(_square_model(0.1), K, T, 160, 120)
    # 0.1 m at 1 m with f = 400 px spans 40 px, centred on the principal point (80, 60).
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 60) <= 1 and abs(xs.max() - 100) <= 1
    assert abs(ys.min() - 40) <= 1 and abs(ys.max() - 80) <= 1
    assert abs(mask.sum() - 40 * 40) <= 2 * 41 + 1


def test_behind_camera_draws_nothing_and_overlay_keeps_input():
    K = np.array([[400.0, 0, 80], [0, 400, 60], [0, 0, 1]])
    T = np.eye(4)
    T[2, 3] = -1.0
    model = _square_model(0.1)
    assert not project_silhouette(model, K, T, 160, 120).any()
    rgb = np.zeros((120, 160, 3), np.uint8)
    T[2, 3] = 1.0
    out = draw_pose_overlay(rgb, model, K, T, label="plate")
    assert rgb.sum() == 0 and out.sum() > 0
    assert tuple(out[40, 80]) != (0, 0, 0) or tuple(out[60, 60]) != (0, 0, 0)
