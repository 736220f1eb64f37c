"""Throughput under replay (ros2_benchmark style): the running node fed from a bag at a set rate.

One ``pose_node`` process serves every rate. Per rate, ``pose_replay --loop --restamp`` plays the
scenario's bag for ``duration_s``, paced so that sets go out at the rate asked for
(:func:`loop_rate_factor`; ``max``: as fast as the replay can), then the node is given time to
finish what it holds. Measured per rate:

- input sets: distinct stamps on the first camera's camera_info topic, as received by this
  process (the replay publishes a frame's messages back to back);
- outputs: ``Detection3DArray`` messages answering those stamps, and their rate (Hz) from the
  node's publish times;
- end-to-end latency: the output's DDS source timestamp (when the node published it) minus its
  header stamp. ``--restamp`` sets every image's stamp to the wall-clock time the replay
  published the frame's first message, so this is image publication -> result publication:
  transport, decoding, synchronization, waiting in the node's one-slot mailbox, the pipeline and
  publishing. ``delivered_ms`` adds the delivery of the result to this process;
- dropped sets: input sets without an output (the node keeps only the newest waiting set; the
  synchronizer drops older incomplete ones), with the node's own counters for comparison.

Every ROS process runs local-only (the caller applies the environment; the session refuses otherwise).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pose_node.benchmark.harness import BenchConfig, machine_info
from pose_node.benchmark.stats import rate_hz, summarize
from pose_node.core.errors import InvalidInputError

logger = logging.getLogger(__name__)

NODE_COUNTERS = ("processed_sets", "dropped_sets", "sync.dropped_sets", "sync.dropped_messages")
FIRST_INPUT_TIMEOUT_S = 60.0  # discovery + the replay's wait for subscribers
DIAGNOSTICS_PERIOD_S = 1.0  # the node's (pose_node.ros.node.DIAGNOSTICS_PERIOD_S)


def parse_rates(text: str) -> list[float | None]:
    """``"10,30,max"`` -> ``[10.0, 30.0, None]`` (None: as fast as possible).

    Raises:
        InvalidInputError: an entry that is neither ``max`` nor a positive number.
    """
    rates: list[float | None] = []
    for item in (t.strip() for t in text.split(",")):
        if item == "max":
            rates.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise InvalidInputError(f"rates: expected positive numbers (Hz) or 'max', got {item!r}") from None
        if not value > 0:
            raise InvalidInputError(f"rates: expected positive numbers (Hz) or 'max', got {item!r}")
        rates.append(value)
    if not rates:
        raise InvalidInputError(f"rates: expected at least one rate, got {text!r}")
    return rates


def rate_label(target_hz: float | None) -> str:
    return "max" if target_hz is None else f"{target_hz:g} Hz"


def loop_rate_factor(target_hz: float | None, frame_rate_hz: float, frames: int) -> float:
    """``pose_replay --rate`` that plays a looped bag of ``frames`` frames at ``target_hz`` sets per second.

    The bag spans ``(frames - 1) / frame_rate_hz`` seconds and a loop starts again right after its
    last frame, so one pass of ``frames`` sets takes ``(frames - 1) / frame_rate_hz / rate`` seconds.

    Args:
        target_hz: sets per second; None: as fast as possible (rate 0).
        frame_rate_hz: the bag's frame rate. frames: frames in the bag (>= 2).
    Raises:
        InvalidInputError: fewer than two frames (a one-frame loop has no timing to scale).
    """
    if frames < 2:
        raise InvalidInputError(f"loop_rate_factor: a looped bag needs >= 2 frames to be paced, got {frames}")
    if target_hz is None:
        return 0.0
    return target_hz * (frames - 1) / (frames * frame_rate_hz)


@dataclass(frozen=True)
class ThroughputConfig:
    """The replay benchmark.

    Attributes:
        bench: scenario (``bag`` is forced on), mode, device, backend, threads of the node.
        rates_hz: replay rates, frames per second; None plays as fast as possible.
        duration_s: how long each rate is replayed (the bag loops).
        settle_s: after a replay, results are awaited until none came for
            ``max(settle_s, 2 x the slowest latency seen)``.
        start_timeout_s: longest wait for the node to become active.
    """

    bench: BenchConfig = field(default_factory=BenchConfig)
    rates_hz: tuple[float | None, ...] = (10.0, 30.0, None)
    duration_s: float = 10.0
    settle_s: float = 3.0
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.rates_hz:
            raise InvalidInputError("ThroughputConfig.rates_hz: expected at least one rate")
        for name in ("duration_s", "settle_s", "start_timeout_s"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"ThroughputConfig.{name}: expected > 0 s, got {getattr(self, name)!r}")
        if self.bench.scenario.frames < 2:
            raise InvalidInputError(f"ThroughputConfig: the replayed bag needs >= 2 frames, got {self.bench.scenario.frames}")


def summarize_rate(input_stamps_ns: Sequence[int], outputs: Sequence[tuple[int, int, int]],
                   target_hz: float | None) -> dict[str, Any]:
    """One rate's figures from what was sent and what came back.

    Args:
        input_stamps_ns: stamps of the sets sent (repeats are one set), nanoseconds.
        outputs: per output ``(header stamp, source timestamp, received timestamp)``, nanoseconds;
            outputs whose stamp is not an input stamp (answers to an earlier rate) are ignored.
        target_hz: the replay rate asked for (None: max).
    Returns:
        ``rate``, ``target_hz``, ``input_sets``, ``input_rate_hz``, ``outputs``, ``output_rate_hz``,
        ``dropped_sets``, ``drop_fraction``, ``end_to_end_ms`` and ``delivered_ms`` (median/p95/max,
        None without outputs).
    """
    inputs = sorted(set(int(s) for s in input_stamps_ns))
    wanted = set(inputs)
    answered = [o for o in outputs if o[0] in wanted]
    answered_stamps = {o[0] for o in answered}
    latency = [(source - stamp) / 1e6 for stamp, source, _ in answered]
    delivered = [(received - stamp) / 1e6 for stamp, _, received in answered]
    dropped = len(inputs) - len(answered_stamps)
    return {
        "rate": rate_label(target_hz), "target_hz": target_hz,
        "input_sets": len(inputs), "input_rate_hz": rate_hz(inputs),
        "outputs": len(answered), "output_rate_hz": rate_hz(sorted(source for _, source, _ in answered)),
        "dropped_sets": dropped, "drop_fraction": dropped / len(inputs) if inputs else None,
        "end_to_end_ms": summarize(latency).to_json() if latency else None,
        "delivered_ms": summarize(delivered).to_json() if delivered else None,
    }


def _counters(diagnostics) -> dict[str, int]:
    from pose_node.ros.replay_session import diagnostic_values

    values = diagnostic_values(diagnostics)
    return {k: int(values.get(k, 0)) for k in NODE_COUNTERS}


def run_throughput(config: ThroughputConfig, scenario: Path, work_dir: Path) -> dict[str, Any]:
    """Start the node on the scenario's workcell, replay its bag at every rate, return the result JSON.

    Args:
        scenario: a scenario folder with a bag (``ScenarioConfig(bag=True)``).
        work_dir: node config and process logs go here.
    Returns:
        ``{"kind": "replay", "config", "node_start_s", "rates": [summarize_rate + node counters], "machine"}``.
    Raises:
        ReplaySessionError: the environment is not local-only, or the node or a replay failed.
    """
    from sensor_msgs.msg import CameraInfo

    from pose_node.ros.conversions import stamp_to_ns
    from pose_node.ros.replay_session import NodeSession, replay_topics, workcell_node_config, write_node_config
    from pose_node.scene.bag_writer import camera_topics
    from pose_node.scene.generator import read_scene_world

    bench = config.bench
    world = read_scene_world(scenario / "scene_world.json")
    names = [c["name"] for c in world["cameras"]]
    node_config = workcell_node_config(names, seed=bench.scenario.seed, num_objects=bench.scenario.objects,
                                       mode=bench.mode, depth_encoding=world["depth_encoding"])
    node_config["pipeline"].update(device=bench.device, backend=bench.backend)
    config_file = write_node_config(work_dir / "pose_node.yaml", node_config)
    topics = replay_topics(node_config)
    # The node's torch (and ONNX Runtime, which follows it) reads its thread count from here.
    os.environ["OMP_NUM_THREADS"] = str(bench.threads)
    input_stamps: list[int] = []
    rates = []
    with NodeSession(config_file, work_dir / "logs", start_timeout_s=config.start_timeout_s) as session:
        session.subscribe(CameraInfo, camera_topics(names[0])["color_info"],
                          lambda msg: input_stamps.append(stamp_to_ns(msg.header.stamp)), 100)
        logger.info("pose_node active after %.1f s", session.run.start_s)
        slowest_ms = 0.0
        for target_hz in config.rates_hz:
            factor = loop_rate_factor(target_hz, bench.scenario.frame_rate_hz, bench.scenario.frames)
            first_input, first_output = len(input_stamps), len(session.run.detections)
            before = _counters(session.run.diagnostics)
            first_diagnostics = len(session.run.diagnostics)
            replay = session.start_replay(scenario / "bag", topics, rate=factor, extra_args=("--loop", "--restamp"))
            session.spin_until(lambda: len(input_stamps) > first_input, FIRST_INPUT_TIMEOUT_S,
                               f"first replayed set at {rate_label(target_hz)}")
            session.spin_for(config.duration_s)
            session.stop_replay(replay)
            session.wait_idle(max(config.settle_s, 2e-3 * slowest_ms), timeout_s=max(60.0, 10e-3 * slowest_ms))
            seen = len(session.run.diagnostics)  # counters as of after the last output
            session.spin_until(lambda: len(session.run.diagnostics) > seen, 5 * DIAGNOSTICS_PERIOD_S, "node diagnostics")
            after = _counters(session.run.diagnostics)
            outputs = [(stamp_to_ns(msg.header.stamp), source, received) for msg, (source, received)
                       in zip(session.run.detections[first_output:], session.run.detection_times_ns[first_output:])]
            summary = summarize_rate(input_stamps[first_input:], outputs, target_hz)
            summary["replay_rate_factor"] = factor
            summary["node_counters"] = {k: after[k] - before[k] for k in NODE_COUNTERS}
            summary["node_reported_total_ms"] = _node_reported_total(session.run.diagnostics[first_diagnostics:])
            if summary["end_to_end_ms"]:
                slowest_ms = max(slowest_ms, summary["end_to_end_ms"]["max"])
            logger.info("%s: %d sets in, %d out (%.2f Hz), %d dropped", summary["rate"], summary["input_sets"],
                        summary["outputs"], summary["output_rate_hz"] or 0.0, summary["dropped_sets"])
            rates.append(summary)
        start_s = session.run.start_s
    node_settings = {k: v for k, v in bench.to_json().items() if k not in ("repeats", "warmup", "ros_messages")}
    return {"kind": "replay", "config": {**node_settings, "rates": [rate_label(r) for r in config.rates_hz],
                                         "duration_s": config.duration_s, "settle_s": config.settle_s},
            "scenario_dir": str(scenario), "node_start_s": start_s, "rates": rates,
            "machine": machine_info(bench.device)}


def _node_reported_total(diagnostics) -> dict[str, Any] | None:
    """The node's own ``latency_ms.total`` (pipeline only) over the sets its diagnostics reported."""
    from pose_node.ros.replay_session import set_latencies_ms

    totals = [s["total"] for s in set_latencies_ms(diagnostics) if "total" in s]
    return summarize(totals).to_json() if totals else None


__all__ = ["ThroughputConfig", "loop_rate_factor", "parse_rates", "rate_label", "run_throughput", "summarize_rate"]
