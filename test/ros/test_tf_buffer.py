"""TransformBuffer: chained, interpolated lookups with tf2 semantics, no ROS graph."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from pose_node.core.errors import InvalidInputError, PoseNodeError
from pose_node.ros.tf_buffer import (
    ExtrapolationError, TransformBuffer, TransformBufferConfig, TransformLookupError,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S


def rigid(rotvec=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def inv(T: np.ndarray) -> np.ndarray:
    return np.linalg.inv(T)


def test_identity_and_direct_link():
    buf = TransformBuffer()
    T_world_cam = rigid((0.1, -0.2, 0.3), (1.0, 2.0, 3.0))
    buf.set_transform("world", "cam", T0, T_world_cam, static=True)
    np.testing.assert_allclose(buf.lookup_transform("cam", "cam", T0), np.eye(4))
    np.testing.assert_allclose(buf.lookup_transform("world", "world"), np.eye(4))
    np.testing.assert_allclose(buf.lookup_transform("world", "cam", T0), T_world_cam, atol=1e-12)
    np.testing.assert_allclose(buf.lookup_transform("cam", "world", T0 + 123 * S), inv(T_world_cam), atol=1e-12)
    assert buf.frames == {"world", "cam"}


def test_chain_of_three_frames_through_common_ancestor():
    rng = np.random.default_rng(0)
    T_w_a, T_a_b, T_w_c = (rigid(rng.normal(size=3), rng.normal(size=3)) for _ in range(3))
    buf = TransformBuffer()
    buf.set_transforms([("world", "a", 0, T_w_a), ("a", "b", 0, T_a_b), ("world", "c", 0, T_w_c)], static=True)
    np.testing.assert_allclose(buf.lookup_transform("world", "b"), T_w_a @ T_a_b, atol=1e-12)
    # b and c meet at world: T_c_b = T_c_w @ T_w_a @ T_a_b.
    np.testing.assert_allclose(buf.lookup_transform("c", "b"), inv(T_w_c) @ T_w_a @ T_a_b, atol=1e-12)
    np.testing.assert_allclose(buf.lookup_transform("b", "c"), inv(T_a_b) @ inv(T_w_a) @ T_w_c, atol=1e-12)
    # a is an ancestor of b: the chain stops there, not at the root.
    np.testing.assert_allclose(buf.lookup_transform("a", "b"), T_a_b, atol=1e-12)


def test_static_and_dynamic_mix_from_tf_messages():
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3
    from std_msgs.msg import Header
    from tf2_msgs.msg import TFMessage

    def stamped(parent, child, stamp_ns, T):
        q = Rotation.from_matrix(T[:3, :3]).as_quat()  # (x, y, z, w), as ROS
        return TransformStamped(
            header=Header(stamp=Time(sec=stamp_ns // S, nanosec=stamp_ns % S), frame_id=parent), child_frame_id=child,
            transform=Transform(translation=Vector3(x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))

    # world -> base (static), base -> tool (moving arm), tool -> wrist camera (static).
    T_world_base = rigid((0, 0, 0.5), (0.2, 0.0, 0.8))
    T_tool_cam = rigid((np.pi, 0, 0), (0.0, 0.05, 0.1))
    tool_poses = {T0 + i * S // 10: rigid((0.0, 0.1 * i, 0.0), (0.5 + 0.01 * i, 0.0, 0.3)) for i in range(5)}
    buf = TransformBuffer()
    stored = buf.set_tf_message(TFMessage(transforms=[stamped("world", "base", T0, T_world_base),
                                                      stamped("tool", "wrist_cam", T0, T_tool_cam)]), static=True)
    assert stored == 2
    assert buf.set_tf_message(TFMessage(transforms=[stamped("base", "tool", s, T) for s, T in tool_poses.items()])) == 5
    stamp = T0 + 2 * S // 10
    expected = T_world_base @ tool_poses[stamp] @ T_tool_cam
    np.testing.assert_allclose(buf.lookup_transform("world", "wrist_cam", stamp), expected, atol=1e-9)
    # Latest common time (tf2 Time(0)): the newest tool sample.
    np.testing.assert_allclose(buf.lookup_transform("world", "wrist_cam", 0),
                               T_world_base @ tool_poses[T0 + 4 * S // 10] @ T_tool_cam, atol=1e-9)
    # Static links are valid long after the dynamic data: only the dynamic link limits the stamp.
    np.testing.assert_allclose(buf.lookup_transform("world", "base", T0 + 100 * S), T_world_base, atol=1e-9)


def test_interpolation_halfway_is_slerp_and_lerp():
    R0 = Rotation.from_rotvec([0.3, -0.2, 0.1])
    R1 = Rotation.from_rotvec([-0.5, 0.9, 1.4])
    T_a = rigid(R0.as_rotvec(), (0.0, 0.0, 0.0))
    T_b = rigid(R1.as_rotvec(), (1.0, -2.0, 4.0))
    buf = TransformBuffer()
    buf.set_transform("world", "tool", T0, T_a)
    buf.set_transform("world", "tool", T0 + S, T_b)
    for alpha in (0.5, 0.25, 0.9):
        T = buf.lookup_transform("world", "tool", T0 + int(alpha * S))
        reference = Slerp([0.0, 1.0], Rotation.concatenate([R0, R1]))([alpha]).as_matrix()[0]
        np.testing.assert_allclose(T[:3, :3], reference, atol=1e-9)
        np.testing.assert_allclose(T[:3, 3], alpha * np.array([1.0, -2.0, 4.0]), atol=1e-9)
    # Samples given out of order are sorted; an exact stamp returns that sample.
    buf.set_transform("world", "tool", T0 - S, rigid((0, 0, 0), (9, 9, 9)))
    np.testing.assert_allclose(buf.lookup_transform("world", "tool", T0), T_a, atol=1e-12)
    np.testing.assert_allclose(buf.lookup_transform("world", "tool", T0 - S // 2)[:3, 3], [4.5, 4.5, 4.5], atol=1e-9)


def test_extrapolation_error_names_frames_and_range():
    buf = TransformBuffer(TransformBufferConfig(extrapolation_tolerance_s=0.005))
    buf.set_transform("world", "tool", T0, rigid(t=(1, 0, 0)))
    buf.set_transform("world", "tool", T0 + S, rigid(t=(2, 0, 0)))
    with pytest.raises(ExtrapolationError, match=r"future.*'world' -> 'tool'.*1700000000\.000000000 s, 1700000001\.000000000 s"):
        buf.lookup_transform("world", "tool", T0 + 2 * S)
    with pytest.raises(ExtrapolationError, match="past"):
        buf.lookup_transform("world", "tool", T0 - S)
    # Within the tolerance the end sample is used.
    np.testing.assert_allclose(buf.lookup_transform("world", "tool", T0 + S + 4_000_000)[:3, 3], [2, 0, 0])
    assert not buf.can_transform("world", "tool", T0 + S + 6_000_000)
    assert issubclass(ExtrapolationError, PoseNodeError)


def test_unknown_and_unconnected_frames():
    buf = TransformBuffer()
    buf.set_transform("world", "cam0", 0, np.eye(4), static=True)
    buf.set_transform("odom", "robot", 0, np.eye(4), static=True)
    with pytest.raises(TransformLookupError, match=r"'cam9' does not exist.*known frames: cam0, odom, robot, world"):
        buf.lookup_transform("world", "cam9", T0)
    with pytest.raises(TransformLookupError, match=r"not connected.*'robot' is in the tree rooted at 'odom'"):
        buf.lookup_transform("world", "robot", T0)
    with pytest.raises(LookupError):  # also a builtin LookupError, for callers that catch that
        buf.lookup_transform("cam0", "nowhere")
    with pytest.raises(InvalidInputError, match="'/world'"):
        buf.lookup_transform("/world", "cam0")
    with pytest.raises(InvalidInputError, match="not a rigid transform"):
        buf.set_transform("world", "cam1", 0, np.diag([1.0, 1.0, -1.0, 1.0]))


def test_cache_pruning_keeps_cache_duration():
    buf = TransformBuffer(TransformBufferConfig(cache_duration_s=2.0, extrapolation_tolerance_s=0.0))
    for i in range(11):  # 0 .. 5 s at 2 Hz
        assert buf.set_transform("world", "tool", T0 + i * S // 2, rigid(t=(i, 0, 0)))
    with pytest.raises(ExtrapolationError, match="past"):
        buf.lookup_transform("world", "tool", T0 + 2 * S)  # older than newest (5 s) - 2 s
    np.testing.assert_allclose(buf.lookup_transform("world", "tool", T0 + 3 * S)[:3, 3], [6, 0, 0])
    # A sample older than the cache window is ignored.
    assert not buf.set_transform("world", "tool", T0, rigid())
    with pytest.raises(ExtrapolationError):
        buf.lookup_transform("world", "tool", T0)
