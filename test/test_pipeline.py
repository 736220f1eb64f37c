"""PosePipeline's ROS-free parts: thresholds, instance tracking (symmetric objects too), no rclpy import."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from pose_node.core.types import PoseEstimate
from pose_node.pipeline import InstanceTracker, passes_thresholds
from pose_node.ros.node_config import Thresholds


def _estimate(object_id: int, xyz, std_m: float = 0.001, view: int = 0, score: float = 0.9) -> PoseEstimate:
    T = np.eye(4)
    T[:3, 3] = xyz
    cov = np.diag([std_m**2] * 3 + [1e-4] * 3)
    return PoseEstimate(object_id=object_id, instance_id=0, T_world_object=T, covariance=cov, score=score,
                        view_indices=(view,))


def test_thresholds():
    e = _estimate(1, [0, 0, 0], 0.01, score=0.5)
    assert passes_thresholds(e, Thresholds())
    assert not passes_thresholds(e, Thresholds(pose_score=0.6))
    assert not passes_thresholds(e, Thresholds(max_position_std_m=0.005))
    assert passes_thresholds(e, Thresholds(max_position_std_m=0.02, max_rotation_std_deg=1.0))
    assert not passes_thresholds(e, Thresholds(max_rotation_std_deg=0.5))


def test_tracker_keeps_ids_and_reset_gives_new_ones():
    tracker = InstanceTracker(gate_m=0.05)
    a = tracker.assign([_estimate(1, [0, 0, 0]), _estimate(1, [0.3, 0, 0]), _estimate(2, [0, 0, 0])])
    ids = [e.instance_id for e in a]
    assert len(set(ids)) == 3
    b = tracker.assign([_estimate(2, [0.01, 0, 0]), _estimate(1, [0.31, 0, 0]), _estimate(1, [0.0, 0.01, 0])])
    assert [e.instance_id for e in b] == [ids[2], ids[1], ids[0]]
    c = tracker.assign([_estimate(1, [0.0, 0.2, 0])])  # outside the gate: a new instance
    assert c[0].instance_id not in ids
    tracker.reset()
    d = tracker.assign([_estimate(1, [0.0, 0.2, 0])])
    assert d[0].instance_id not in ids + [c[0].instance_id]


def test_tracker_keeps_the_symmetric_equivalent_closest_to_the_previous_pose():
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # 180 degrees about z: a box's symmetry
    tracker = InstanceTracker(gate_m=0.05, symmetries={1: np.stack([np.eye(4), flip])})
    first = tracker.assign([_estimate(1, [0, 0, 0])])[0]
    flipped = _estimate(1, [0.002, 0, 0])
    flipped = PoseEstimate(1, 0, flipped.T_world_object @ flip, flipped.covariance, 0.9, (0,))
    second = tracker.assign([flipped])[0]
    assert second.instance_id == first.instance_id
    np.testing.assert_allclose(second.T_world_object[:3, :3], np.eye(3), atol=1e-12)  # not the flipped equivalent
    np.testing.assert_allclose(second.T_world_object[:3, 3], [0.002, 0, 0])


def test_pipeline_imports_without_rclpy():
    code = "import sys; sys.modules['rclpy'] = None; import pose_node.pipeline"
    subprocess.run([sys.executable, "-c", code], check=True)
