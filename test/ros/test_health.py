"""HealthMonitor (ROS-free): per-camera levels from silence, partial sets and bad input; pipeline
levels; counters over a recent window only. A fake clock drives it."""
from __future__ import annotations

import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.ros.health import HealthConfig, HealthMonitor, Level

TOPICS = {"cam0": {"color": "/cam0/image", "info": "/cam0/info"}, "cam1": {"color": "/cam1/image", "info": "/cam1/info"}}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _monitor(**config):
    clock = Clock()
    return HealthMonitor(TOPICS, HealthConfig(window_s=5.0, late_s=1.0, stale_timeout_s=3.0, **config), clock), clock


def _feed(monitor, clock, cameras, seconds: float, period: float = 0.1) -> None:
    for _ in range(int(round(seconds / period))):
        clock.t += period
        for cam in cameras:
            monitor.message(cam, "color")
            monitor.message(cam, "info")
        monitor.set_processed(cameras, {"total": 50.0})
        monitor.set_missing([c for c in TOPICS if c not in cameras])


def test_nothing_received_is_an_error_naming_every_topic():
    monitor, clock = _monitor()
    statuses = {s.name: s for s in monitor.statuses()}
    assert statuses["pipeline"].level == Level.WARN and "waiting" in statuses["pipeline"].message
    assert statuses["camera cam0"].level == Level.OK
    clock.t += 3.0
    statuses = {s.name: s for s in monitor.statuses()}
    assert statuses["camera cam0"].level == Level.ERROR
    assert statuses["camera cam0"].message == "nothing ever arrived for 3.0 s on /cam0/image, /cam0/info"
    assert statuses["pipeline"].level == Level.ERROR and "/cam1/info" in statuses["pipeline"].message


def test_dead_late_and_partial_cameras():
    monitor, clock = _monitor()
    _feed(monitor, clock, ["cam0", "cam1"], 1.0)
    statuses = {s.name: s for s in monitor.statuses()}
    assert [s.level for s in statuses.values()] == [Level.OK] * 3, [s.message for s in statuses.values()]
    assert dict(statuses["camera cam0"].values)["rate_hz.cam0"] == "2.00"  # 10 messages in the 5 s window
    _feed(monitor, clock, ["cam1"], 1.5)  # cam0 stops: late first (partial sets), then dead
    statuses = {s.name: s for s in monitor.statuses()}
    assert statuses["camera cam0"].level == Level.WARN and statuses["camera cam0"].message.startswith("late")
    assert statuses["pipeline"].level == Level.WARN and "partial sets" in statuses["pipeline"].message
    _feed(monitor, clock, ["cam1"], 2.0)
    statuses = {s.name: s for s in monitor.statuses()}
    assert statuses["camera cam0"].level == Level.ERROR and statuses["camera cam0"].message.startswith(
        "nothing arrived for 3.5 s on /cam0/image, /cam0/info")
    assert statuses["camera cam1"].level == Level.OK
    assert statuses["pipeline"].level == Level.WARN  # cam1 alone still gives results

    # One stream of a camera missing: ERROR naming only it.
    _feed(monitor, clock, ["cam0", "cam1"], 1.0)
    for _ in range(40):
        clock.t += 0.1
        monitor.message("cam0", "color")
    status = monitor.camera_status("cam0")
    assert status.level == Level.ERROR and "on /cam0/info (alive: /cam0/image)" in status.message


def test_counters_cover_the_recent_window_only():
    monitor, clock = _monitor()
    _feed(monitor, clock, ["cam0", "cam1"], 0.5)
    monitor.bad_input("depth_nan", "cam0")
    monitor.event("dropped_sets")
    monitor.event("time_jumps")
    status = monitor.pipeline_status()
    values = dict(status.values)
    assert status.level == Level.WARN and values["recent.bad_input.depth_nan"] == "1" and values["recent.time_jumps"] == "1"
    assert values["recent.processed_sets"] == "5" and values["recent.latency_ms.total_mean"] == "50.0"
    assert monitor.camera_status("cam0").level == Level.WARN  # bad input from it
    _feed(monitor, clock, ["cam0", "cam1"], 5.5)  # the bad input is now older than the window
    assert [s.level for s in monitor.statuses()] == [Level.OK] * 3
    assert int(dict(monitor.pipeline_status().values)["recent.processed_sets"]) in (50, 51)  # 5 s at 10 Hz (edge: float time)


def test_set_counts_are_not_latencies():
    """The pipeline's timings carry counts (proposals cut, budget level): published as last_set.*, not latency_ms.*."""
    monitor, clock = _monitor()
    clock.t += 0.1
    monitor.set_processed(["cam0", "cam1"], {"total": 80.0, "detection": 30.0, "proposals_cut": 4.0, "budget_level": 1.0})
    values = dict(monitor.pipeline_status().values)
    assert values["latency_ms.total"] == "80.0" and values["latency_ms.detection"] == "30.0"
    assert values["last_set.proposals_cut"] == "4" and values["last_set.budget_level"] == "1"
    assert not any(k.startswith("latency_ms.") and k.split(".")[1] in ("proposals_cut", "budget_level") for k in values)


def test_no_set_processed_while_data_arrives_is_an_error():
    monitor, clock = _monitor()
    for _ in range(40):
        clock.t += 0.1
        for cam in TOPICS:
            monitor.message(cam, "color")
            monitor.message(cam, "info")
        monitor.bad_input("camera", "cam0")
    status = monitor.pipeline_status()
    # Counted from the first data (t + 0.1 s), not from the start.
    assert status.level == Level.ERROR and status.message.startswith("no set processed for 3.9 s although data arrives")
    monitor.set_started()  # a set in progress, however long it takes, is not idleness
    clock.t += 2.0
    assert monitor.pipeline_status(camera_levels={"cam0": Level.OK}).level == Level.WARN  # still waiting for the first result


@pytest.mark.parametrize("kwargs", [{"window_s": 0}, {"late_s": -1}, {"late_s": 3.0, "stale_timeout_s": 2.0},
                                    {"period_s": float("inf")}])
def test_bad_config(kwargs):
    with pytest.raises(InvalidInputError):
        HealthConfig(**kwargs)
