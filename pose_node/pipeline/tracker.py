"""Stable per-object instance ids across multi-view sets (:class:`InstanceTracker`).

Each estimate takes the id of the nearest recently seen instance of the same object within a gate;
an id is given again only after its instance has been unseen for ``name_reuse_s``. A tracked
symmetric object is reported as the symmetric equivalent closest to its previous pose, so its frame
does not jump between equivalent orientations.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pose_node.core.types import PoseEstimate
from pose_node.refinement.association import closest_equivalent, equivalent_with_covariance

logger = logging.getLogger(__name__)


@dataclass
class _Track:
    """One named instance: its last published estimate and the stamp it was last seen at."""

    estimate: PoseEstimate
    last_seen_ns: int


@dataclass
class InstanceTracker:
    """Stable per-object instance ids (see the module docstring of :mod:`pose_node.pipeline.pipeline`).

    An object's instances are numbered 0, 1, ... on their own (``mug_0``, ``mug_1`` whatever
    the other objects do). An estimate takes the id of the nearest live instance of its object
    within ``gate_m`` (greedy, closest pairs first); an instance stays live, keeping its name
    for a re-detection at the same place, until it has not been seen for ``name_reuse_s`` of
    stamp time; then its id is free again. A new instance takes the smallest free id.

    Attributes:
        gate_m: association gate, metres.
        symmetries: object id -> (S, 4, 4) symmetry transforms: a tracked estimate is re-expressed
            as the equivalent closest to its previous pose (objects not listed: no symmetry).
        name_reuse_s: an instance unseen for this long (header-stamp time, seconds) is forgotten
            and its id may be given to a new instance.
    """

    gate_m: float
    symmetries: Mapping[int, np.ndarray] = field(default_factory=dict)
    name_reuse_s: float = 2.0
    _tracks: dict[int, list[_Track]] = field(default_factory=dict)
    _last_stamp_ns: int | None = None

    def reset(self) -> None:
        """Forget every instance: ids start again at 0 per object (re-detection, time jumped back)."""
        self._tracks = {}
        self._last_stamp_ns = None

    def live_ids(self, object_id: int) -> list[int]:
        """Ids of the object's instances that are still remembered, ascending."""
        return sorted(t.estimate.instance_id for t in self._tracks.get(object_id, []))

    def assign(self, estimates: Sequence[PoseEstimate], stamp_ns: int) -> list[PoseEstimate]:
        """The estimates with tracked ``instance_id`` s (input order kept).

        Args:
            estimates: one set's estimates (``instance_id`` ignored).
            stamp_ns: the set's header stamp, nanoseconds; a stamp before the previous one
                (a looping bag, a sim-time reset) resets the tracker first.
        """
        if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
            logger.info("instance tracker: stamp went back by %.3f s, forgetting instances",
                        (self._last_stamp_ns - stamp_ns) / 1e9)
            self.reset()
        self._last_stamp_ns = stamp_ns
        forget_before = stamp_ns - int(round(self.name_reuse_s * 1e9))
        self._tracks = {o: [t for t in ts if t.last_seen_ns >= forget_before] for o, ts in self._tracks.items()}
        pairs = []
        for i, e in enumerate(estimates):
            for j, track in enumerate(self._tracks.get(e.object_id, [])):
                d = float(np.linalg.norm(track.estimate.T_world_object[:3, 3] - e.T_world_object[:3, 3]))
                if d <= self.gate_m:
                    pairs.append((d, i, j))
        matched: dict[int, _Track] = {}
        used: set[tuple[int, int]] = set()
        for _, i, j in sorted(pairs):
            key = (estimates[i].object_id, j)
            if i not in matched and key not in used:
                matched[i] = self._tracks[estimates[i].object_id][j]
                used.add(key)
        out = []
        for i, e in enumerate(estimates):
            track = matched.get(i)
            if track is None:
                taken = set(self.live_ids(e.object_id))
                new_id = next(k for k in range(len(taken) + 1) if k not in taken)
                e = replace(e, instance_id=new_id)
                self._tracks.setdefault(e.object_id, []).append(_Track(e, stamp_ns))
            else:
                if e.object_id in self.symmetries:
                    T, cov = equivalent_with_covariance(e.T_world_object, e.covariance, closest_equivalent(
                        e.T_world_object, track.estimate.T_world_object, self.symmetries[e.object_id]))
                    e = replace(e, T_world_object=T, covariance=cov)
                e = replace(e, instance_id=track.estimate.instance_id)
                track.estimate, track.last_seen_ns = e, stamp_ns
            out.append(e)
        return out


__all__ = ["InstanceTracker"]
