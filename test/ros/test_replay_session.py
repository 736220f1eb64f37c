"""The pieces of pose_node.ros.replay_session that need no running node (the node on a bag:
test_node_replay.py and test_demo.py)."""
import numpy as np
import pytest

from pose_node.ros.node_config import load_node_config
from pose_node.ros.replay_session import (
    ReplaySessionError,
    run_node_on_bag,
    replay_topics, rotation_error_deg, set_latencies_ms, workcell_node_config, write_node_config,
)


@pytest.mark.parametrize("mode", ["rgbd", "rgb"])
def test_workcell_config_is_a_valid_node_config_and_names_its_topics(tmp_path, mode):
    config = workcell_node_config(["cam0", "cam1"], seed=5, num_objects=2, mode=mode)
    loaded = load_node_config(write_node_config(tmp_path / "node.yaml", config))
    assert [c.name for c in loaded.cameras] == ["cam0", "cam1"]
    assert [o.object_id for o in loaded.objects] == [1, 2] and loaded.objects[0].procedural.seed == 5
    assert loaded.pipeline.mode == mode and loaded.sync.min_cameras == 2
    topics = replay_topics(config)
    assert topics[0] == "/tf_static" and "/cam1/color/camera_info" in topics
    assert ("/cam0/depth/image_rect_raw" in topics) == (mode == "rgbd")


def test_rotation_error_deg():
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    assert rotation_error_deg(np.eye(3), R) == pytest.approx(30.0)
    assert rotation_error_deg(R, R) == pytest.approx(0.0, abs=1e-6)


def test_set_latencies_one_entry_per_processed_set():
    from types import SimpleNamespace as NS

    def msg(count, total):
        values = [NS(key="processed_sets", value=str(count))]
        if total is not None:
            values += [NS(key="latency_ms.total", value=str(total)), NS(key="latency_ms.pnp", value="1.0")]
        return NS(status=[NS(values=values)])

    sets = set_latencies_ms([msg(0, None), msg(1, 700.0), msg(1, 700.0), msg(3, 650.0)])
    assert sets == [{"total": 700.0, "pnp": 1.0}, {"total": 650.0, "pnp": 1.0}]


def test_refuses_to_start_ros_processes_outside_the_local_only_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    with pytest.raises(ReplaySessionError, match="LOCALHOST"):
        run_node_on_bag(tmp_path / "c.yaml", tmp_path / "bag", [], 1, tmp_path / "logs")
    assert not (tmp_path / "logs").exists()  # nothing started


def test_node_session_refuses_outside_the_local_only_environment(tmp_path, monkeypatch):
    from pose_node.ros.replay_session import NodeSession

    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    with pytest.raises(ReplaySessionError, match="LOCALHOST"):
        with NodeSession(tmp_path / "c.yaml", tmp_path / "logs"):
            pass
    assert not (tmp_path / "logs").exists()
