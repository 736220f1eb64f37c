"""The pose_node lifecycle node in-process, with a stand-in pipeline (fast): lifecycle, message
round trip (frames, stamps, extrinsics from YAML and from TF), bad input, latest-wins dropping,
runtime parameters and the reset topic. The real pipeline is exercised by test_node_replay.py."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")

W, H = 64, 48
K = [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]
T0 = 1_700_000_000 * 10**9


class FakePipeline:
    """Returns one estimate 1 m in front of the first view's camera; records what it is given."""

    build_s = 0.0

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls: list = []
        self.thresholds = None
        self.resets = 0
        self.lock = threading.Lock()

    def estimate(self, views):
        from pose_node.core.types import PoseEstimate

        time.sleep(self.delay_s)
        with self.lock:
            self.calls.append(views)
        T = np.asarray(views[0].camera.T_world_camera) @ np.array(
            [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.0], [0, 0, 0, 1]], float)
        cov = np.diag([1e-6] * 3 + [1e-4] * 3)
        return [PoseEstimate(object_id=1, instance_id=4, T_world_object=T, covariance=cov, score=0.9)], {"total": 1.0}

    def set_thresholds(self, thresholds):
        self.thresholds = thresholds

    def reset(self):
        self.resets += 1


@pytest.fixture
def node_factory(ros, tmp_path, monkeypatch):
    from pose_node.pipeline import PosePipeline
    from pose_node.ros.node import PoseNode

    fake = FakePipeline()
    monkeypatch.setattr(PosePipeline, "from_node_config", classmethod(lambda cls, config, models: fake))
    config = {
        "cameras": {
            "cam0": {"color_topic": "/cam0/image", "camera_info_topic": "/cam0/info", "depth_topic": "/cam0/depth",
                     "T_world_camera": {"translation_m": [0.0, 0.0, 1.0], "rotation_xyzw": [1.0, 0.0, 0.0, 0.0]}},
            "cam1": {"color_topic": "/cam1/image", "camera_info_topic": "/cam1/info", "depth_topic": "/cam1/depth"},
        },
        "objects": [{"procedural": {"seed": 0, "count": 1}}],
        "sync": {"slop_s": 0.01, "timeout_s": 0.2, "min_cameras": 1},
    }
    path = tmp_path / "pose_node.yaml"
    path.write_text(yaml.safe_dump(config))
    nodes = []

    def make(config_file=path):
        from rclpy.parameter import Parameter

        node = PoseNode(context=ros.context, parameter_overrides=[Parameter("config_file", value=str(config_file))])
        ros.executor.add_node(node)
        nodes.append(node)
        return node, fake

    yield make
    for node in nodes:
        if node._running:
            node.trigger_deactivate()
        ros.executor.remove_node(node)
        node.destroy_node()


def _publishers(ros):
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    pubs = {}
    for cam in ("cam0", "cam1"):
        pubs[f"{cam}/image"] = ros.node.create_publisher(Image, f"/{cam}/image", 10)
        pubs[f"{cam}/depth"] = ros.node.create_publisher(Image, f"/{cam}/depth", 10)
        pubs[f"{cam}/info"] = ros.node.create_publisher(CameraInfo, f"/{cam}/info", 10)
    pubs["tf_static"] = ros.node.create_publisher(
        TFMessage, "/tf_static", QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    for pub in pubs.values():
        ros.wait_for_match(pub)
    return pubs


def _send(pubs, cam: str, stamp_ns: int, *, frame: str | None = None, depth=None, encoding: str = "rgb8", k=K):
    from sensor_msgs.msg import CameraInfo

    from pose_node.ros.conversions import make_header, numpy_to_image

    frame = frame or f"{cam}_optical"
    rgb = np.full((H, W, 3), 100, np.uint8) if encoding == "rgb8" else np.zeros((H, W), np.uint16)
    pubs[f"{cam}/image"].publish(numpy_to_image(rgb, encoding, stamp_ns=stamp_ns, frame_id=frame))
    d = np.full((H, W), 0.8, np.float32) if depth is None else depth
    pubs[f"{cam}/depth"].publish(numpy_to_image(d, "32FC1", stamp_ns=stamp_ns, frame_id=frame))
    pubs[f"{cam}/info"].publish(CameraInfo(header=make_header(stamp_ns, frame), width=W, height=H, k=k))


def _tf_static(pubs, child: str, z: float):
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    from pose_node.ros.conversions import make_header

    t = TransformStamped(header=make_header(0, "world"), child_frame_id=child)
    t.transform.translation.z = z
    t.transform.rotation.w = 1.0
    pubs["tf_static"].publish(TFMessage(transforms=[t]))


def test_lifecycle_round_trip_and_bad_input(ros, node_factory):
    from rclpy.lifecycle import TransitionCallbackReturn
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    from pose_node.ros.conversions import msg_to_matrix, stamp_to_ns

    node, fake = node_factory()
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    detections = ros.collect(Detection3DArray, "/pose_node/detections")
    tf = ros.collect(TFMessage, "/tf", 100)
    pubs = _publishers(ros)
    _tf_static(pubs, "cam1_optical", 2.0)
    ros.spin_until(lambda: "cam1_optical" in node.tf.frames(), what="/tf_static in the node's buffer")

    # A full set: both cameras, cam0 from the YAML extrinsics, cam1 from TF.
    _send(pubs, "cam0", T0)
    _send(pubs, "cam1", T0)
    ros.spin_until(lambda: len(detections.messages) >= 1, what="detections")
    msg = detections.messages[-1]
    assert stamp_to_ns(msg.header.stamp) == T0 and msg.header.frame_id == "world"
    assert msg.detections[0].id == "obj_000001_4" and msg.detections[0].results[0].hypothesis.class_id == "obj_000001"
    views = fake.calls[-1]
    assert [v.name for v in views] == ["cam0", "cam1"]
    assert np.allclose(views[0].camera.T_world_camera[:3, 3], [0, 0, 1]) and np.allclose(views[1].camera.T_world_camera[:3, 3], [0, 0, 2])
    # cam0 looks down (180 deg about x): the object 1 m in front of it is at z = 0.
    assert np.allclose(msg_to_matrix(msg.detections[0].results[0].pose.pose)[:3, 3], [0, 0, 0], atol=1e-9)
    ros.spin_until(lambda: any(t.child_frame_id == "obj_000001_4" for m in tf.messages for t in m.transforms), what="/tf")

    # Bad input: each is dropped and counted; the node keeps going.
    n = len(fake.calls)
    _send(pubs, "cam0", T0 + 10**8, encoding="16UC1")                                  # wrong colour encoding
    _send(pubs, "cam1", T0 + 10**8, depth=np.full((H, W), np.nan, np.float32))       # NaN depth
    ros.spin_until(lambda: node.counters["bad_input.color"] >= 1 and node.counters["bad_input.depth_nan"] >= 1,
                   what="bad colour and NaN depth counted")
    _send(pubs, "cam0", T0 + 2 * 10**8, depth=np.full((H // 2, W // 2), 0.8, np.float32))  # size mismatch
    _send(pubs, "cam1", T0 + 2 * 10**8, frame="nowhere")                                # unknown frame: TF missing
    ros.spin_until(lambda: node.counters["bad_input.camera"] >= 2, what="size mismatch and missing TF counted")
    assert len(fake.calls) == n  # no view was usable: the set was dropped
    _send(pubs, "cam0", T0 + 3 * 10**8, k=[0.0] * 9)                                   # uncalibrated camera_info
    ros.spin_until(lambda: node.counters["bad_input.camera_info"] >= 1, what="bad camera_info counted")
    _send(pubs, "cam1", T0 + 4 * 10**8)  # cam0 missing: a partial set after the timeout
    ros.spin_until(lambda: len(fake.calls) > n, what="partial set processed")
    assert [v.name for v in fake.calls[-1]] == ["cam1"] and node.counters["missing_camera.cam0"] >= 1

    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node._subs == [] and node._pubs == {} and node._worker is None
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and node.pipeline is None


def test_latest_wins_runtime_parameters_and_reset(ros, node_factory):
    from rclpy.parameter import Parameter
    from std_msgs.msg import Empty

    node, fake = node_factory()
    fake.delay_s = 0.4
    node.trigger_configure()
    node.trigger_activate()
    pubs = _publishers(ros)
    _tf_static(pubs, "cam1_optical", 2.0)
    for i in range(5):
        _send(pubs, "cam0", T0 + i * 10**8)
        _send(pubs, "cam1", T0 + i * 10**8)
        ros.spin_for(0.05)
    ros.spin_until(lambda: node._slot is None and len(fake.calls) >= 2, what="worker idle")
    ros.spin_for(0.5)
    assert node.counters["dropped_sets"] >= 1 and len(fake.calls) + node.counters["dropped_sets"] == 5
    assert fake.calls[-1][0].stamp_ns == T0 + 4 * 10**8  # the newest set is never the one dropped

    assert fake.thresholds is None  # configure keeps the file's (per-object) thresholds
    assert node.set_parameters([Parameter("thresholds.pose_score", value=0.7)])[0].successful
    assert fake.thresholds.pose_score == 0.7
    assert not node.set_parameters([Parameter("thresholds.pose_score", value=1.5)])[0].successful
    assert not node.set_parameters([Parameter("thresholds.max_position_std_m", value=-1.0)])[0].successful
    assert node.get_parameter("thresholds.pose_score").value == 0.7

    reset = ros.node.create_publisher(Empty, "/pose_node/reset", 10)
    ros.wait_for_match(reset)
    reset.publish(Empty())
    ros.spin_until(lambda: fake.resets == 1, what="reset")


def test_configure_fails_naming_the_key(ros, node_factory, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: {cam0: {color_topic: /c, camera_info_topic: /i}}\nobjects: []\npipeline: {mode: rgb}\n")
    node, _ = node_factory(bad)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    node_missing, _ = node_factory(tmp_path / "missing.yaml")
    assert node_missing.trigger_configure() == TransitionCallbackReturn.FAILURE


def test_a_mesh_that_fails_to_load_is_skipped(ros, node_factory, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    (tmp_path / "broken.ply").write_text("not a mesh\n")
    config = yaml.safe_load((tmp_path / "pose_node.yaml").read_text())
    config["objects"].append({"id": 9, "name": "broken", "mesh": "broken.ply", "units": "mm"})
    path = tmp_path / "with_broken.yaml"
    path.write_text(yaml.safe_dump(config))
    node, _ = node_factory(path)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.counters["objects_failed_to_load"] == 1
    assert [o.name for o in node.config.objects] == ["obj_000001"] and list(node.models) == [1]
