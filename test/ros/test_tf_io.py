"""pose_node.ros.tf_io: the own-buffer path against a real graph, the tf2_ros path with a stand-in module."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")


def _transform(parent: str, child: str, z: float, stamp_ns: int = 0):
    from geometry_msgs.msg import TransformStamped

    from pose_node.ros.conversions import make_header

    t = TransformStamped(header=make_header(stamp_ns, parent), child_frame_id=child)
    t.transform.translation.z = z
    t.transform.rotation.w = 1.0
    return t


def test_own_buffer_from_tf_static_and_broadcaster_on_tf(ros, monkeypatch):
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from tf2_msgs.msg import TFMessage

    from pose_node.ros import tf_io
    from pose_node.ros.tf_buffer import TransformError

    monkeypatch.setattr(tf_io, "import_tf2_ros", lambda: None)
    static = ros.node.create_publisher(TFMessage, "/tf_static", QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    static.publish(TFMessage(transforms=[_transform("world", "cam", 1.5)]))  # before the listener exists: latched
    listener = tf_io.TfListener(ros.node)
    assert listener.backend == "pose_node"
    ros.spin_until(lambda: "cam" in listener.frames(), what="latched /tf_static")
    assert np.allclose(listener.lookup("world", "cam", 123)[:3, 3], [0, 0, 1.5])
    with pytest.raises(TransformError):
        listener.lookup("world", "nowhere", 123)
    inbox = ros.collect(TFMessage, "/tf", 100)
    broadcaster = tf_io.TfBroadcaster(ros.node)
    ros.wait_for_match(broadcaster._publisher)
    broadcaster.send([_transform("world", "obj_1", 0.2, 5)])
    ros.spin_until(lambda: any(t.child_frame_id == "obj_1" for m in inbox.messages for t in m.transforms), what="/tf")
    broadcaster.close()
    listener.close()


def test_tf2_ros_is_used_when_importable(ros, monkeypatch):
    from pose_node.ros import tf_io
    from pose_node.ros.tf_buffer import TransformError

    class TransformException(Exception):
        pass

    calls = {}

    class Buffer:
        def lookup_transform(self, target, source, time):
            calls["lookup"] = (target, source, time.nanoseconds)
            if source == "nowhere":
                raise TransformException("frame does not exist")
            return _transform(target, source, 0.7)

    class TransformListener:
        def __init__(self, buffer, node):
            calls["listener"] = node

        def unregister(self):
            calls["unregistered"] = True

    class TransformBroadcaster:
        def __init__(self, node):
            calls["broadcaster"] = node

        def sendTransform(self, transforms):  # noqa: N802 - tf2_ros's name
            calls["sent"] = transforms

    fake = types.SimpleNamespace(Buffer=Buffer, TransformListener=TransformListener, TransformException=TransformException,
                                 TransformBroadcaster=TransformBroadcaster)
    monkeypatch.setitem(sys.modules, "tf2_ros", fake)
    listener = tf_io.TfListener(ros.node)
    assert listener.backend == "tf2_ros" and calls["listener"] is ros.node
    assert np.allclose(listener.lookup("world", "cam", 42)[:3, 3], [0, 0, 0.7]) and calls["lookup"] == ("world", "cam", 42)
    with pytest.raises(TransformError, match="frame does not exist"):
        listener.lookup("world", "nowhere", 42)
    broadcaster = tf_io.TfBroadcaster(ros.node)
    broadcaster.send([_transform("world", "obj_1", 0.2)])
    assert calls["broadcaster"] is ros.node and calls["sent"][0].child_frame_id == "obj_1"
    listener.close()
    assert calls["unregistered"]
