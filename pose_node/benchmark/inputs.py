"""What the benchmark feeds the synchronizer, and how a synchronized set becomes views.

The node receives per camera a colour image, a camera_info and (RGB-D) a depth image, decodes them
in its subscription callbacks, adds each to the :class:`~pose_node.ros.sync.ApproximateTimeSynchronizer`
and builds :class:`~pose_node.core.types.View` s from the set it emits. A :class:`FrameInput`
reproduces that path without a ROS graph:

- :class:`ArrayInput` (no ROS needed): the payloads are the arrays themselves; decoding is free.
- :class:`pose_node.benchmark.ros_messages.RosMessageInput`: real ``sensor_msgs`` messages, decoded with
  the node's conversions (the ``decode`` stage).

Messages are built before the clock starts (that is the transport's work); only decoding,
synchronizing and view building are timed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pose_node.core.types import View
from pose_node.ros.sync import SyncedSet

StreamKey = tuple[str, str]


def camera_streams(camera_names: Sequence[str], with_depth: bool) -> dict[str, tuple[str, ...]]:
    """The synchronizer's streams, as the node configures them (``CameraConfig.stream_names``)."""
    names = ("color", "info", "depth") if with_depth else ("color", "info")
    return {name: names for name in camera_names}


class FrameInput(Protocol):
    """One benchmark frame's inputs as the node would receive them (module docstring)."""

    streams: Mapping[str, tuple[str, ...]]

    def messages(self, frame: int, stamp_ns: int) -> list[tuple[StreamKey, int, Any]]:
        """Frame ``frame``'s messages, stamped ``stamp_ns``, in arrival order (not timed). A key whose
        camera is not in :attr:`streams` (``/tf``) is decoded but not synchronized."""
        ...

    def decode(self, key: StreamKey, message: Any) -> Any:
        """What the node's callback adds to the synchronizer for ``message`` (timed: ``decode``)."""
        ...

    def views(self, synced: SyncedSet) -> list[View]:
        """The pipeline's views of a synchronized set (timed: ``decode``)."""
        ...

    def size_mb(self) -> float:
        """Memory held by the prepared frames, MiB (part of the process's peak RSS)."""
        ...


class ArrayInput:
    """Payloads are the views' arrays and cameras (no ROS needed; ``decode`` is the identity).

    Args:
        frames: ``[frame][camera]`` views (see :func:`pose_node.benchmark.scenario.load_frames`).
    """

    def __init__(self, frames: Sequence[Sequence[View]]) -> None:
        self._frames = [list(f) for f in frames]
        with_depth = self._frames[0][0].depth is not None
        self.streams = camera_streams([v.name for v in self._frames[0]], with_depth)

    def messages(self, frame: int, stamp_ns: int) -> list[tuple[StreamKey, int, Any]]:
        out = []
        for view in self._frames[frame]:
            out += [((view.name, "color"), stamp_ns, view.rgb), ((view.name, "info"), stamp_ns, view.camera)]
            if view.depth is not None:
                out.append(((view.name, "depth"), stamp_ns, view.depth))
        return out

    def decode(self, key: StreamKey, message: Any) -> Any:
        return message

    def views(self, synced: SyncedSet) -> list[View]:
        views = []
        for name, streams in synced.messages.items():
            depth = streams["depth"].payload if "depth" in streams else None
            views.append(View(camera=streams["info"].payload, rgb=streams["color"].payload, depth=depth,
                              stamp_ns=streams["color"].stamp_ns, name=name))
        return views

    def size_mb(self) -> float:
        total = sum(v.rgb.nbytes + (v.depth.nbytes if v.depth is not None else 0) for f in self._frames for v in f)
        return total / 2**20


__all__ = ["ArrayInput", "FrameInput", "StreamKey", "camera_streams"]
