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

    def pop_unit_reports(self):
        return []

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


def _publishers(ros, wait: bool = True):
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
        if wait:
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


def _activate_with_cam1_tf(ros, node):
    """Configure and activate ``node``, publish cam1's /tf_static and wait until the node has it.
    Returns the input publishers."""
    node.trigger_configure()
    node.trigger_activate()
    pubs = _publishers(ros)
    _tf_static(pubs, "cam1_optical", 2.0)
    ros.spin_until(lambda: "cam1_optical" in node.tf.frames(), what="/tf_static in the node's buffer")
    return pubs


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


FAST_DIAGNOSTICS = {"window_s": 2.0, "late_s": 0.3, "stale_timeout_s": 0.8, "period_s": 0.1}


def _config_file(tmp_path, name: str, *, topics_prefix: str = "/", **extra) -> str:
    """The fixture's two-camera config with fast diagnostics; ``topics_prefix`` "" makes the topics relative."""
    config = yaml.safe_load((tmp_path / "pose_node.yaml").read_text())
    for camera in config["cameras"].values():
        for key in ("color_topic", "camera_info_topic", "depth_topic"):
            camera[key] = topics_prefix + camera[key].lstrip("/")
    config["diagnostics"] = FAST_DIAGNOSTICS
    config.update(extra)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _statuses(inbox) -> dict:
    """Status name -> the latest DiagnosticStatus received."""
    latest = {}
    for msg in inbox.messages:
        for status in msg.status:
            latest[status.name] = status
    return latest


def test_diagnostics_per_camera_dead_camera_is_an_error_naming_its_topics(ros, node_factory, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    node, fake = node_factory(_config_file(tmp_path, "fast.yaml"))
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    pubs = _activate_with_cam1_tf(ros, node)

    def cam1_alive_cam0_dead() -> bool:
        status = _statuses(diagnostics)
        cam0, cam1 = status.get("pose_node: camera cam0"), status.get("pose_node: camera cam1")
        return (cam0 is not None and cam0.level == DiagnosticStatus.ERROR
                and cam1 is not None and cam1.level != DiagnosticStatus.ERROR and len(fake.calls) >= 3)

    stamp = T0
    deadline = time.monotonic() + 15.0
    while not cam1_alive_cam0_dead():  # cam1 streams at ~10 Hz, cam0 never
        assert time.monotonic() < deadline, {k: (s.level, s.message) for k, s in _statuses(diagnostics).items()}
        _send(pubs, "cam1", stamp)
        stamp += 10**8
        ros.spin_for(0.1)
    status = _statuses(diagnostics)
    cam0 = status["pose_node: camera cam0"]
    assert "/cam0/image" in cam0.message and "/cam0/info" in cam0.message and "/cam0/depth" in cam0.message
    assert "nothing ever arrived" in cam0.message
    pipeline = status["pose_node: pipeline"]
    assert pipeline.level != DiagnosticStatus.ERROR, pipeline.message  # cam1 alone still gives results
    values = {kv.key: kv.value for kv in pipeline.values}
    assert int(values["recent.partial_sets"]) >= 1 and float(values["latency_ms.total"]) == 1.0
    cam1_values = {kv.key: kv.value for kv in status["pose_node: camera cam1"].values}
    assert float(cam1_values["rate_hz.cam1"]) > 0 and cam1_values["topic.color"] == "/cam1/image"

    # cam0 starts: its status recovers (recent window), it is no longer an error.
    def cam0_ok() -> bool:
        cam0 = _statuses(diagnostics)["pose_node: camera cam0"]
        return cam0.level != DiagnosticStatus.ERROR
    deadline = time.monotonic() + 15.0
    while not cam0_ok():
        assert time.monotonic() < deadline
        _send(pubs, "cam0", stamp)
        _send(pubs, "cam1", stamp)
        stamp += 10**8
        ros.spin_for(0.1)


def test_wrong_namespace_is_an_error_and_logged_once(ros, node_factory, tmp_path, capfd):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.parameter import Parameter

    from pose_node.ros.node import PoseNode

    node_factory()  # fixture set-up (fake pipeline); the node under test lives in a namespace
    config = _config_file(tmp_path, "relative.yaml", topics_prefix="")
    node = PoseNode(context=ros.context, namespace="robot_a",
                    parameter_overrides=[Parameter("config_file", value=str(config))])
    ros.executor.add_node(node)
    try:
        node.trigger_configure()
        node.trigger_activate()
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        pubs = _publishers(ros, wait=False)  # publishes on /cam0/..., the node listens on /robot_a/cam0/...
        stamp = T0

        def pipeline_error() -> bool:
            status = _statuses(diagnostics).get("pose_node: pipeline")
            return status is not None and status.level == DiagnosticStatus.ERROR

        deadline = time.monotonic() + 15.0
        while not pipeline_error():
            assert time.monotonic() < deadline
            _send(pubs, "cam0", stamp)
            _send(pubs, "cam1", stamp)
            stamp += 10**8
            ros.spin_for(0.1)
        ros.spin_for(0.5)  # several more diagnostics periods: still logged once
        status = _statuses(diagnostics)
        assert "/robot_a/cam0/image" in status["pose_node: pipeline"].message
        for cam in ("cam0", "cam1"):
            assert status[f"pose_node: camera {cam}"].level == DiagnosticStatus.ERROR
            assert f"/robot_a/{cam}/image" in status[f"pose_node: camera {cam}"].message
        err = capfd.readouterr().err
        assert err.count("pipeline: receiving nothing usable from any camera") == 1, err
    finally:
        node.trigger_deactivate()
        ros.executor.remove_node(node)
        node.destroy_node()


def test_time_going_back_clears_state_and_continues(ros, node_factory, tmp_path):
    """A looped bag: stamps restart; the node logs it, clears sync/TF/tracker and gives results again."""
    from vision_msgs.msg import Detection3DArray

    from pose_node.ros.conversions import stamp_to_ns

    node, fake = node_factory(_config_file(tmp_path, "fast.yaml"))
    detections = ros.collect(Detection3DArray, "/pose_node/detections")
    pubs = _activate_with_cam1_tf(ros, node)
    node.tf.buffer.set_transform("world", "moving", T0 + 10**8, np.eye(4))  # a dynamic sample of the first pass
    stamps = [T0 + k * 10**8 for k in range(3)]
    for loop in range(2):
        for stamp in stamps:
            _send(pubs, "cam0", stamp)
            _send(pubs, "cam1", stamp)
            ros.spin_until(lambda s=stamp: any(stamp_to_ns(m.header.stamp) == s for m in detections.messages[-1:]),
                           what=f"result of {stamp} in pass {loop}")
    got = [stamp_to_ns(m.header.stamp) for m in detections.messages]
    assert got == stamps + stamps
    assert node.counters["time_jumps"] == 1 and fake.resets == 1
    assert "cam1_optical" in node.tf.frames() and "moving" not in node.tf.frames()  # static kept, dynamic cleared


def test_reset_service(ros, node_factory):
    pytest.importorskip("std_srvs", reason="std_srvs is not installed (ros-std-srvs; scripts/setup.sh installs it)")
    from std_srvs.srv import Trigger

    node, fake = node_factory()
    node.trigger_configure()
    node.trigger_activate()
    client = ros.node.create_client(Trigger, "/pose_node/reset")
    ros.spin_until(client.service_is_ready, what="the reset service")
    future = client.call_async(Trigger.Request())
    ros.spin_until(future.done, what="the reset service's answer")
    assert future.result().success and "cleared" in future.result().message and fake.resets == 1


def test_sigint_during_processing_exits_0_every_time(ros, tmp_path):
    """SIGINT while the worker computes: the node waits for the set and exits 0 (5 times in a row)."""
    import sys
    from pathlib import Path

    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from pose_node.ros.conversions import make_header, numpy_to_image

    root = Path(__file__).resolve().parents[2]
    extrinsics = {"translation_m": [0.0, 0.0, 1.0], "rotation_xyzw": [0.0, 0.0, 0.0, 1.0]}
    config = {"cameras": {"cam0": {"color_topic": "/sig/image", "camera_info_topic": "/sig/info", "T_world_camera": extrinsics}},
              "objects": [{"procedural": {"seed": 0, "count": 1}}], "pipeline": {"mode": "rgb"}}
    path = tmp_path / "sigint.yaml"
    path.write_text(yaml.safe_dump(config))
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = ros.node.create_publisher(Image, "/sig/image", qos)
    info_pub = ros.node.create_publisher(CameraInfo, "/sig/info", qos)
    for attempt in range(5):
        node = ros.start([sys.executable, str(root / "test/ros/slow_pipeline_node.py")],
                         params={"config_file": path, "autostart": True}, env={"PYTHONPATH": str(root)})
        node.wait_for_output("active", timeout_s=60)
        ros.wait_for_match(image_pub)
        ros.wait_for_match(info_pub)
        stamp = T0 + attempt * 10**9
        image_pub.publish(numpy_to_image(np.full((H, W, 3), 100, np.uint8), "rgb8", stamp_ns=stamp, frame_id="cam0_optical"))
        info_pub.publish(CameraInfo(header=make_header(stamp, "cam0_optical"), width=W, height=H, k=K))
        node.wait_for_output("estimate started", timeout_s=20)
        code = node.stop()
        out = node.output()
        assert code == 0 and out.count("estimate finished") == 1, f"attempt {attempt}: exit {code}\n{out}"
        ros.spin_until(lambda: image_pub.get_subscription_count() == 0, what="the stopped node gone from the graph")


def test_mesh_units_disagreeing_with_depth_are_reported_once(ros, node_factory, capfd):
    node, fake = node_factory()
    pubs = _activate_with_cam1_tf(ros, node)
    # The fake estimate is 1 m in front of cam0; the depth there says 1 cm: a factor 100 (m declared, cm likely).
    for k in range(2):
        _send(pubs, "cam0", T0 + k * 10**8, depth=np.full((H, W), 0.01, np.float32))
        _send(pubs, "cam1", T0 + k * 10**8)
        ros.spin_until(lambda n=k + 1: len(fake.calls) >= n, what=f"set {k}")
    ros.spin_for(0.2)
    assert node.counters["units_suspect.obj_000001"] == 1
    err = capfd.readouterr().err
    assert err.count("obj_000001: estimated 100 times as far as the depth at its centre in cam0: "
                     "its mesh is probably in cm, not the declared m (objects[0].units)") == 1, err


def test_threshold_parameters_declare_their_ranges(ros, node_factory):
    node, _ = node_factory()
    node.trigger_configure()
    (score,) = node.describe_parameters(["thresholds.pose_score"])
    assert (score.floating_point_range[0].from_value, score.floating_point_range[0].to_value) == (0.0, 1.0)
    assert "below which a pose is not published" in score.description
    (std,) = node.describe_parameters(["thresholds.max_position_std_m"])
    assert std.floating_point_range[0].from_value == 0.0 and std.floating_point_range[0].to_value == float("inf")


def test_first_set_waits_for_tf_static(ros, node_factory, tmp_path):
    """Images before /tf_static (another topic, no ordering): the set waits for the transform
    instead of going ahead without the camera."""
    node, fake = node_factory(_config_file(tmp_path, "tf_wait.yaml", tf_timeout_s=5.0))
    node.trigger_configure()
    node.trigger_activate()
    pubs = _publishers(ros)
    _send(pubs, "cam0", T0)
    _send(pubs, "cam1", T0)  # cam1's extrinsics come from TF, which has nothing yet
    ros.spin_for(0.3)
    assert fake.calls == []  # waiting, not processed without cam1
    _tf_static(pubs, "cam1_optical", 2.0)
    ros.spin_until(lambda: len(fake.calls) == 1, what="the first set")
    assert [v.name for v in fake.calls[0]] == ["cam0", "cam1"] and node.counters["bad_input.camera"] == 0
    # A frame TF never gets: one set waits (then goes ahead without it), later sets do not wait for it.
    for k in (1, 2):
        _send(pubs, "cam0", T0 + k * 10**8)
        _send(pubs, "cam1", T0 + k * 10**8, frame="nowhere")
        ros.spin_until(lambda n=k + 1: len(fake.calls) == n, timeout_s=10, what=f"set {k} without cam1")
        assert [v.name for v in fake.calls[-1]] == ["cam0"] and node._tf_gave_up == {"nowhere"}


def test_a_backward_clock_jump_resets(ros, node_factory):
    """Sim time going back (/clock of a looping bag or a restarted simulator) clears the state too."""
    from rclpy.parameter import Parameter
    from rclpy.time import Time
    from rosgraph_msgs.msg import Clock

    node, fake = node_factory()
    node.set_parameters([Parameter("use_sim_time", value=True)])
    node.trigger_configure()
    node.trigger_activate()
    clock = ros.node.create_publisher(Clock, "/clock", 10)
    ros.wait_for_match(clock)
    for seconds in (100, 101):
        clock.publish(Clock(clock=Time(seconds=seconds).to_msg()))
        ros.spin_until(lambda s=seconds: node.get_clock().now().nanoseconds == s * 10**9, what=f"sim time {seconds} s")
    assert node.counters["time_jumps"] == 0
    clock.publish(Clock(clock=Time(seconds=50).to_msg()))
    ros.spin_until(lambda: node.counters["time_jumps"] == 1 and fake.resets == 1, what="the reset after the jump")


def test_debug_images_per_camera_only_when_enabled(ros, node_factory, tmp_path):
    from sensor_msgs.msg import Image

    from pose_node.ros.conversions import image_to_numpy, stamp_to_ns

    node, fake = node_factory(_config_file(tmp_path, "debug.yaml", debug_images=True))
    debug = {cam: ros.collect(Image, f"/pose_node/debug/{cam}/image") for cam in ("cam0", "cam1")}
    pubs = _activate_with_cam1_tf(ros, node)
    for cam in debug:
        ros.wait_for_publishers(f"/pose_node/debug/{cam}/image")
    _send(pubs, "cam0", T0)
    _send(pubs, "cam1", T0)
    ros.spin_until(lambda: all(inbox.messages for inbox in debug.values()), what="one debug image per camera")
    msg = debug["cam0"].messages[0]
    assert stamp_to_ns(msg.header.stamp) == T0 and msg.header.frame_id == "cam0_optical" and msg.encoding == "rgb8"
    image = image_to_numpy(msg)
    assert image.shape == (H, W, 3)
    # The estimate is 1 m in front of cam0, on its optical axis: drawn around the principal point.
    changed = np.argwhere((image != 100).any(-1))
    assert len(changed) > 0 and np.abs(changed.mean(0) - [24, 32]).max() < 12, changed.mean(0)

    node_off, _ = node_factory()  # the default: no debug topics
    node_off.trigger_configure()
    node_off.trigger_activate()
    assert node_off._debug_pubs == {}
