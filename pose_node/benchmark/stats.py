"""Latency statistics and the one table that maps timing keys to the benchmark's stage groups.

The pipeline reports milliseconds under its own keys (``proposals``, ``matching``,
``correspondence``, ``pnp``, ``fusion`` today; ``association`` and ``refinement`` once multi-view
refinement lands), the benchmark adds ``decode``, ``sync`` and ``publishing``. The issue's stages
are groups of those keys (:data:`STAGE_GROUPS`); a key no group names is reported as itself, so a
stage added to the pipeline later shows up without a change here, and a key that is absent never
fails (its group is simply not measured).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pose_node.core.errors import InvalidInputError
from pose_node.pipeline.budget import COUNT_KEYS

#: Stage group -> the timing keys summed into it, in pipeline order. ``decode`` (ROS messages to
#: arrays, the node's subscription callbacks) belongs to the input side with ``sync``.
STAGE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sync", ("decode", "sync")),
    ("detection", ("proposals", "matching")),
    ("correspondence_pnp", ("correspondence", "pnp")),
    ("association", ("association", "fusion")),
    ("refinement", ("refinement",)),
    ("publishing", ("publishing",)),
)
#: Keys that are sums of other keys, not stages of their own.
AGGREGATE_KEYS: frozenset[str] = frozenset({"total"})
#: The percentile reported next to the median and the maximum.
PERCENTILE = 95.0


@dataclass(frozen=True)
class LatencyStats:
    """Median, 95th percentile (numpy's linear interpolation) and maximum of a sample, milliseconds.

    Attributes:
        median, p95, max: milliseconds.
        n: sample size.
    """

    median: float
    p95: float
    max: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"median": self.median, "p95": self.p95, "max": self.max, "n": self.n}


def summarize(values_ms: Sequence[float]) -> LatencyStats:
    """Median, p95 and max of ``values_ms`` (N,) milliseconds.

    Raises:
        InvalidInputError: an empty sample, or a value that is not finite.
    """
    values = np.asarray(values_ms, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise InvalidInputError("summarize: empty sample (no timed frames)")
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"summarize: non-finite latency in {values.tolist()}")
    return LatencyStats(median=float(np.median(values)), p95=float(np.percentile(values, PERCENTILE)),
                        max=float(values.max()), n=int(values.size))


def group_of(key: str) -> str:
    """The stage group of a timing key (the key itself when no group names it)."""
    for group, keys in STAGE_GROUPS:
        if key in keys:
            return group
    return key


def group_timings(timings_ms: Mapping[str, float]) -> dict[str, float]:
    """One frame's timings summed per stage group, milliseconds.

    Args:
        timings_ms: timing key -> milliseconds (``total`` and other aggregates are left out, and
            so are the counts of :data:`pose_node.pipeline.budget.COUNT_KEYS`).
    Returns:
        Group -> milliseconds, for the groups with at least one key present, in
        :data:`STAGE_GROUPS` order, then unknown keys in their given order.
    """
    grouped: dict[str, float] = {}
    for group, keys in STAGE_GROUPS:
        present = [timings_ms[k] for k in keys if k in timings_ms]
        if present:
            grouped[group] = float(sum(present))
    for key, value in timings_ms.items():
        if key in COUNT_KEYS:  # counts (proposals, budget level), not milliseconds
            continue
        if key not in AGGREGATE_KEYS and not is_part(key) and group_of(key) == key and key not in grouped:
            grouped[key] = float(value)
    return grouped


def is_part(key: str) -> bool:
    """Whether a timing key is a part of a stage's time (``refinement_align`` of ``refinement``):
    reported raw, never added as a stage of its own (it would be counted twice)."""
    return any(key.startswith(group + "_") and group in keys for group, keys in STAGE_GROUPS)


def stage_table(per_frame_ms: Sequence[Mapping[str, float]]) -> dict[str, LatencyStats | None]:
    """Per stage, the statistics over the frames that measured it.

    Args:
        per_frame_ms: one mapping stage -> milliseconds per frame (from :func:`group_timings`).
    Returns:
        Stage -> statistics; every group of :data:`STAGE_GROUPS` is present, None when no frame
        measured it (a stage the pipeline does not have yet), then any other stage seen.
    """
    names = [group for group, _ in STAGE_GROUPS]
    for frame in per_frame_ms:
        names += [k for k in frame if k not in names]
    table: dict[str, LatencyStats | None] = {}
    for name in names:
        values = [frame[name] for frame in per_frame_ms if name in frame]
        table[name] = summarize(values) if values else None
    return table


def rate_hz(times_ns: Sequence[int]) -> float | None:
    """Events per second over ``times_ns`` (N,) nanoseconds: (N - 1) / (last - first); None for
    fewer than two events or no elapsed time."""
    if len(times_ns) < 2:
        return None
    span_s = (max(times_ns) - min(times_ns)) / 1e9
    return (len(times_ns) - 1) / span_s if span_s > 0 and math.isfinite(span_s) else None


__all__ = ["AGGREGATE_KEYS", "LatencyStats", "PERCENTILE", "STAGE_GROUPS", "group_of", "group_timings", "rate_hz",
           "stage_table", "summarize"]
