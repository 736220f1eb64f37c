"""Run ``pose_node`` on a ``pose_scene`` workcell bag and collect what it publishes.

Used by the demo (``pose_demo``) and the bag-replay tests:

* :func:`workcell_node_config` / :func:`write_node_config`: a node YAML config for a workcell
  (its cameras' topics, its procedural objects by seed and count, the pipeline mode).
* :func:`replay_topics`: the bag topics that config consumes (plus ``/tf_static``).
* :class:`NodeSession`: the node (subprocess, ``autostart``) and an rclpy node of this process
  collecting its ``Detection3DArray`` (with their publish and receive times) and ``/diagnostics``;
  bags are played into it with ``pose_replay`` (subprocess, ``--wait-for-subscribers``), once or
  looping; leaving it stops everything with SIGINT.
* :func:`run_node_on_bag`: one session, one replay of a bag, until the expected results arrived.
* :func:`diagnostic_values`, :func:`rotation_error_deg`: reading the results.

Subprocesses inherit this process's environment: apply
:func:`pose_node.ros.local_env.apply_local_ros_environment` before calling (the demo does).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pose_node.scene.bag_writer import camera_topics

NODE_NAME = "pose_node"
DETECTIONS_TOPIC = f"/{NODE_NAME}/detections"
DIAGNOSTICS_TOPIC = "/diagnostics"
STOP_TIMEOUT_S = 15.0


class ReplaySessionError(RuntimeError):
    """The node or the replay failed; the message carries their output."""


def workcell_node_config(camera_names: Sequence[str], *, seed: int, num_objects: int, mode: str = "rgbd",
                         depth_encoding: str = "32FC1", min_cameras: int | None = None) -> dict:
    """Node config (as loaded from YAML) for a ``pose_scene`` workcell with procedural objects.

    Args:
        camera_names: the workcell's camera names (topic namespaces of its bag).
        seed, num_objects: the workcell's ``--seed`` and ``--num-objects`` (same objects, same names).
        mode: ``rgbd`` (depth topics subscribed) or ``rgb``.
        depth_encoding: the bag's depth encoding.
        min_cameras: fewest cameras of a set (default: all of them, clean synthetic input).
    """
    cameras = {}
    for name in camera_names:
        topics = camera_topics(name)
        entry = {"color_topic": topics["color"], "camera_info_topic": topics["color_info"]}
        if mode == "rgbd":
            entry.update(depth_topic=topics["depth"], depth_encoding=depth_encoding)
        cameras[name] = entry
    return {
        "world_frame": "world", "cameras": cameras,
        "objects": [{"procedural": {"seed": int(seed), "count": int(num_objects)}}],
        "pipeline": {"mode": mode, "device": "cpu", "backend": "auto"},
        "sync": {"slop_s": 0.02, "timeout_s": 0.5, "min_cameras": int(min_cameras or len(camera_names)), "queue_size": 10},
    }


def write_node_config(path: Path, config: dict) -> Path:
    """Write ``config`` (see :func:`workcell_node_config`) as YAML; returns ``path``."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def replay_topics(config: dict) -> list[str]:
    """Topics of the bag the node config consumes, plus ``/tf_static`` (camera extrinsics)."""
    topics = ["/tf_static"]
    for camera in config["cameras"].values():
        topics += [camera["color_topic"], camera["camera_info_topic"]]
        if camera.get("depth_topic"):
            topics.append(camera["depth_topic"])
    return topics


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of ``R_a^T R_b`` in degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R_a.T @ R_b) - 1.0) / 2.0, -1.0, 1.0))))


def diagnostic_values(messages) -> dict[str, str]:
    """Key/values of every status of ``DiagnosticArray`` messages, later ones winning."""
    values: dict[str, str] = {}
    for msg in messages:
        for status in msg.status:
            values.update({kv.key: kv.value for kv in status.values})
    return values


def set_latencies_ms(diagnostics) -> list[dict[str, float]]:
    """Per processed set, the node's reported per-stage latency (ms), from ``/diagnostics``.

    The node reports the stage timings of its last processed set with the count of processed
    sets; each count seen gives one set's timings (a set processed between two diagnostics
    messages is not seen).
    """
    by_set: dict[int, dict[str, float]] = {}
    for msg in diagnostics:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            count = int(values.get("processed_sets", 0))
            latency = {k.split(".", 1)[1]: float(v) for k, v in values.items() if k.startswith("latency_ms.")}
            if count > 0 and latency:
                by_set.setdefault(count, latency)
    return [by_set[k] for k in sorted(by_set)]


class _Process:
    """A subprocess whose stdout and stderr go to a log file."""

    def __init__(self, argv: list[str], log_path: Path):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()/wait()
        env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGINT (as Ctrl-C), then wait; SIGKILL only if it ignores that (exit status -9)."""
        if self.running():
            self.popen.send_signal(signal.SIGINT)
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self._log.close()
        return code


@dataclass
class ReplayRun:
    """What :func:`run_node_on_bag` (or a :class:`NodeSession`) collected.

    Attributes:
        detections: ``vision_msgs/Detection3DArray`` messages of the node, in arrival order.
        detection_times_ns: per detection message, ``(source, received)``: the DDS source timestamp
            (when the node published it) and when this process received it, wall-clock nanoseconds.
        diagnostics: ``diagnostic_msgs/DiagnosticArray`` messages of the node.
        node_exit, replay_exit: exit statuses (0: clean).
        node_log, replay_log: their output files.
        start_s: node start until active; replay_s: replay start until the last result.
    """

    detections: list = field(default_factory=list)
    detection_times_ns: list[tuple[int, int]] = field(default_factory=list)
    diagnostics: list = field(default_factory=list)
    node_exit: int | None = None
    replay_exit: int | None = None
    node_log: Path | None = None
    replay_log: Path | None = None
    start_s: float = 0.0
    replay_s: float = 0.0


class _Collector:
    """An rclpy node in a context of its own, subscribed to the node's outputs."""

    def __init__(self, run: ReplayRun):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from vision_msgs.msg import Detection3DArray

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.node = rclpy.create_node("pose_replay_collector", context=self.context)
        self.executor.add_node(self.node)

        def on_detections(msg, info) -> None:
            run.detections.append(msg)
            run.detection_times_ns.append((int(info["source_timestamp"]), int(info["received_timestamp"])))

        self.detections = self.node.create_subscription(Detection3DArray, DETECTIONS_TOPIC, on_detections, 10)
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, run.diagnostics.append, 10)

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float, what: str,
                   processes: Sequence[_Process] = ()) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for process in processes:
                if not process.running():
                    raise ReplaySessionError(f"{what}: {' '.join(process.argv)} exited ({process.popen.returncode}):\n"
                                             f"{process.output()}")
            if time.monotonic() > deadline:
                logs = "".join(f"\n--- {' '.join(p.argv)}:\n{p.output()}" for p in processes)
                raise ReplaySessionError(f"{what} not reached within {timeout_s} s{logs}")
            self.executor.spin_once(timeout_sec=0.02)

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        self.executor.shutdown()
        self._rclpy.try_shutdown(context=self.context)


def _check_local_only(what: str) -> None:
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
        # Every process and the collector inherit this environment: refuse rather than let DDS
        # discovery leave the machine.
        raise ReplaySessionError(f"{what}: ROS_AUTOMATIC_DISCOVERY_RANGE is not LOCALHOST; call "
                                 "pose_node.ros.local_env.apply_local_ros_environment() first")


class NodeSession:
    """``pose_node`` on a config file (subprocess, ``autostart``) and a collector of its outputs.

    A context manager: entering starts the node and waits until it is active (its diagnostics
    arrive and its detections publisher is matched); leaving stops the replays still running and
    the node with SIGINT, and raises :class:`ReplaySessionError` unless the node exited 0. Bags are
    played into it with :meth:`play` (to the end) or :meth:`start_replay` (e.g. looping, stopped
    with :meth:`stop_replay`); what it publishes accumulates in :attr:`run`.

    Args:
        config_file: the node's YAML config.
        log_dir: the processes' output files.
        start_timeout_s: longest wait for the node to become active (onboarding, engines, warm-up).
    Raises:
        ReplaySessionError: (on entering) the environment is not local-only, or the node failed to start.
    """

    def __init__(self, config_file: Path, log_dir: Path, *, start_timeout_s: float = 180.0) -> None:
        self.config_file = Path(config_file)
        self.log_dir = Path(log_dir)
        self.start_timeout_s = start_timeout_s
        self.run = ReplayRun(node_log=self.log_dir / "pose_node.log", replay_log=self.log_dir / "pose_replay.log")
        self.collector: _Collector | None = None
        self._node: _Process | None = None
        self._replays: list[_Process] = []

    def __enter__(self) -> NodeSession:
        _check_local_only("NodeSession")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.collector = _Collector(self.run)
        try:
            t0 = time.monotonic()
            self._node = _Process([sys.executable, "-m", "pose_node.ros.node", "--ros-args", "-p",
                                   f"config_file:={self.config_file}", "-p", "autostart:=true"], self.run.node_log)
            self.collector.spin_until(
                lambda: bool(self.run.diagnostics) and self.collector.detections.get_publisher_count() >= 1,
                self.start_timeout_s, "pose_node active", [self._node])
            self.run.start_s = time.monotonic() - t0
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._shutdown()
        if exc_type is None and self.run.node_exit != 0:
            raise ReplaySessionError(f"pose_node exited with {self.run.node_exit} after SIGINT:\n{self._node.output()}")

    def _shutdown(self) -> None:
        for replay in self._replays:
            if replay.running():
                code = replay.stop()
                if self.run.replay_exit is None:
                    self.run.replay_exit = code
        if self._node is not None and self.run.node_exit is None:
            self.run.node_exit = self._node.stop()
        if self.collector is not None:
            self.collector.close()
            self.collector = None

    @property
    def node_output(self) -> str:
        return self._node.output() if self._node is not None else ""

    def node_running(self) -> bool:
        return self._node is not None and self._node.running()

    def subscribe(self, msg_type: type, topic: str, callback: Callable, qos: int = 10):
        """Another subscription of the collector (e.g. an input topic, to count what the node was sent)."""
        return self.collector.node.create_subscription(msg_type, topic, callback, qos)

    def start_replay(self, bag: Path, topics: Sequence[str], *, rate: float, extra_args: Sequence[str] = ()) -> _Process:
        """Start ``pose_replay`` on ``topics`` of ``bag`` (``--no-clock``, waits for the node's subscriptions).

        Args:
            rate: speed factor (0: as fast as possible).
            extra_args: more ``pose_replay`` arguments (``--loop``, ``--restamp``, ...).
        """
        log = self.run.replay_log if not self._replays else self.log_dir / f"pose_replay-{len(self._replays)}.log"
        replay = _Process([sys.executable, "-m", "pose_node.ros.replay", str(bag), "--no-clock", "--rate", str(rate),
                           "--wait-for-subscribers", "1", "--wait-timeout", "30", *extra_args, "--topics", *topics], log)
        self._replays.append(replay)
        return replay

    def stop_replay(self, replay: _Process) -> int:
        """SIGINT a replay (a looping one, typically) and wait; returns its exit status."""
        self.run.replay_exit = replay.stop()
        return self.run.replay_exit

    def play(self, bag: Path, topics: Sequence[str], *, rate: float, timeout_s: float,
             extra_args: Sequence[str] = ()) -> int:
        """Replay ``bag`` once, spinning the collector meanwhile; returns 0.

        Raises:
            ReplaySessionError: the replay did not finish within ``timeout_s``, exited non-zero, or the node died.
        """
        replay = self.start_replay(bag, topics, rate=rate, extra_args=extra_args)
        self.collector.spin_until(lambda: not replay.running(), timeout_s, "replay finished", [self._node])
        code = self.stop_replay(replay)
        if code != 0:
            raise ReplaySessionError(f"pose_replay exited with {code}:\n{replay.output()}")
        return code

    def spin_for(self, duration_s: float) -> None:
        """Collect for ``duration_s`` seconds."""
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            self.collector.executor.spin_once(timeout_sec=min(0.02, max(0.0, deadline - time.monotonic())))

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Collect until ``predicate()`` holds.

        Raises:
            ReplaySessionError: not within ``timeout_s``, or the node died.
        """
        self.collector.spin_until(predicate, timeout_s, what, [self._node])

    def wait_idle(self, idle_s: float, timeout_s: float) -> bool:
        """Collect until no detection message arrived for ``idle_s`` seconds; False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen, last_change = len(self.run.detections), time.monotonic()
        while time.monotonic() < deadline:
            self.collector.executor.spin_once(timeout_sec=0.02)
            if len(self.run.detections) != seen:
                seen, last_change = len(self.run.detections), time.monotonic()
            elif time.monotonic() - last_change >= idle_s:
                return True
        return False


def run_node_on_bag(config_file: Path, bag: Path, topics: Sequence[str], expected_results: int, log_dir: Path, *,
                    rate: float = 0.5, start_timeout_s: float = 180.0, result_timeout_s: float = 120.0) -> ReplayRun:
    """Start the node on ``config_file``, replay ``topics`` of ``bag`` into it, collect its results.

    Returns once ``expected_results`` detection arrays arrived after the replay ended (or
    ``result_timeout_s`` passed), with both processes stopped by SIGINT.

    Raises:
        ReplaySessionError: the environment is not local-only, the node did not become active, or
            a process failed.
    """
    _check_local_only("run_node_on_bag")
    with NodeSession(config_file, log_dir, start_timeout_s=start_timeout_s) as session:
        run = session.run
        t0 = time.monotonic()
        run.replay_exit = session.play(bag, topics, rate=rate, timeout_s=result_timeout_s)
        deadline = time.monotonic() + result_timeout_s
        while len(run.detections) < expected_results and time.monotonic() < deadline and session.node_running():
            session.collector.executor.spin_once(timeout_sec=0.02)
        run.replay_s = time.monotonic() - t0
        # One more diagnostics message, so the last set's latency is reported.
        seen = len(run.diagnostics)
        deadline = time.monotonic() + 3.0
        while len(run.diagnostics) == seen and time.monotonic() < deadline:
            session.collector.executor.spin_once(timeout_sec=0.02)
    return run
