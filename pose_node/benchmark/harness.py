"""The in-process benchmark: one configuration, end-to-end and per-stage latency, peak memory.

Per frame, the wall clock (``time.perf_counter``) runs from the first decoded message to the last
serialized output, which is what the node spends on a synchronized set once its messages have
arrived:

    decode (ROS messages -> arrays, as the node's callbacks) + sync (ApproximateTimeSynchronizer.add
    for every message) -> views -> PosePipeline.estimate (its own per-step timings) -> publishing
    (the node's output messages built and serialized to CDR)

On CUDA the clock stops after ``torch.cuda.synchronize``; the pipeline's per-step timings are
host-side (a step that only launches kernels may look cheap and the next one expensive).

The first frame after the pipeline is built is reported on its own (``first_frame_ms``); after
``warmup`` frames in all, ``repeats`` frames are timed, cycling through the scenario's frames with
increasing stamps (the pipeline tracks instances across them, as on a live stream).
:func:`run_dataset_benchmark` times the frames of a BOP dataset instead, each once, through the
same runner (the cameras' poses then come from a ``/tf`` message per frame, looked up as the node
looks up cameras without static extrinsics).
"""
from __future__ import annotations

import logging
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pose_node.benchmark.dataset import DatasetSource
from pose_node.benchmark.inputs import ArrayInput, FrameInput
from pose_node.benchmark.scenario import ScenarioConfig, load_frames
from pose_node.benchmark.stats import group_timings, stage_table, summarize
from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.types import PoseEstimate
from pose_node.pipeline.config import BACKENDS, DEVICE_PATTERN, MODES
from pose_node.ros.node_config import DEPTH_ENCODINGS
from pose_node.ros.sync import ApproximateTimeSynchronizer, SyncConfig, SyncedSet

logger = logging.getLogger(__name__)

FIRST_STAMP_NS = 1_700_000_000_000_000_000
# The node's synchronizer settings for a workcell (replay_session.workcell_node_config).
SYNC_SLOP_S = 0.02
SYNC_TIMEOUT_S = 0.5
MIB = 2**20

Publisher = Callable[[int, Sequence[PoseEstimate]], None]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration.

    Attributes:
        scenario: cameras, objects, resolution, frames, seed.
        mode: ``rgbd`` or ``rgb``.
        device: ``cpu`` or ``cuda[:N]``.
        backend: correspondence backend (``auto`` picks the fastest available).
        repeats: timed frames.
        warmup: frames run before timing (>= 1; the first one is ``first_frame_ms``).
        threads: torch, ONNX Runtime (follows torch) and OpenCV threads.
        ros_messages: decode from and publish to ROS messages (needs the message packages);
            False feeds arrays and measures neither ``decode`` nor ``publishing``.
        onboarding_cache: onboarding cache directory (None: the default cache).
        depth_encoding: encoding of the depth messages, ``32FC1`` (metres) or ``16UC1`` (millimetres).
        dataset: time the frames of this BOP dataset instead of the generated ``scenario``
            (:func:`run_dataset_benchmark`; ``repeats`` does not apply: every frame is timed once).
    """

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    mode: str = "rgbd"
    device: str = "cpu"
    backend: str = "auto"
    repeats: int = 20
    warmup: int = 2
    threads: int = 1
    ros_messages: bool = True
    onboarding_cache: str | None = None
    depth_encoding: str = "32FC1"  # what pose_scene bags carry by default
    dataset: DatasetSource | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"BenchConfig.mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise InvalidInputError(f"BenchConfig.device: expected cpu or cuda[:N], got {self.device!r}")
        if self.backend not in BACKENDS:
            raise InvalidInputError(f"BenchConfig.backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name, low in (("repeats", 1), ("warmup", 1), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"BenchConfig.{name}: expected an integer >= {low}, got {value!r}")
        if self.depth_encoding not in DEPTH_ENCODINGS:
            raise InvalidInputError(f"BenchConfig.depth_encoding: expected one of {', '.join(DEPTH_ENCODINGS)}, "
                                    f"got {self.depth_encoding!r}")
        if self.dataset is not None and not isinstance(self.dataset, DatasetSource):
            raise InvalidInputError(f"BenchConfig.dataset: expected a DatasetSource or None, got {type(self.dataset).__name__}")

    def to_json(self) -> dict:
        """Flat configuration record: the scenario's fields (or, for a dataset, the dataset's) first."""
        out = asdict(self.scenario) if self.dataset is None else self.dataset.to_json()
        out.update({k: v for k, v in asdict(self).items() if k not in ("scenario", "dataset")})
        if self.dataset is not None:
            del out["repeats"]  # every frame is timed once
        return out


@dataclass(frozen=True)
class FrameTiming:
    """One frame.

    Attributes:
        end_to_end_ms: wall clock of the whole frame, milliseconds.
        timings_ms: ``decode``, ``sync``, the pipeline's keys (``total`` included) and
            ``publishing``, milliseconds.
        n_estimates: estimates the pipeline returned.
    """

    end_to_end_ms: float
    timings_ms: dict[str, float]
    n_estimates: int


def check_device(device: str) -> None:
    """Raise unless ``device`` can run here.

    Raises:
        StageUnavailableError: CUDA requested but not available (names the torch build).
    """
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StageUnavailableError(f"device {device}: CUDA is not available (torch {torch.__version__}, "
                                        f"built for CUDA {torch.version.cuda})")
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise StageUnavailableError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s)")


def set_threads(threads: int) -> None:
    """Torch (and so ONNX Runtime, which follows it) and OpenCV on ``threads`` threads."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (``getrusage``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, load, library versions, GPU."""
    import cv2
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0], "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(), "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
        "gpu_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


class FrameRunner:
    """Runs frames through decode, sync, the pipeline and publishing (module docstring).

    Args:
        pipeline: a built :class:`~pose_node.pipeline.PosePipeline` (or anything with its ``estimate``).
        frame_input: the frames' messages (:class:`~pose_node.benchmark.inputs.FrameInput`).
        publisher: builds and serializes the outputs; None skips publishing.
        device: the pipeline's device (CUDA is synchronized before the clock stops).
        frame_period_ns: stamp step between consecutive frames, nanoseconds.
    """

    def __init__(self, pipeline, frame_input: FrameInput, publisher: Publisher | None, device: str = "cpu",
                 frame_period_ns: int = 100_000_000) -> None:
        self.pipeline = pipeline
        self.input = frame_input
        self.publisher = publisher
        self.device = device
        cameras = len(frame_input.streams)
        self.sync = ApproximateTimeSynchronizer(
            frame_input.streams, SyncConfig(slop_s=SYNC_SLOP_S, timeout_s=SYNC_TIMEOUT_S, min_cameras=cameras))
        self._period_ns = int(frame_period_ns)
        self._next_stamp_ns = FIRST_STAMP_NS

    def _synchronize_device(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(torch.device(self.device))

    def run(self, frame: int) -> FrameTiming:
        """Time frame ``frame`` of the input once.

        Raises:
            InvalidInputError: the synchronizer emitted no complete set for the frame's messages.
        """
        stamp_ns = self._next_stamp_ns
        self._next_stamp_ns += self._period_ns
        messages = self.input.messages(frame, stamp_ns)
        decode_s = sync_s = 0.0
        synced: SyncedSet | None = None
        started = time.perf_counter()
        for key, msg_stamp_ns, message in messages:
            t0 = time.perf_counter()
            payload = self.input.decode(key, message)
            t1 = time.perf_counter()
            decode_s += t1 - t0
            if key[0] not in self.input.streams:
                continue  # e.g. /tf: the node's TF listener takes it, not the synchronizer
            synced = self.sync.add(key, msg_stamp_ns, payload) or synced
            sync_s += time.perf_counter() - t1
        if synced is None or synced.partial:
            raise InvalidInputError(f"FrameRunner: frame {frame} gave no complete synchronized set")
        t0 = time.perf_counter()
        views = self.input.views(synced)
        decode_s += time.perf_counter() - t0
        estimates, pipeline_ms = self.pipeline.estimate(views)
        timings = {"decode": decode_s * 1e3, "sync": sync_s * 1e3, **pipeline_ms}
        if self.publisher is not None:
            t0 = time.perf_counter()
            self.publisher(synced.stamp_ns, estimates)
            timings["publishing"] = (time.perf_counter() - t0) * 1e3
        self._synchronize_device()
        end_to_end_ms = (time.perf_counter() - started) * 1e3
        return FrameTiming(end_to_end_ms=end_to_end_ms, timings_ms=timings, n_estimates=len(estimates))


def build_pipeline(config: BenchConfig, models: Sequence, mode: str | None = None):
    """The node's pipeline for ``models`` (onboarding from the cache), built as the node builds it.

    Args:
        mode: ``rgb`` / ``rgbd``; default ``config.mode``.
    Returns:
        The :class:`~pose_node.pipeline.PosePipeline` and its build time, seconds.
    Raises:
        StageUnavailableError: weights missing, no renderer to onboard with.
    """
    from pose_node.pipeline import PipelineConfig, PipelineOptions, PosePipeline

    started = time.perf_counter()
    pipeline = PosePipeline(models, PipelineConfig(mode=mode or config.mode, device=config.device, backend=config.backend),
                            options=PipelineOptions(cache_dir=config.onboarding_cache))
    return pipeline, time.perf_counter() - started


def build_publisher(config: BenchConfig, models: Sequence) -> Publisher | None:
    """The node's output building and serialization (None without ROS messages)."""
    if not config.ros_messages:
        return None
    from pose_node.benchmark.ros_messages import OutputPublisher

    publisher = OutputPublisher(models)
    publisher.warm_up()
    return publisher


def _reset_gpu_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def _backend_name(pipeline) -> str | None:
    return getattr(getattr(pipeline.estimator, "backend", None), "name", None)


def build_runner(config: BenchConfig, directory: Path) -> tuple[FrameRunner, dict[str, Any]]:
    """Load the scenario's frames, build the pipeline and the runner.

    Returns:
        The runner and build facts (``build_s``, ``backend``, ``input_frames_mb``).
    Raises:
        StageUnavailableError: CUDA requested but absent, weights missing, no renderer to onboard with.
    """
    from pose_node.onboarding.procedural import make_procedural_objects

    check_device(config.device)
    set_threads(config.threads)
    frames = load_frames(directory, config.scenario, with_depth=config.mode == "rgbd")
    # The workcell's objects: pose_scene makes them with make_procedural_objects(count, seed), as a
    # node config's {procedural: {seed, count}} does.
    models = make_procedural_objects(config.scenario.objects, config.scenario.seed)
    publisher = build_publisher(config, models)
    if config.ros_messages:
        from pose_node.benchmark.ros_messages import RosMessageInput

        frame_input: FrameInput = RosMessageInput(frames, config.depth_encoding)
    else:
        frame_input = ArrayInput(frames)
    del frames  # ROS messages hold their own encoded copy; the arrays are not needed twice
    _reset_gpu_peak(config.device)
    pipeline, build_s = build_pipeline(config, models)
    period_ns = int(round(1e9 / config.scenario.frame_rate_hz))
    runner = FrameRunner(pipeline, frame_input, publisher, config.device, period_ns)
    return runner, {"build_s": build_s, "backend": _backend_name(pipeline), "input_frames_mb": frame_input.size_mb()}


def run_frames(runner: FrameRunner, warmup: int, repeats: int, num_frames: int) -> tuple[FrameTiming, list[FrameTiming]]:
    """The first frame, then (after ``warmup - 1`` more untimed frames) ``repeats`` timed frames."""
    first = runner.run(0)
    for i in range(1, warmup):
        runner.run(i % num_frames)
    timed = [runner.run((warmup + i) % num_frames) for i in range(repeats)]
    return first, timed


def summarize_frames(first: FrameTiming, timed: Sequence[FrameTiming]) -> dict[str, Any]:
    """The latency part of the result JSON (see :func:`run_benchmark`)."""
    import numpy as np

    stages = stage_table([group_timings(f.timings_ms) for f in timed])
    keys: list[str] = []
    for f in timed:
        keys += [k for k in f.timings_ms if k not in keys]
    return {
        "end_to_end_ms": summarize([f.end_to_end_ms for f in timed]).to_json(),
        "first_frame_ms": first.end_to_end_ms,
        "stages_ms": {k: (s.median if s else None) for k, s in stages.items()},
        "stages_ms_p95": {k: (s.p95 if s else None) for k, s in stages.items()},
        "timings_ms": {k: summarize([f.timings_ms[k] for f in timed if k in f.timings_ms]).to_json() for k in keys},
        "estimates_per_frame": float(np.median([f.n_estimates for f in timed])),
        "frames": [{"end_to_end_ms": f.end_to_end_ms, **f.timings_ms} for f in timed],
    }


@dataclass
class BenchRun:
    """A finished benchmark: the result JSON and the runner (still built, for profiling).

    Attributes:
        frame_indices: the frames ``runner`` serves (None: every frame of the scenario).
    """

    result: dict[str, Any]
    runner: FrameRunner
    frame_indices: list[int] | None = None


def gpu_memory_mb(device: str) -> dict[str, float | None]:
    """``peak_gpu_mb``: torch's peak allocation on ``device`` (ONNX Runtime and TensorRT allocate
    outside torch and are not in it); ``gpu_device_used_mb``: memory in use on the whole device now
    (every allocator and process, CUDA context included). Both None on CPU."""
    if not device.startswith("cuda"):
        return {"peak_gpu_mb": None, "gpu_device_used_mb": None}
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated(torch.device(device)) / MIB,
            "gpu_device_used_mb": (total - free) / MIB}


def run_benchmark(config: BenchConfig, directory: Path) -> BenchRun:
    """Benchmark ``config`` on the scenario in ``directory`` (see :func:`~pose_node.benchmark.scenario.ensure_scenario`).

    Returns:
        The run; its result JSON has ``config``, ``end_to_end_ms`` {median, p95, max, n},
        ``first_frame_ms``, ``stages_ms`` / ``stages_ms_p95`` (per stage group, None where not
        measured), ``timings_ms`` (every raw timing key), ``frames`` (per timed frame),
        ``peak_rss_mb``, ``peak_gpu_mb`` and ``gpu_device_used_mb`` (None on CPU), ``build_s``,
        ``backend``, ``input_frames_mb`` and ``machine``.
    """
    runner, built = build_runner(config, directory)
    first, timed = run_frames(runner, config.warmup, config.repeats, config.scenario.frames)
    result: dict[str, Any] = {"kind": "single", "config": config.to_json(), "scenario_dir": str(directory)}
    result.update(summarize_frames(first, timed))
    result["peak_rss_mb"] = peak_rss_mb()
    result.update(gpu_memory_mb(config.device))
    result.update(built)
    result["machine"] = machine_info(config.device)
    return BenchRun(result=result, runner=runner)


def run_dataset_benchmark(config: BenchConfig) -> BenchRun:
    """Benchmark ``config`` on the frames of ``config.dataset`` (see :mod:`pose_node.benchmark.dataset`).

    The pipeline knows every model of the dataset's ``models/``. Frames are grouped by kind
    (cameras, with depth); each kind has its own runner (the synchronizer of such a node), the
    RGB-timed frames of an RGB-D run their own RGB pipeline. The first ``warmup`` frames run
    untimed (the first is ``first_frame_ms``), and the first frame of every kind they missed, then
    every frame is timed once, in dataset order.

    Returns:
        The run (its runner: that of frame 0's kind); the result JSON has the keys of
        :func:`run_benchmark` (``config`` with the dataset's fields instead of the scenario's;
        ``frames`` also carry ``scene_id``, ``im_ids`` and the frame's ``mode``) and ``dataset``,
        ``split``, ``targets``, ``n_frames``, ``n_views``, ``views_per_frame`` ({cameras: frames}),
        ``frames_without_depth`` (RGB-D: timed as RGB) and their ids (the first 20).
    Raises:
        BopFormatError: not a BOP dataset, or a broken targets file, image or camera entry.
        InvalidInputError: a multi-view frame without camera world poses.
        StageUnavailableError: CUDA requested but absent, weights missing, no renderer to onboard with.
    """
    from pose_node.benchmark.dataset import DatasetArrayInput, DatasetFrames

    if config.dataset is None:
        raise InvalidInputError("run_dataset_benchmark: BenchConfig.dataset is None")
    check_device(config.device)
    set_threads(config.threads)
    frames = DatasetFrames(config.dataset, config.mode)
    models = frames.dataset.models()
    publisher = build_publisher(config, models)
    _reset_gpu_peak(config.device)
    pipelines: dict[bool, Any] = {}
    build_s = 0.0
    for with_depth in sorted({depth for _, depth in frames.kinds}, reverse=True):
        pipelines[with_depth], seconds = build_pipeline(config, models, "rgbd" if with_depth else "rgb")
        build_s += seconds
    runners: dict[tuple[int, bool], FrameRunner] = {}
    for kind in dict.fromkeys(frames.kinds):
        if config.ros_messages:
            from pose_node.benchmark.ros_messages import DatasetMessageInput

            frame_input: FrameInput = DatasetMessageInput(frames, kind, config.depth_encoding)
        else:
            frame_input = DatasetArrayInput(frames, kind)
        runners[kind] = FrameRunner(pipelines[kind[1]], frame_input, publisher, config.device)

    def run(i: int) -> FrameTiming:
        return runners[frames.kinds[i]].run(i)

    first = run(0)
    warmed = {frames.kinds[0]}
    for i in range(1, config.warmup):
        run(i % len(frames))
        warmed.add(frames.kinds[i % len(frames)])
    for kind in runners.keys() - warmed:  # another pipeline or synchronizer: its first frame is a first frame too
        run(frames.indices(kind)[0])
    timed = [run(i) for i in range(len(frames))]
    result: dict[str, Any] = {"kind": "dataset", "config": config.to_json(), **frames.summary()}
    result.update(summarize_frames(first, timed))
    for i, record in enumerate(result["frames"]):
        record.update(frames.frame_ids(i))
    result["peak_rss_mb"] = peak_rss_mb()
    result.update(gpu_memory_mb(config.device))
    result.update({"build_s": build_s, "backend": _backend_name(pipelines[frames.kinds[0][1]]),
                   "input_frames_mb": max(r.input.size_mb() for r in runners.values())})
    result["machine"] = machine_info(config.device)
    return BenchRun(result=result, runner=runners[frames.kinds[0]], frame_indices=frames.indices(frames.kinds[0]))


__all__ = ["BenchConfig", "BenchRun", "FrameRunner", "FrameTiming", "build_pipeline", "build_publisher", "build_runner", "check_device",
           "gpu_memory_mb", "machine_info", "peak_rss_mb", "run_benchmark", "run_dataset_benchmark", "run_frames", "set_threads",
           "summarize_frames"]
