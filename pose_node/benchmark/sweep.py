"""Scaling sweeps: one axis at a time (cameras, then objects) with the rest of the configuration fixed.

Every point runs in a fresh ``pose_bench`` process by default (:func:`subprocess_runner`), so each
point's peak memory is its own and one point's caches do not speed up the next. A point that fails
(e.g. more objects than the table holds) is recorded with its ``error`` and the sweep goes on.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pose_node.benchmark.harness import BenchConfig
from pose_node.core.errors import InvalidInputError, PoseNodeError

logger = logging.getLogger(__name__)


class BenchPointError(PoseNodeError):
    """A sweep point's ``pose_bench`` process failed (the message has the end of its output)."""


PointRunner = Callable[[BenchConfig], dict[str, Any]]
SWEEP_AXES = ("cameras", "objects")


def parse_int_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (positive, distinct).

    Raises:
        InvalidInputError: not a comma-separated list of positive integers.
    """
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidInputError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise InvalidInputError(f"expected distinct positive integers, got {text!r}")
    return values


def sweep_configs(base: BenchConfig, axes: dict[str, Sequence[int]]) -> dict[str, list[BenchConfig]]:
    """Per axis, the configurations of its points (``base`` with that axis changed)."""
    out = {}
    for axis, values in axes.items():
        if axis not in SWEEP_AXES:
            raise InvalidInputError(f"sweep axis: expected one of {SWEEP_AXES}, got {axis!r}")
        out[axis] = [replace(base, scenario=replace(base.scenario, **{axis: int(v)})) for v in values]
    return out


def run_sweep(base: BenchConfig, axes: dict[str, Sequence[int]], run_point: PointRunner) -> dict[str, Any]:
    """Run every point once (a point shared by both axes, e.g. the base configuration, runs once).

    Returns:
        ``{"kind": "sweep", "config": base, "sweeps": {axis: [point results]}}``; a failed point is
        ``{"config": ..., "error": "..."}``.
    """
    done: dict[tuple[int, int], dict[str, Any]] = {}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for axis, configs in sweep_configs(base, axes).items():
        sweeps[axis] = []
        for config in configs:
            key = (config.scenario.cameras, config.scenario.objects)
            if key not in done:
                logger.info("sweep point: %d cameras, %d objects", *key)
                try:
                    done[key] = run_point(config)
                except Exception as exc:  # noqa: BLE001 - one failed point must not lose the others; recorded
                    logger.error("sweep point %s failed: %s", key, exc)
                    done[key] = {"config": config.to_json(), "error": f"{type(exc).__name__}: {exc}"}
            sweeps[axis].append(done[key])
    return {"kind": "sweep", "config": base.to_json(), "sweeps": sweeps}


def bench_arguments(config: BenchConfig) -> list[str]:
    """``pose_bench`` arguments of a single run of ``config``."""
    s = config.scenario
    args = ["--cameras", str(s.cameras), "--objects", str(s.objects), "--resolution", s.resolution, "--mode", config.mode,
            "--device", config.device, "--backend", config.backend, "--repeats", str(config.repeats),
            "--warmup", str(config.warmup), "--threads", str(config.threads), "--frames", str(s.frames),
            "--seed", str(s.seed), "--depth-encoding", config.depth_encoding]
    if not config.ros_messages:
        args.append("--no-ros-messages")
    if config.onboarding_cache:
        args += ["--onboarding-cache", config.onboarding_cache]
    return args


def subprocess_runner(scenario_root: Path, timeout_s: float | None = None) -> PointRunner:
    """Runs a point as ``python -m pose_node.benchmark.cli ... --out <tmp>.json`` and reads its JSON."""

    def run(config: BenchConfig) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="pose_bench_point_") as tmp:
            out = Path(tmp) / "point.json"
            command = [sys.executable, "-m", "pose_node.benchmark.cli", *bench_arguments(config),
                       "--out-dir", str(scenario_root), "--out", str(out)]
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
            if done.returncode != 0:
                raise BenchPointError(f"pose_bench exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
            return json.loads(out.read_text())

    return run


__all__ = ["BenchPointError", "PointRunner", "SWEEP_AXES", "bench_arguments", "parse_int_list", "run_sweep", "subprocess_runner",
           "sweep_configs"]
