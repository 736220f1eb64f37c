"""Bag replay into the pose_node: a synthetic 3-camera workcell (procedural objects) from
``pose_scene``, replayed with ``pose_replay``; detections and TF against ground truth, then
garbage input on a live node. One node serves every assertion (its start, onboarding and warm-up
dominate the test's time)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")

SEED = 3
NUM_CAMERAS = 3
NUM_OBJECTS = 3
START_TIMEOUT_S = 120.0  # onboarding (cold cache) + backend build + warm-up on a shared 2-core CPU


def _node_config() -> dict:
    from pose_node.ros.replay_session import workcell_node_config

    return workcell_node_config([f"cam{i}" for i in range(NUM_CAMERAS)], seed=SEED, num_objects=NUM_OBJECTS, mode="rgbd")


def test_replay_detections_tf_and_garbage_input(ros, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    from pose_node.ros.conversions import msg_to_matrix, numpy_to_image, stamp_to_ns
    from pose_node.ros.replay_session import diagnostic_values, replay_topics, rotation_error_deg, write_node_config
    from pose_node.scene.cli import main as pose_scene

    scene = tmp_path / "scene"
    assert pose_scene(["--out", str(scene), "--cameras", str(NUM_CAMERAS), "--num-objects", str(NUM_OBJECTS),
                       "--max-instances", "1", "--scenes", "1", "--frames-per-scene", "2", "--width", "640",
                       "--height", "480", "--seed", str(SEED)]) == 0
    world = json.loads((scene / "scene_world.json").read_text())
    truth = {inst["obj_id"]: np.array(inst["T_world_object"]) for inst in world["scenes"][0]["instances"]}
    frame_stamps = {f["stamp_ns"] for f in world["scenes"][0]["frames"]}

    detections = ros.collect(Detection3DArray, "/pose_node/detections")
    transforms = ros.collect(TFMessage, "/tf", 100)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    node_config = _node_config()
    node = ros.start_module("pose_node.ros.node", params={"config_file": write_node_config(tmp_path / "pose_node.yaml", node_config),
                                                           "autostart": True})
    node.wait_for_output("active", timeout_s=START_TIMEOUT_S)

    replay = ros.start_module("pose_node.ros.replay", str(scene / "bag"), "--no-clock", "--rate", "0.5",
                              "--wait-for-subscribers", "1", "--wait-timeout", "30", "--topics", *replay_topics(node_config))
    ros.spin_until(lambda: len(detections.messages) >= 1 and not replay.running(), timeout_s=60,
                   what="detections from the replayed bag")
    assert replay.wait() == 0, replay.output()
    # Two sets, the second waiting in the one-slot mailbox while the first is processed: both come out.
    ros.spin_until(lambda: len(detections.messages) >= len(frame_stamps), timeout_s=20, what="one result per frame")

    # Stamps are the images' stamps, frames are the world frame.
    assert sorted(stamp_to_ns(m.header.stamp) for m in detections.messages) == sorted(frame_stamps)
    for msg in detections.messages:
        assert msg.header.frame_id == "world"
        for det in msg.detections:
            assert det.header.frame_id == "world" and det.header.stamp == msg.header.stamp
            cov = np.array(det.results[0].pose.covariance).reshape(6, 6)
            assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0, cov
    # Every ground-truth object within 1 cm and 3 degrees (clean synthetic RGB-D), in every message.
    for msg in detections.messages:
        for obj_id, T_true in truth.items():
            name = f"obj_{obj_id:06d}"
            errors = []
            for det in msg.detections:
                if det.results[0].hypothesis.class_id == name:
                    T = msg_to_matrix(det.results[0].pose.pose)
                    errors.append((np.linalg.norm(T[:3, 3] - T_true[:3, 3]), rotation_error_deg(T[:3, :3], T_true[:3, :3])))
            assert any(t <= 0.01 and r <= 3.0 for t, r in errors), (name, errors)
    # TF: world -> <name>_<instance>, same stamps; ids stable across the two frames.
    object_tf = [m for m in transforms.messages if any(t.child_frame_id.startswith("obj_") for t in m.transforms)]
    assert object_tf
    for msg in object_tf:
        for t in msg.transforms:
            assert t.header.frame_id == "world" and stamp_to_ns(t.header.stamp) in frame_stamps
    ids = [sorted(d.id for d in m.detections) for m in detections.messages]
    assert ids[0] == ids[1], ids
    assert all(i.endswith("_0") for i in ids[0]), ids  # one instance per object: numbered per object from 0

    # The same bag again (stamps go back, as in a looping replay): results again, with the same names.
    first_pass = len(detections.messages)
    replay = ros.start_module("pose_node.ros.replay", str(scene / "bag"), "--no-clock", "--rate", "0.5",
                              "--wait-for-subscribers", "1", "--wait-timeout", "30", "--topics", *replay_topics(node_config))
    assert replay.wait(timeout_s=60) == 0, replay.output()
    ros.spin_until(lambda: len(detections.messages) >= first_pass + len(frame_stamps), timeout_s=30,
                   what="results of the second replay")
    second = detections.messages[first_pass:]
    assert sorted(stamp_to_ns(m.header.stamp) for m in second) == sorted(frame_stamps)
    assert [sorted(d.id for d in m.detections) for m in second] == ids[:len(second)], ids
    assert "time went back" in node.output()

    # Garbage: wrong encoding, NaN depth; the node warns, counts, keeps running.
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    color_pub = ros.node.create_publisher(Image, "/cam0/color/image_raw", qos)
    depth_pub = ros.node.create_publisher(Image, "/cam0/depth/image_rect_raw", qos)
    ros.wait_for_match(color_pub)
    ros.wait_for_match(depth_pub)
    stamp = max(frame_stamps) + 10**9
    bad_color = numpy_to_image(np.zeros((480, 640), np.uint16), "16UC1", stamp_ns=stamp, frame_id="cam0_color_optical_frame")
    nan_depth = numpy_to_image(np.full((480, 640), np.nan, np.float32), "32FC1", stamp_ns=stamp,
                               frame_id="cam0_color_optical_frame")
    color_pub.publish(bad_color)
    depth_pub.publish(nan_depth)

    def counted() -> bool:
        values = diagnostic_values(diagnostics.messages)
        return int(values.get("recent.bad_input.color", 0)) >= 1 and int(values.get("recent.bad_input.depth_nan", 0)) >= 1

    ros.spin_until(counted, timeout_s=10, what="bad-input counters in /diagnostics")
    assert node.running()
    out = node.output()
    assert "colour image" in out and "no finite depth" in out
    values = diagnostic_values(diagnostics.messages)
    assert "latency_ms.total" in values and "rate_hz.cam0" in values
    node.assert_clean_exit()

    # A restarted node names the same objects the same (numbered per object, not by a global counter).
    before_restart = len(detections.messages)
    node = ros.start_module("pose_node.ros.node", params={"config_file": str(tmp_path / "pose_node.yaml"), "autostart": True})
    node.wait_for_output("active", timeout_s=START_TIMEOUT_S)
    replay = ros.start_module("pose_node.ros.replay", str(scene / "bag"), "--no-clock", "--rate", "0.5",
                              "--wait-for-subscribers", "1", "--wait-timeout", "30", "--topics", *replay_topics(node_config))
    assert replay.wait(timeout_s=60) == 0, replay.output()
    ros.spin_until(lambda: len(detections.messages) >= before_restart + len(frame_stamps), timeout_s=30,
                   what="results after the restart")
    assert [sorted(d.id for d in m.detections) for m in detections.messages[before_restart:]] == ids[:len(frame_stamps)], ids
    node.assert_clean_exit()


def test_bad_config_fails_naming_the_key(ros, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("cameras: {cam0: {color_topic: /c, camera_info_topic: /i, depth_topic: /d, depth_encoding: foo}}\n"
                      "objects: [{procedural: {seed: 0, count: 1}}]\n")
    node = ros.start_module("pose_node.ros.node", params={"config_file": config, "autostart": True})
    assert node.wait(timeout_s=30) == 1
    assert "cameras.cam0.depth_encoding" in node.output()
