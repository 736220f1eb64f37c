"""Health of the node's inputs and pipeline over a recent window (ROS-free; the node turns it into ``/diagnostics``).

:class:`HealthMonitor` is told what happens (a message arrived on a camera's stream, a bad input,
a processed or dropped set, a time jump) and reports one :class:`HealthStatus` per camera and one
for the pipeline, with the levels of ``diagnostic_msgs/DiagnosticStatus``:

- camera: ERROR when one of its streams delivered nothing for ``stale_timeout_s`` (the message
  names the silent topics: a wrong namespace or remap shows up here); WARN when a stream is late
  (nothing for ``late_s``), or the camera recently was missing from sets or sent bad input; OK
  otherwise.
- pipeline: ERROR when no camera delivers anything, or when cameras deliver but no set was
  started or finished for ``stale_timeout_s`` (counted from the first data); WARN while waiting for the first data, and when sets were
  recently dropped, partial, failed, or time jumped back; OK otherwise. Its values carry the last
  set's stage latencies, the recent mean and max total latency and the recent counters.

Counters are over the last ``window_s`` seconds (a camera that failed an hour ago is healthy
now); the lifetime totals pose_bench reads are reported by the node next to them.
Time comes from a monotonic clock (arrival time, not header stamps), so replays at any rate and
sim-time jumps do not fake or hide silence.
"""
from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from pose_node.core.errors import InvalidInputError
from pose_node.pipeline.budget import COUNT_KEYS, latency_items


class Level(IntEnum):
    """``diagnostic_msgs/DiagnosticStatus`` levels (same byte values)."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class HealthConfig:
    """Settings of :class:`HealthMonitor`.

    Attributes:
        window_s: counters, rates and latency statistics cover this many recent seconds (> 0).
        late_s: a stream that delivered nothing for this long makes its camera WARN (> 0).
        stale_timeout_s: a stream that delivered nothing for this long makes its camera ERROR,
            and a pipeline that processed nothing for this long while data arrives is ERROR
            (> ``late_s``).
        period_s: how often the node publishes ``/diagnostics`` (> 0).
    """

    window_s: float = 5.0
    late_s: float = 1.0
    stale_timeout_s: float = 3.0
    period_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("window_s", "late_s", "stale_timeout_s", "period_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidInputError(f"HealthConfig.{name}: expected a finite number > 0 s, got {value!r}")
        if self.stale_timeout_s <= self.late_s:
            raise InvalidInputError(f"HealthConfig.stale_timeout_s: expected > late_s ({self.late_s} s), "
                                    f"got {self.stale_timeout_s}")


@dataclass(frozen=True)
class HealthStatus:
    """One status: ``name`` (``camera <name>`` or ``pipeline``), level, a one-line message and key/values."""

    name: str
    level: Level
    message: str
    values: tuple[tuple[str, str], ...] = ()


class RecentEvents:
    """Counts of named events over the last ``window_s`` seconds.

    Args:
        window_s: window length, seconds.
        clock: monotonic time in seconds.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, str, float]] = deque()

    def add(self, key: str, value: float = 1.0) -> None:
        self._events.append((self._clock(), key, float(value)))

    def _prune(self) -> None:
        oldest = self._clock() - self._window_s
        while self._events and self._events[0][0] < oldest:
            self._events.popleft()

    def counts(self) -> Counter:
        """Event key -> number of events in the window."""
        self._prune()
        return Counter(key for _, key, _ in self._events)

    def values(self, key: str) -> list[float]:
        """The values of the ``key`` events in the window, oldest first."""
        self._prune()
        return [v for _, k, v in self._events if k == key]


def _join(items: Iterable[str]) -> str:
    return ", ".join(items)


class HealthMonitor:
    """Per-camera and pipeline health (module docstring).

    Args:
        topics: camera name -> stream name (``color``, ``info``, ``depth``) -> resolved topic name.
        config: thresholds and window.
        clock: monotonic time in seconds.
    """

    def __init__(self, topics: Mapping[str, Mapping[str, str]], config: HealthConfig = HealthConfig(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not topics:
            raise InvalidInputError("HealthMonitor.topics: needs at least one camera")
        self.config = config
        self._topics = {c: dict(streams) for c, streams in topics.items()}
        self._clock = clock
        self._events = RecentEvents(config.window_s, clock)
        self._started = clock()
        self._last: dict[tuple[str, str], float] = {}
        self._last_processed: float | None = None
        self._last_started: float | None = None
        self._first_data: float | None = None
        self._latency_ms: dict[str, float] = {}
        self._set_counts: dict[str, float] = {}

    # ------------------------------------------------------------------ events
    def restart(self) -> None:
        """Start the silence clocks again (activation): a stream counts as silent from now."""
        self._started = self._clock()
        self._last.clear()
        self._last_processed = self._last_started = self._first_data = None

    def message(self, camera: str, stream: str) -> None:
        """A message arrived on a camera's stream (counted before validation: silence means no traffic)."""
        self._last[(camera, stream)] = now = self._clock()
        if self._first_data is None:
            self._first_data = now
        if stream == "color":
            self._events.add(f"color.{camera}")

    def bad_input(self, kind: str, camera: str | None = None) -> None:
        """An input was dropped as invalid (``kind`` names why, e.g. ``depth_nan``)."""
        self._events.add(f"bad_input.{kind}")
        if camera is not None:
            self._events.add(f"bad_camera.{camera}")

    def set_started(self) -> None:
        """The worker took a set (processing a set is not being idle, however long it takes)."""
        self._last_started = self._clock()

    def set_processed(self, cameras: Iterable[str], latency_ms: Mapping[str, float]) -> None:
        """A set was processed with ``cameras``; ``latency_ms``: the pipeline's stage timings."""
        self._last_processed = self._clock()
        self._events.add("processed_sets")
        # Timings also carry counts (proposals cut, the time budget's level): published apart.
        self._latency_ms = latency_items(dict(latency_ms))
        self._set_counts = {k: v for k, v in latency_ms.items() if k in COUNT_KEYS}
        if "total" in latency_ms:
            self._events.add("latency_total", latency_ms["total"])

    def set_missing(self, cameras: Iterable[str]) -> None:
        """A (partial) set went ahead without ``cameras``."""
        missing = list(cameras)
        if missing:
            self._events.add("partial_sets")
        for camera in missing:
            self._events.add(f"missing.{camera}")

    def event(self, key: str) -> None:
        """Any other countable event: ``dropped_sets``, ``unusable_sets``, ``callback_errors``, ``time_jumps``."""
        self._events.add(key)

    def recent(self) -> Counter:
        """Event counts over the window."""
        return self._events.counts()

    # ------------------------------------------------------------------ report
    def silent_s(self, camera: str, stream: str) -> float:
        """Seconds since the stream's last message (or since the start when none came)."""
        return self._clock() - self._last.get((camera, stream), self._started)

    def camera_status(self, camera: str, counts: Counter | None = None) -> HealthStatus:
        counts = self.recent() if counts is None else counts
        cfg = self.config
        silent = {s: self.silent_s(camera, s) for s in self._topics[camera]}
        rate = counts[f"color.{camera}"] / cfg.window_s
        values = [(f"rate_hz.{camera}", f"{rate:.2f}"), ("window_s", f"{cfg.window_s:g}")]
        for stream, topic in self._topics[camera].items():
            values += [(f"topic.{stream}", topic), (f"silent_s.{stream}", f"{silent[stream]:.1f}")]
        values += [("missing_from_sets", str(counts[f"missing.{camera}"])),
                   ("bad_inputs", str(counts[f"bad_camera.{camera}"]))]
        dead = [s for s, t in silent.items() if t >= cfg.stale_timeout_s]
        late = [s for s, t in silent.items() if cfg.late_s <= t < cfg.stale_timeout_s]
        if dead:
            never = all((camera, s) not in self._last for s in dead)
            what = "nothing ever arrived" if never else "nothing arrived"
            level, message = Level.ERROR, (f"{what} for {max(silent[s] for s in dead):.1f} s on "
                                           f"{_join(self._topics[camera][s] for s in dead)}")
            if len(dead) < len(silent):
                message += f" (alive: {_join(self._topics[camera][s] for s in silent if s not in dead)})"
        elif late:
            level, message = Level.WARN, (f"late: nothing for {max(silent[s] for s in late):.1f} s on "
                                          f"{_join(self._topics[camera][s] for s in late)}")
        elif counts[f"missing.{camera}"] or counts[f"bad_camera.{camera}"]:
            level, message = Level.WARN, (f"partial: missing from {counts[f'missing.{camera}']} sets, "
                                          f"{counts[f'bad_camera.{camera}']} bad inputs in {cfg.window_s:g} s")
        else:
            level, message = Level.OK, f"ok, {rate:.1f} Hz"
        return HealthStatus(f"camera {camera}", level, message, tuple(values))

    def pipeline_status(self, counts: Counter | None = None,
                        camera_levels: Mapping[str, Level] | None = None) -> HealthStatus:
        counts = self.recent() if counts is None else counts
        cfg = self.config
        if camera_levels is None:
            camera_levels = {c: self.camera_status(c, counts).level for c in self._topics}
        now = self._clock()
        # Idle since the last set started or ended, or since data began to arrive (not since
        # activation: the first data may come much later, and the first set takes its time).
        marks = [t for t in (self._last_processed, self._last_started, self._first_data) if t is not None]
        idle_s = now - (max(marks) if marks else self._started)
        totals = self._events.values("latency_total")
        keys = ("processed_sets", "dropped_sets", "partial_sets", "unusable_sets", "callback_errors", "time_jumps")
        values = [(f"recent.{k}", str(counts[k])) for k in keys]
        values += [(f"recent.{k}", str(v)) for k, v in sorted(counts.items()) if k.startswith("bad_input.")]
        values += [(f"latency_ms.{k}", f"{v:.1f}") for k, v in sorted(self._latency_ms.items())]
        values += [(f"last_set.{k}", f"{v:g}") for k, v in sorted(self._set_counts.items())]
        if totals:
            values += [("recent.latency_ms.total_mean", f"{sum(totals) / len(totals):.1f}"),
                       ("recent.latency_ms.total_max", f"{max(totals):.1f}")]
        values += [("window_s", f"{cfg.window_s:g}"), ("idle_s", f"{idle_s:.1f}")]
        bad = sum(v for k, v in counts.items() if k.startswith("bad_input."))
        problems = [f"{counts[k]} {k.replace('_', ' ')}" for k in keys[1:] if counts[k]]
        if bad:
            problems.append(f"{bad} bad inputs")
        if all(level == Level.ERROR for level in camera_levels.values()):
            topics = _join(t for streams in self._topics.values() for t in streams.values())
            level, message = Level.ERROR, f"receiving nothing usable from any camera (waiting on {topics})"
        elif idle_s >= cfg.stale_timeout_s:
            level = Level.ERROR
            message = f"no set processed for {idle_s:.1f} s although data arrives"
            if problems:
                message += f" ({_join(problems)} in {cfg.window_s:g} s)"
        elif self._last_processed is None:
            level, message = Level.WARN, "waiting for the first set"
        elif problems:
            level, message = Level.WARN, f"{_join(problems)} in {cfg.window_s:g} s"
        else:
            mean = f", {sum(totals) / len(totals):.0f} ms" if totals else ""
            level, message = Level.OK, f"ok, {counts['processed_sets'] / cfg.window_s:.1f} sets/s{mean}"
        return HealthStatus("pipeline", level, message, tuple(values))

    def statuses(self) -> list[HealthStatus]:
        """One status per camera (configured order), then the pipeline's."""
        counts = self.recent()
        cameras = [self.camera_status(c, counts) for c in self._topics]
        levels = {c: s.level for c, s in zip(self._topics, cameras)}
        return cameras + [self.pipeline_status(counts, levels)]


__all__ = ["HealthConfig", "HealthMonitor", "HealthStatus", "Level", "RecentEvents"]
