"""The node's per-set messages: what they hold, and the cached mesh markers equal freshly built ones."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")

from visualization_msgs.msg import Marker  # noqa: E402

from pose_node.core.types import PoseEstimate  # noqa: E402
from pose_node.ros.conversions import make_header, mesh_marker, msg_to_matrix, stamp_to_ns  # noqa: E402
from pose_node.ros.outputs import MESH_MARKER_MAX_TRIANGLES, SetOutputBuilder  # noqa: E402


@pytest.fixture(scope="module")
def models():
    from pose_node.onboarding.procedural import make_procedural_objects

    return {m.object_id: m for m in make_procedural_objects(2, 5)}


def _estimate(object_id: int, instance_id: int, x: float) -> PoseEstimate:
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    T[:3, 3] = [x, 0.2, 0.05]
    return PoseEstimate(object_id=object_id, instance_id=instance_id, T_world_object=T,
                        covariance=np.diag([1e-6] * 3 + [1e-4] * 3), score=0.8)


def test_set_outputs_carry_the_stamp_frames_and_poses(models):
    builder = SetOutputBuilder("world", {i: m.name for i, m in models.items()}, models)
    estimates = [_estimate(1, 3, 0.1), _estimate(2, 4, -0.1), _estimate(1, 7, 0.3)]
    out = builder.build(1_700_000_000_500_000_000, estimates)
    assert stamp_to_ns(out.detections.header.stamp) == 1_700_000_000_500_000_000 and out.detections.header.frame_id == "world"
    assert [d.results[0].hypothesis.class_id for d in out.detections.detections] == [models[1].name, models[2].name, models[1].name]
    assert [t.child_frame_id for t in out.transforms] == [f"{models[1].name}_3", f"{models[2].name}_4", f"{models[1].name}_7"]
    assert out.markers.markers[0].action == Marker.DELETEALL and len(out.markers.markers) == 1 + 3 * len(estimates)
    meshes = [m for m in out.markers.markers if m.type == Marker.TRIANGLE_LIST]
    assert [m.id for m in meshes] == [0, 1, 2]
    for marker, estimate in zip(meshes, estimates):
        np.testing.assert_allclose(msg_to_matrix(marker.pose), estimate.T_world_object, atol=1e-12)
        assert marker.header.stamp == out.detections.header.stamp


def test_cached_mesh_markers_equal_fresh_ones_and_stay_independent(models):
    builder = SetOutputBuilder("world", {i: m.name for i, m in models.items()}, models)
    first = builder.build(10, [_estimate(1, 0, 0.1)])
    second = builder.build(20, [_estimate(2, 0, 0.0), _estimate(1, 1, -0.2)])
    cached = second.markers.markers[4]  # DELETEALL, then (mesh, ellipsoid, label) per estimate
    header = make_header(20, "world")
    fresh = mesh_marker(header, _estimate(1, 1, -0.2).T_world_object, model=models[1], marker_id=1,
                        max_triangles=MESH_MARKER_MAX_TRIANGLES)
    assert cached == fresh
    # The first set's marker still has its own stamp, id and pose (the template was not changed).
    old = first.markers.markers[1]
    assert stamp_to_ns(old.header.stamp) == 10 and old.id == 0
    np.testing.assert_allclose(msg_to_matrix(old.pose)[:3, 3], [0.1, 0.2, 0.05])
    assert old.points is cached.points  # shared, built once


def test_an_empty_set_is_an_empty_array_and_a_deleteall(models):
    out = SetOutputBuilder("world", {i: m.name for i, m in models.items()}, models).build(5, [])
    assert out.detections.detections == [] and out.transforms == []
    assert [m.action for m in out.markers.markers] == [Marker.DELETEALL]
