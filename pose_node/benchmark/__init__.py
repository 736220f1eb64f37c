"""Benchmarks (tooling): ``pose_bench`` (latency, throughput, memory and scaling of the pipeline) and the
per-stage CLIs (:mod:`~pose_node.benchmark.detection`, :mod:`~pose_node.benchmark.correspondence`,
:mod:`~pose_node.benchmark.refinement`, :mod:`~pose_node.benchmark.render`).

The core (scenarios, statistics, the in-process runner, sweeps, profiling, plots) needs no ROS
graph; :mod:`pose_node.benchmark.ros_messages` (message decoding and publishing costs) needs the ROS
message packages and :mod:`pose_node.benchmark.throughput` a ROS installation to run the node.
"""
from pose_node.benchmark.dataset import DatasetSource
from pose_node.benchmark.harness import BenchConfig, BenchRun, FrameRunner, FrameTiming, run_benchmark, run_dataset_benchmark
from pose_node.benchmark.scenario import RESOLUTIONS, ScenarioConfig, ensure_scenario
from pose_node.benchmark.stats import STAGE_GROUPS, LatencyStats, group_timings, stage_table, summarize

__all__ = ["BenchConfig", "BenchRun", "DatasetSource", "FrameRunner", "FrameTiming", "LatencyStats", "RESOLUTIONS", "STAGE_GROUPS",
           "ScenarioConfig", "ensure_scenario", "group_timings", "run_benchmark", "run_dataset_benchmark", "stage_table", "summarize"]
