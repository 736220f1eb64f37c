"""ApproximateTimeSynchronizer: synthetic stamps and a fake clock, no ROS."""
from __future__ import annotations

import random

import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.ros.sync import ApproximateTimeSynchronizer, SyncConfig

MS = 1_000_000
PERIOD_NS = 100 * MS  # 10 Hz cameras
T0 = 1_700_000_000 * 1_000_000_000
RGBD = ("color", "info", "depth")
STREAMS = {"cam0": RGBD, "cam1": RGBD, "cam2": ("color", "info")}


class FakeClock:
    """Nanoseconds, advanced by hand."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


def make(config: SyncConfig | None = None, streams=STREAMS):
    clock = FakeClock()
    return ApproximateTimeSynchronizer(streams, config or SyncConfig(slop_s=0.01, timeout_s=0.2), clock), clock


def feed_camera(sync, camera, stamp_ns, streams=STREAMS, offsets_ns=None):
    """Add every stream of one camera; returns the sets emitted along the way."""
    out = []
    for i, stream in enumerate(streams[camera]):
        stamp = stamp_ns + (offsets_ns[i] if offsets_ns else 0)
        result = sync.add((camera, stream), stamp, f"{camera}/{stream}@{stamp}")
        if result is not None:
            out.append(result)
    return out


def test_exact_stamps_give_one_full_set_per_frame():
    sync, _ = make()
    emitted = []
    for frame in range(3):
        for camera in STREAMS:
            emitted += feed_camera(sync, camera, T0 + frame * PERIOD_NS)
    assert [s.stamp_ns for s in emitted] == [T0, T0 + PERIOD_NS, T0 + 2 * PERIOD_NS]
    first = emitted[0]
    assert first.cameras == ("cam0", "cam1", "cam2") and not first.partial
    assert set(first.messages["cam0"]) == set(RGBD) and set(first.messages["cam2"]) == {"color", "info"}
    assert first.messages["cam1"]["depth"].payload == f"cam1/depth@{T0}"
    assert sync.stats.emitted_sets == 3 and sync.stats.dropped_sets == 0 and sync.stats.dropped_messages == 0
    assert sync.pending_groups == 0


def test_jitter_within_slop_is_one_set_and_beyond_slop_is_not():
    sync, _ = make(SyncConfig(slop_s=0.01, timeout_s=None))
    rng = random.Random(0)
    emitted = []
    for frame in range(5):
        for camera in STREAMS:
            base = T0 + frame * PERIOD_NS + rng.randint(-4 * MS, 4 * MS)
            offsets = [rng.randint(0, 1 * MS) for _ in STREAMS[camera]]
            emitted += feed_camera(sync, camera, base, offsets_ns=offsets)
    assert len(emitted) == 5 and not any(s.partial for s in emitted)
    for s in emitted:
        assert s.max_stamp_ns - s.stamp_ns <= 10 * MS

    # cam2 15 ms off: the spread would exceed the slop, so no full set (and no timeout).
    sync, _ = make(SyncConfig(slop_s=0.01, timeout_s=None))
    assert feed_camera(sync, "cam0", T0) == [] and feed_camera(sync, "cam1", T0 + 5 * MS) == []
    assert feed_camera(sync, "cam2", T0 + 15 * MS) == []
    assert sync.pending_groups == 2


def test_late_camera_beyond_timeout_gives_partial_set_then_stale_drop():
    sync, clock = make(SyncConfig(slop_s=0.01, timeout_s=0.2, min_cameras=2))
    assert feed_camera(sync, "cam0", T0) == []
    clock.advance(0.05)
    assert feed_camera(sync, "cam1", T0 + 2 * MS) == []
    clock.advance(0.1)
    assert sync.poll() is None  # 0.15 s since the first message: still waiting for cam2
    clock.advance(0.06)
    result = sync.poll()
    assert result is not None and result.partial
    assert result.cameras == ("cam0", "cam1") and result.missing_cameras == ("cam2",)
    assert result.stamp_ns == T0 and result.max_stamp_ns == T0 + 2 * MS
    # cam2 of that frame arrives after the set went ahead: stale, never a set of its own.
    assert feed_camera(sync, "cam2", T0 + 1 * MS) == []
    assert sync.pending_groups == 0
    assert sync.stats.partial_sets == 1 and sync.stats.dropped_messages == 2


def test_partial_set_needs_min_cameras():
    sync, clock = make(SyncConfig(slop_s=0.01, timeout_s=0.1, min_cameras=2))
    feed_camera(sync, "cam0", T0)
    clock.advance(1.0)
    assert sync.poll() is None  # timed out but only one camera complete
    assert feed_camera(sync, "cam2", T0 + 3 * MS)[0].cameras == ("cam0", "cam2")  # second camera: goes at once


def test_incomplete_camera_does_not_count_and_its_messages_are_dropped():
    sync, clock = make(SyncConfig(slop_s=0.01, timeout_s=0.1, min_cameras=1))
    feed_camera(sync, "cam0", T0)
    sync.add(("cam1", "color"), T0, "cam1 colour without info or depth")
    clock.advance(0.2)
    result = sync.poll()
    assert result.cameras == ("cam0",) and result.missing_cameras == ("cam1", "cam2")
    assert sync.stats.dropped_messages == 1


def test_out_of_order_arrival():
    sync, _ = make(SyncConfig(slop_s=0.01, timeout_s=None))
    keys = [(c, s) for c, names in STREAMS.items() for s in names]
    messages = [(k, T0 + f * PERIOD_NS + (j % 3) * MS) for f in range(2) for j, k in enumerate(keys)]
    # Frame 0 and frame 1 interleaved and shuffled, except that frame 0's last message comes
    # before frame 1's last one (otherwise frame 1 completes first and frame 0 is dropped).
    random.Random(3).shuffle(messages)
    last0 = max(i for i, (_, s) in enumerate(messages) if s < T0 + PERIOD_NS // 2)
    last1 = max(i for i, (_, s) in enumerate(messages) if s > T0 + PERIOD_NS // 2)
    if last0 > last1:
        messages[last0], messages[last1] = messages[last1], messages[last0]
    emitted = [r for k, s in messages if (r := sync.add(k, s, None)) is not None]
    assert [r.stamp_ns // PERIOD_NS for r in emitted] == [T0 // PERIOD_NS, T0 // PERIOD_NS + 1]
    assert not any(r.partial for r in emitted)


def test_latest_wins_drops_older_pending_sets():
    sync, _ = make(SyncConfig(slop_s=0.01, timeout_s=None))
    # Frames 0 and 1 lose cam1's depth; frame 2 arrives complete.
    for frame in range(3):
        for camera in STREAMS:
            for stream in STREAMS[camera]:
                if frame < 2 and (camera, stream) == ("cam1", "depth"):
                    continue
                result = sync.add((camera, stream), T0 + frame * PERIOD_NS, None)
    assert result is not None and result.stamp_ns == T0 + 2 * PERIOD_NS and not result.partial
    stats = sync.stats
    assert stats.emitted_sets == 1 and stats.dropped_sets == 2
    assert stats.dropped_messages == 2 * 7  # 8 messages per frame, one of them missing
    assert sync.pending_groups == 0
    # The lost depth of frame 0 shows up late: stale.
    assert sync.add(("cam1", "depth"), T0, None) is None and sync.stats.dropped_messages == 15


def test_a_stream_that_stops():
    """cam0's depth stops after frame 1: later frames go ahead without cam0 after the timeout."""
    sync, clock = make(SyncConfig(slop_s=0.01, timeout_s=0.15, min_cameras=2, queue_size=4))
    emitted = []
    for frame in range(12):
        for camera in STREAMS:
            for stream in STREAMS[camera]:
                if frame >= 2 and (camera, stream) == ("cam0", "depth"):
                    continue
                if (r := sync.add((camera, stream), T0 + frame * PERIOD_NS, None)) is not None:
                    emitted.append(r)
        clock.advance(0.1)
        if (r := sync.poll()) is not None:
            emitted.append(r)
    assert [r.partial for r in emitted[:2]] == [False, False]
    partial = emitted[2:]
    assert partial and all(r.cameras == ("cam1", "cam2") for r in partial)
    stamps = [r.stamp_ns for r in emitted]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # Every frame from 2 on is emitted once its timeout passes (the last is still pending).
    assert len(partial) == 9 and sync.pending_groups == 1
    assert sync.stats.dropped_sets == 0


def test_queue_size_bounds_a_lonely_stream():
    sync, _ = make(SyncConfig(slop_s=0.01, timeout_s=None, queue_size=3))
    for frame in range(10):
        sync.add(("cam0", "color"), T0 + frame * PERIOD_NS, None)
    assert sync.pending_groups == 3 and sync.stats.dropped_messages == 7 and sync.stats.dropped_sets == 0


def test_duplicate_stamp_keeps_newest_payload():
    sync, _ = make(SyncConfig(slop_s=0.01, timeout_s=None), streams={"cam0": ("color", "info")})
    sync.add(("cam0", "color"), T0, "first")
    sync.add(("cam0", "color"), T0, "second")
    result = sync.add(("cam0", "info"), T0, "info")
    assert result.messages["cam0"]["color"].payload == "second" and sync.stats.dropped_messages == 1


def test_bad_input_raises_naming_it():
    with pytest.raises(InvalidInputError, match="min_cameras"):
        ApproximateTimeSynchronizer(STREAMS, SyncConfig(min_cameras=4))
    with pytest.raises(InvalidInputError, match="slop_s"):
        SyncConfig(slop_s=-1)
    with pytest.raises(InvalidInputError, match="timeout_s"):
        SyncConfig(timeout_s=0)
    with pytest.raises(InvalidInputError, match="queue_size"):
        SyncConfig(queue_size=True)
    sync, _ = make()
    with pytest.raises(InvalidInputError, match="unknown"):
        sync.add(("cam9", "color"), T0, None)
    with pytest.raises(InvalidInputError, match="stamp_ns"):
        sync.add(("cam0", "color"), 1.5, None)
