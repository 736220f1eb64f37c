"""Approximate-time synchronization of several cameras' streams into multi-view sets (ROS-free).

``message_filters.ApproximateTimeSynchronizer`` synchronizes a fixed list of topics and waits
forever for the slowest one. A workcell needs more: a camera is a small group of streams (colour
image, camera_info, optional depth) that only counts when all of them are present, a set may go
ahead without a camera that is late or dead, and a set must never be emitted out of order. This
module is that synchronizer, in pure Python so it is testable without a ROS graph: it takes
``(stream_key, stamp_ns, payload)`` and a clock, and returns :class:`SyncedSet` objects.

Semantics (message_filters' ApproximateTime, simplified for cameras that share a trigger or a
frame rate):

- Messages are grouped by header stamp: a message joins the pending group whose stamps stay
  within ``slop_s`` of each other with it added (the nearest such group when several fit) and
  whose slot for its stream is free; otherwise it starts a new group. Arrival order does not
  matter. Grouping is greedy, which equals the exhaustive search as long as ``slop_s`` is below
  half the frame period (true for any sensible slop).
- A camera is *complete* in a group when every one of its streams has a message there.
- A group is *ready* when every camera is complete, or when ``timeout_s`` has passed on the clock
  since its first message arrived and at least ``min_cameras`` cameras are complete (a partial
  set of the complete cameras; the incomplete cameras' messages are discarded).
- Latest wins: when a group is emitted, every older pending group is discarded (``dropped_sets``
  counts those that had at least one complete camera), and messages that arrive later with a
  stamp at or before the emitted set's newest stamp are discarded as stale. Emitted sets are
  therefore strictly increasing in stamp.
- Each stream holds at most ``queue_size`` pending messages; beyond that its oldest one is
  discarded (a stream whose partners stopped cannot grow without bound).

Every discarded message is counted in ``dropped_messages``. The clock only drives the timeout;
stamps always come from the message headers, so replays with sim time behave as live runs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pose_node.core.errors import InvalidInputError

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SyncConfig:
    """Settings of :class:`ApproximateTimeSynchronizer`.

    Attributes:
        slop_s: the largest spread of header stamps within one set, seconds (>= 0).
        timeout_s: after this many seconds on the synchronizer's clock since a group's first
            message, the group goes ahead with the cameras that are complete (if at least
            ``min_cameras``); ``None`` waits for every camera (message_filters' behaviour).
        min_cameras: the fewest complete cameras a partial set may have (>= 1).
        queue_size: pending messages kept per stream (>= 1).
    """

    slop_s: float = 0.02
    timeout_s: float | None = 0.1
    min_cameras: int = 1
    queue_size: int = 10

    def __post_init__(self) -> None:
        if not (isinstance(self.slop_s, (int, float)) and self.slop_s >= 0):
            raise InvalidInputError(f"SyncConfig.slop_s: expected a number >= 0 s, got {self.slop_s!r}")
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise InvalidInputError(f"SyncConfig.timeout_s: expected a number > 0 s or None, got {self.timeout_s!r}")
        for name in ("min_cameras", "queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"SyncConfig.{name}: expected an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class StampedMessage:
    """One message of a set: its header stamp (nanoseconds) and what was passed to ``add``."""

    stamp_ns: int
    payload: Any


@dataclass(frozen=True)
class SyncedSet:
    """One synchronized multi-camera set.

    Attributes:
        messages: camera name -> stream name -> message, for the complete cameras only, in the
            order the cameras were configured.
        stamp_ns: earliest header stamp in the set, nanoseconds (the reference stamp of
            :class:`pose_node.core.types.MultiViewFrame`).
        max_stamp_ns: latest header stamp in the set, nanoseconds.
        missing_cameras: configured cameras not in the set (empty for a full set).
    """

    messages: Mapping[str, Mapping[str, StampedMessage]]
    stamp_ns: int
    max_stamp_ns: int
    missing_cameras: tuple[str, ...] = ()

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.messages)

    @property
    def partial(self) -> bool:
        return bool(self.missing_cameras)


@dataclass(frozen=True)
class SyncStats:
    """Counters since construction.

    Attributes:
        emitted_sets: sets returned (full and partial).
        partial_sets: of those, sets without every camera.
        dropped_sets: pending groups with at least one complete camera that were discarded
            because a newer set was emitted or their messages were evicted from the queues.
        dropped_messages: messages discarded for any reason (stale, evicted, duplicate stamp,
            incomplete camera of a partial set, member of a dropped group).
    """

    emitted_sets: int = 0
    partial_sets: int = 0
    dropped_sets: int = 0
    dropped_messages: int = 0


@dataclass
class _Group:
    """Pending messages that share (approximately) one stamp; mutable, private."""

    created_ns: int
    members: dict[tuple[str, str], StampedMessage] = field(default_factory=dict)

    def stamps(self) -> list[int]:
        return [m.stamp_ns for m in self.members.values()]

    def min_stamp(self) -> int:
        return min(self.stamps())

    def max_stamp(self) -> int:
        return max(self.stamps())


class ApproximateTimeSynchronizer:
    """Groups per-camera streams into multi-view sets (module docstring: the semantics).

    Args:
        streams: camera name -> the names of its streams, e.g.
            ``{"cam0": ("color", "info", "depth"), "cam1": ("color", "info")}``. A stream key
            passed to :meth:`add` is ``(camera, stream)``.
        config: slop, timeout, minimum cameras, queue size.
        clock: returns the current time in nanoseconds (drives ``timeout_s`` only). A ROS node
            passes its clock (``lambda: node.get_clock().now().nanoseconds``) so the timeout
            follows sim time in replays; the default is ``time.monotonic_ns``.

    Raises:
        InvalidInputError: no cameras, a camera without streams, or ``min_cameras`` larger
            than the number of cameras.
    """

    def __init__(
        self, streams: Mapping[str, Sequence[str]], config: SyncConfig = SyncConfig(),
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if not streams:
            raise InvalidInputError("ApproximateTimeSynchronizer.streams: needs at least one camera")
        self._streams: dict[str, tuple[str, ...]] = {}
        for camera, names in streams.items():
            names = tuple(names)
            if not names or len(set(names)) != len(names):
                raise InvalidInputError(
                    f"ApproximateTimeSynchronizer.streams[{camera!r}]: expected distinct stream names, got {names}")
            self._streams[str(camera)] = names
        if config.min_cameras > len(self._streams):
            raise InvalidInputError(
                f"SyncConfig.min_cameras: {config.min_cameras} is more than the {len(self._streams)} configured cameras")
        self._config = config
        self._clock = clock
        self._slop_ns = int(round(config.slop_s * NS_PER_S))
        self._timeout_ns = None if config.timeout_s is None else int(round(config.timeout_s * NS_PER_S))
        self._groups: list[_Group] = []  # kept sorted by min stamp
        self._last_emitted_ns: int | None = None
        self._emitted = self._partial = self._dropped_sets = self._dropped_messages = 0

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> SyncConfig:
        return self._config

    @property
    def stats(self) -> SyncStats:
        """A snapshot of the counters."""
        return SyncStats(self._emitted, self._partial, self._dropped_sets, self._dropped_messages)

    @property
    def pending_groups(self) -> int:
        """Groups waiting for messages (for diagnostics)."""
        return len(self._groups)

    def add(self, stream_key: tuple[str, str], stamp_ns: int, payload: Any) -> SyncedSet | None:
        """Add one message and return the set it completes (or that timed out), if any.

        Args:
            stream_key: ``(camera, stream)`` as configured.
            stamp_ns: the message's header stamp, nanoseconds (>= 0).
            payload: anything (the message itself, typically).
        Returns:
            The newest ready set, or None.
        Raises:
            InvalidInputError: unknown stream key or a stamp that is not a non-negative int.
        """
        camera, stream = self._check_key(stream_key)
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, int) or stamp_ns < 0:
            raise InvalidInputError(f"stamp_ns: expected an int >= 0 (nanoseconds), got {stamp_ns!r}")
        if self._last_emitted_ns is not None and stamp_ns <= self._last_emitted_ns:
            # Its set has been emitted (or superseded) already; emitting it now would go back in time.
            self._dropped_messages += 1
            logger.debug("stale message on %s/%s at %d ns dropped", camera, stream, stamp_ns)
            return self._process()
        self._insert((camera, stream), StampedMessage(stamp_ns, payload))
        self._enforce_queue_size((camera, stream))
        return self._process()

    def poll(self) -> SyncedSet | None:
        """Check timeouts without a new message (call from a timer at about ``timeout_s / 2``).

        Returns:
            The newest ready set, or None.
        """
        return self._process()

    def reset(self) -> None:
        """Forget every pending message and the last emitted stamp (counters are kept)."""
        for group in self._groups:
            self._dropped_messages += len(group.members)
        self._groups.clear()
        self._last_emitted_ns = None

    # ------------------------------------------------------------------ internals
    def _check_key(self, stream_key) -> tuple[str, str]:
        try:
            camera, stream = stream_key
        except (TypeError, ValueError):
            raise InvalidInputError(f"stream_key: expected (camera, stream), got {stream_key!r}") from None
        if camera not in self._streams or stream not in self._streams[camera]:
            known = [(c, s) for c, names in self._streams.items() for s in names]
            raise InvalidInputError(f"stream_key: unknown {stream_key!r}; configured: {known}")
        return camera, stream

    def _insert(self, key: tuple[str, str], message: StampedMessage) -> None:
        best, best_distance = None, None
        for group in self._groups:
            existing = group.members.get(key)
            if existing is not None and existing.stamp_ns == message.stamp_ns:
                # Same stream, same stamp: a re-sent message. Keep the newest payload.
                group.members[key] = message
                self._dropped_messages += 1
                return
            if existing is not None:
                continue
            stamps = group.stamps()
            if max(max(stamps), message.stamp_ns) - min(min(stamps), message.stamp_ns) > self._slop_ns:
                continue
            distance = abs(message.stamp_ns - sum(stamps) / len(stamps))
            if best is None or distance < best_distance:
                best, best_distance = group, distance
        if best is None:
            best = _Group(created_ns=self._clock())
            self._groups.append(best)
        best.members[key] = message
        self._groups.sort(key=_Group.min_stamp)

    def _enforce_queue_size(self, key: tuple[str, str]) -> None:
        holders = [g for g in self._groups if key in g.members]
        excess = len(holders) - self._config.queue_size
        if excess <= 0:
            return
        for group in sorted(holders, key=lambda g: g.members[key].stamp_ns)[:excess]:
            had_complete_camera = bool(self._complete_cameras(group))
            del group.members[key]
            self._dropped_messages += 1
            if not group.members:
                self._groups.remove(group)
            # A group that lost a member of a complete camera can no longer be that set.
            if had_complete_camera and not self._complete_cameras(group):
                self._dropped_sets += 1
                self._discard_group(group)

    def _discard_group(self, group: _Group) -> None:
        self._dropped_messages += len(group.members)
        group.members.clear()
        if group in self._groups:
            self._groups.remove(group)

    def _complete_cameras(self, group: _Group) -> list[str]:
        return [c for c, names in self._streams.items() if all((c, s) in group.members for s in names)]

    def _is_ready(self, group: _Group, now_ns: int) -> bool:
        complete = self._complete_cameras(group)
        if len(complete) == len(self._streams):
            return True
        timed_out = self._timeout_ns is not None and now_ns - group.created_ns >= self._timeout_ns
        return timed_out and len(complete) >= self._config.min_cameras

    def _process(self) -> SyncedSet | None:
        if not self._groups:
            return None
        now_ns = self._clock()
        ready = [g for g in self._groups if self._is_ready(g, now_ns)]
        if not ready:
            return None
        chosen = max(ready, key=_Group.max_stamp)  # latest wins
        result = self._emit(chosen)
        # Older groups can never be emitted now (sets go forward in time): drop them.
        for group in [g for g in self._groups if g.min_stamp() <= self._last_emitted_ns]:
            if self._complete_cameras(group):
                self._dropped_sets += 1
            self._discard_group(group)
        return result

    def _emit(self, group: _Group) -> SyncedSet:
        complete = self._complete_cameras(group)
        messages = {c: {s: group.members[(c, s)] for s in self._streams[c]} for c in complete}
        used = sum(len(v) for v in messages.values())
        self._dropped_messages += len(group.members) - used
        stamps = [m.stamp_ns for v in messages.values() for m in v.values()]
        missing = tuple(c for c in self._streams if c not in messages)
        self._groups.remove(group)
        group.members.clear()
        self._last_emitted_ns = max(stamps)
        self._emitted += 1
        self._partial += bool(missing)
        if missing:
            logger.debug("partial set at %d ns without %s", min(stamps), missing)
        return SyncedSet(messages=messages, stamp_ns=min(stamps), max_stamp_ns=max(stamps), missing_cameras=missing)


class BackwardStampDetector:
    """Notices header stamps that go back in time on a stream (a looping bag, a restarted simulation).

    A publisher's messages arrive in order, so any step back on one stream beyond
    ``tolerance_ns`` means its timeline restarted; the synchronizer would otherwise drop every
    later message as stale. After :meth:`reset` every stream starts afresh.

    Args:
        tolerance_ns: steps back up to this many nanoseconds are accepted (>= 0).
    """

    def __init__(self, tolerance_ns: int = 0) -> None:
        if tolerance_ns < 0:
            raise InvalidInputError(f"BackwardStampDetector.tolerance_ns: expected >= 0, got {tolerance_ns}")
        self._tolerance_ns = int(tolerance_ns)
        self._last: dict[Any, int] = {}

    def check(self, key: Any, stamp_ns: int) -> int | None:
        """Record ``stamp_ns`` for stream ``key``; return the stream's previous stamp if this one went back, else None."""
        previous = self._last.get(key)
        self._last[key] = stamp_ns
        if previous is not None and stamp_ns < previous - self._tolerance_ns:
            return previous
        return None

    def reset(self) -> None:
        self._last.clear()


__all__ = ["ApproximateTimeSynchronizer", "BackwardStampDetector", "StampedMessage", "SyncConfig", "SyncStats", "SyncedSet", "NS_PER_S"]
