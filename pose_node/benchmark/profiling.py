"""Where the time goes: cProfile of one stage's code over a few frames of a built runner.

The profiler is switched on only inside the stage's entry points (:func:`stage_entry_points`),
which are wrapped on the instances for the duration of the profile and restored afterwards, so
the report holds that stage's functions and nothing else. A stage without an entry point of its
own (one the pipeline adds later, e.g. ``refinement``) is profiled through ``PosePipeline.estimate``
as a whole, and the report says so.

Profiling slows Python code down (every call is recorded), so it runs after the timed frames and
its times are for ranking functions, not latency figures.
"""
from __future__ import annotations

import cProfile
import functools
import io
import pstats
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pose_node.benchmark.harness import FrameRunner
from pose_node.core.errors import InvalidInputError

TOP_FUNCTIONS = 15  # in the JSON summary; the text report has twice as many per sort order
_MISSING = object()


@dataclass(frozen=True)
class EntryPoint:
    """A method (or callable attribute) to profile: ``getattr(owner, attribute)``, labelled for the report."""

    owner: Any
    attribute: str
    label: str


def stage_entry_points(runner: FrameRunner, stage: str) -> tuple[list[EntryPoint], bool]:
    """The calls that make up ``stage`` (a stage group of :data:`pose_node.benchmark.stats.STAGE_GROUPS`).

    Returns:
        The entry points, and whether they are the stage's own (False: the whole pipeline call
        stands in for a stage without one).
    """
    pipeline = runner.pipeline
    if stage == "sync":
        return [EntryPoint(runner.input, "decode", "FrameInput.decode"), EntryPoint(runner.input, "views", "FrameInput.views"),
                EntryPoint(runner.sync, "add", "ApproximateTimeSynchronizer.add")], True
    if stage == "detection" and hasattr(pipeline, "detector"):
        return [EntryPoint(pipeline.detector, "detect", "Detector.detect")], True
    if stage == "correspondence_pnp" and hasattr(pipeline, "estimator"):
        return [EntryPoint(pipeline.estimator, "estimate_view", "CorrespondenceEstimator.estimate_view")], True
    if stage == "publishing" and runner.publisher is not None:
        return [EntryPoint(runner, "publisher", "OutputPublisher.__call__")], True
    return [EntryPoint(pipeline, "estimate", "PosePipeline.estimate")], False


def _wrapped(profiler: cProfile.Profile, function: Callable) -> Callable:
    @functools.wraps(function)
    def call(*args, **kwargs):
        profiler.enable()
        try:
            return function(*args, **kwargs)
        finally:
            profiler.disable()

    return call


def _function_label(key: tuple[str, int, str]) -> str:
    file, line, name = key
    if file == "~":  # built-ins
        return name
    parts = Path(file).parts
    short = "/".join(parts[parts.index("pose_node"):]) if "pose_node" in parts else "/".join(parts[-2:])
    return f"{short}:{line}({name})"


def top_functions(stats: pstats.Stats, frames: int, count: int = TOP_FUNCTIONS) -> list[dict[str, Any]]:
    """The ``count`` functions with the most own time, per frame (milliseconds).

    Returns:
        Dicts with ``function`` (``path:line(name)``), ``calls_per_frame``, ``own_ms_per_frame``
        (time in the function itself) and ``cumulative_ms_per_frame`` (with what it calls).
    """
    rows = []
    for key, (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": _function_label(key), "calls_per_frame": ncalls / frames,
                     "own_ms_per_frame": 1e3 * tottime / frames, "cumulative_ms_per_frame": 1e3 * cumtime / frames})
    rows.sort(key=lambda r: r["own_ms_per_frame"], reverse=True)
    return rows[:count]


def profile_stage(runner: FrameRunner, stage: str, frames: int, report_path: Path,
                  frame_indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Profile ``stage`` over ``frames`` frames and write a text report.

    Args:
        runner: a built, warmed-up runner.
        stage: the stage group to profile.
        frames: frames to run (>= 1).
        report_path: text file: the top functions by own time and by cumulative time.
        frame_indices: which scenario frames to run, cycled (default: 0, 1, ...).
    Returns:
        The JSON summary: ``stage``, ``entry_points``, ``own_entry_points`` (False: the whole
        pipeline stood in), ``frames``, ``profiled_ms_per_frame`` (inside the entry points, with
        the profiler's overhead), ``top_functions`` (see :func:`top_functions`) and ``report``.
    """
    entry_points, own = stage_entry_points(runner, stage)
    profiler = cProfile.Profile()
    saved = []
    for point in entry_points:
        saved.append(point.owner.__dict__.get(point.attribute, _MISSING))
        setattr(point.owner, point.attribute, _wrapped(profiler, getattr(point.owner, point.attribute)))
    try:
        indices = list(frame_indices) if frame_indices else [0]
        for i in range(frames):
            runner.run(indices[i % len(indices)])
    finally:
        for point, previous in zip(entry_points, saved):
            if previous is _MISSING:
                delattr(point.owner, point.attribute)  # the class's method shows through again
            else:
                setattr(point.owner, point.attribute, previous)
    stats = pstats.Stats(profiler)
    text = io.StringIO()
    header = (f"stage {stage}: {frames} frames, profiled inside {', '.join(p.label for p in entry_points)}"
              f"{'' if own else ' (this stage has no entry point of its own: the whole pipeline call)'}\n")
    text.write(header)
    for order in ("tottime", "cumulative"):
        text.write(f"\n=== sorted by {order} ===\n")
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(2 * TOP_FUNCTIONS)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text.getvalue())
    return {
        "stage": stage, "entry_points": [p.label for p in entry_points], "own_entry_points": own, "frames": frames,
        "profiled_ms_per_frame": 1e3 * stats.total_tt / frames,  # type: ignore[attr-defined]
        "top_functions": top_functions(stats, frames), "report": str(report_path),
    }


def slowest_stage(stages_ms: dict[str, float | None]) -> str:
    """The stage with the largest median (stages that were not measured are skipped)."""
    measured = {k: v for k, v in stages_ms.items() if v is not None}
    if not measured:
        raise InvalidInputError("slowest_stage: no stage was measured")
    return max(measured, key=measured.__getitem__)


__all__ = ["EntryPoint", "profile_stage", "slowest_stage", "stage_entry_points", "top_functions"]
