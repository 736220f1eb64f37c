"""A transform buffer with tf2's lookup semantics, in pure Python (``tf2_ros`` is not installable here).

The buffer holds a forest of frames: every child frame has one parent, linked by either a static
transform (valid at all times) or a time series of dynamic samples. :meth:`TransformBuffer.
lookup_transform` chains the links through the nearest common ancestor and interpolates each
dynamic link at the requested stamp (linear translation, geodesic rotation = quaternion slerp),
as ``tf2::BufferCore::lookupTransform`` does.

Frame naming follows :mod:`pose_node.core.geometry`: ``lookup_transform(target=a, source=b)``
returns ``T_a_b``, which maps points in ``b`` into ``a``; a TransformStamped with
``header.frame_id = a`` and ``child_frame_id = b`` carries ``T_a_b``.

Differences from tf2, on purpose: a lookup accepts a stamp up to ``extrapolation_tolerance_s``
outside the buffered range of a link (and uses the end sample), because camera drivers stamp
images a little after the last TF sample of a moving arm; frame ids with a leading ``/`` are
rejected with an error (tf2 rejects them too, less clearly). When a ROS node can import
``tf2_ros``, it may use it instead: the semantics match.
"""
from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError, PoseNodeError
from pose_node.core.geometry import Pose, so3_exp, so3_log
from pose_node.core.types import as_rigid_transform

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
# A chain longer than this is a loop in the parent links (a corrupt tree), not a robot.
_MAX_CHAIN_LENGTH = 1000


class TransformError(PoseNodeError):
    """Base class of the buffer's lookup errors (tf2: ``TransformException``)."""


class TransformLookupError(TransformError, LookupError):
    """A frame is unknown, or the two frames are not connected (tf2: Lookup/ConnectivityException)."""


class ExtrapolationError(TransformError):
    """The stamp lies outside the buffered time range of a link on the chain (tf2: ExtrapolationException)."""


@dataclass(frozen=True)
class TransformBufferConfig:
    """Settings of :class:`TransformBuffer`.

    Attributes:
        cache_duration_s: dynamic samples older than this, relative to the newest sample of the
            same link, are dropped (tf2's default: 10 s).
        extrapolation_tolerance_s: a lookup up to this far outside a link's buffered range uses
            the nearest sample instead of raising :class:`ExtrapolationError`; a link with a
            single dynamic sample is valid within this distance of it.
    """

    cache_duration_s: float = 10.0
    extrapolation_tolerance_s: float = 0.005

    def __post_init__(self) -> None:
        if not self.cache_duration_s > 0:
            raise InvalidInputError(f"TransformBufferConfig.cache_duration_s: expected > 0 s, got {self.cache_duration_s!r}")
        if not self.extrapolation_tolerance_s >= 0:
            raise InvalidInputError(
                f"TransformBufferConfig.extrapolation_tolerance_s: expected >= 0 s, got {self.extrapolation_tolerance_s!r}")


@dataclass
class _Link:
    """The link from ``parent`` to one child frame: ``T_parent_child`` samples sorted by stamp."""

    parent: str
    static: bool
    stamps_ns: list[int] = field(default_factory=list)
    transforms: list[np.ndarray] = field(default_factory=list)


def _seconds(stamp_ns: int) -> str:
    return f"{stamp_ns / NS_PER_S:.9f} s"


def _check_frame(name: str, frame_id) -> str:
    if not isinstance(frame_id, str) or not frame_id:
        raise InvalidInputError(f"{name}: expected a non-empty frame id, got {frame_id!r}")
    if frame_id.startswith("/"):
        raise InvalidInputError(f"{name}: frame ids must not start with '/' (tf2 convention), got {frame_id!r}")
    return frame_id


def _check_stamp(name: str, stamp_ns) -> int:
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)) or stamp_ns < 0:
        raise InvalidInputError(f"{name}: expected an int >= 0 (nanoseconds), got {stamp_ns!r}")
    return int(stamp_ns)


def transform_from_message(transform) -> np.ndarray:
    """``geometry_msgs/Transform`` (or anything with its fields) -> (4, 4) float64 ``T_parent_child``.

    Raises:
        InvalidInputError: a non-finite value or a zero quaternion.
    """
    q = np.array([transform.rotation.x, transform.rotation.y, transform.rotation.z, transform.rotation.w], np.float64)
    t = np.array([transform.translation.x, transform.translation.y, transform.translation.z], np.float64)
    norm = float(np.linalg.norm(q))
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))) or norm < 1e-9:
        raise InvalidInputError(f"transform: non-finite values or zero quaternion (q={q.tolist()}, t={t.tolist()})")
    return Pose.from_quaternion_xyzw(torch.from_numpy(q / norm), torch.from_numpy(t)).matrix().numpy()


def _interpolate(T0: np.ndarray, T1: np.ndarray, alpha: float) -> np.ndarray:
    """Linear translation and geodesic rotation ``R0 Exp(alpha Log(R0^T R1))`` (= slerp, shortest arc)."""
    R0 = torch.from_numpy(T0[:3, :3])
    R1 = torch.from_numpy(T1[:3, :3])
    R = R0 @ so3_exp(alpha * so3_log(R0.T @ R1))
    out = np.eye(4)
    out[:3, :3] = R.numpy()
    out[:3, 3] = (1.0 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return out


class TransformBuffer:
    """Static and dynamic transforms with chained, interpolated lookups (module docstring).

    Thread-safe: a node may fill it from a TF callback while another callback looks up.

    Args:
        config: cache duration and extrapolation tolerance.
    """

    def __init__(self, config: TransformBufferConfig = TransformBufferConfig()) -> None:
        self._config = config
        self._cache_ns = int(round(config.cache_duration_s * NS_PER_S))
        self._tolerance_ns = int(round(config.extrapolation_tolerance_s * NS_PER_S))
        self._links: dict[str, _Link] = {}
        self._lock = threading.RLock()

    @property
    def config(self) -> TransformBufferConfig:
        return self._config

    @property
    def frames(self) -> frozenset[str]:
        """Every frame that appears as a parent or a child."""
        with self._lock:
            return frozenset(self._links) | frozenset(link.parent for link in self._links.values())

    def clear(self, keep_static: bool = False) -> None:
        """Forget every transform, or with ``keep_static`` only the dynamic ones (as ``tf2``'s
        ``clear()`` does when time jumps back: static transforms are sent once and stay valid)."""
        with self._lock:
            if keep_static:
                self._links = {child: link for child, link in self._links.items() if link.static}
            else:
                self._links.clear()

    # ------------------------------------------------------------------ filling
    def set_transform(self, parent: str, child: str, stamp_ns: int, T_parent_child, *, static: bool = False) -> bool:
        """Add one transform.

        Args:
            parent: the parent frame (``header.frame_id``).
            child: the child frame (``child_frame_id``).
            stamp_ns: stamp of the sample, nanoseconds (ignored for static transforms).
            T_parent_child: (4, 4) rigid transform, metres.
            static: valid at all times (``/tf_static``); replaces the child's link.
        Returns:
            False when a dynamic sample is older than the cache keeps (ignored, as tf2 does).
        Raises:
            InvalidInputError: bad frame ids, ``parent == child``, a bad stamp or a non-rigid T.
        """
        parent = _check_frame("parent", parent)
        child = _check_frame("child", child)
        if parent == child:
            raise InvalidInputError(f"set_transform: parent and child are both {parent!r}")
        stamp_ns = _check_stamp("stamp_ns", stamp_ns)
        T = as_rigid_transform(f"T_{parent}_{child}", T_parent_child).copy()
        with self._lock:
            link = self._links.get(child)
            if link is not None and (link.parent != parent or link.static != static):
                # tf2 lets the last publisher win too; a changed parent usually means two
                # publishers disagree about the tree, which is worth a warning.
                logger.warning("frame %r: link from %r (%s) replaced by one from %r (%s)", child, link.parent,
                               "static" if link.static else "dynamic", parent, "static" if static else "dynamic")
                link = None
            if static:
                self._links[child] = _Link(parent, True, [stamp_ns], [T])
                return True
            if link is None:
                link = self._links[child] = _Link(parent, False)
            if link.stamps_ns and stamp_ns < link.stamps_ns[-1] - self._cache_ns:
                logger.debug("frame %r: sample at %s is older than the cache, ignored", child, _seconds(stamp_ns))
                return False
            i = bisect.bisect_left(link.stamps_ns, stamp_ns)
            if i < len(link.stamps_ns) and link.stamps_ns[i] == stamp_ns:
                link.transforms[i] = T
            else:
                link.stamps_ns.insert(i, stamp_ns)
                link.transforms.insert(i, T)
            keep_from = bisect.bisect_left(link.stamps_ns, link.stamps_ns[-1] - self._cache_ns)
            if keep_from:
                del link.stamps_ns[:keep_from]
                del link.transforms[:keep_from]
            return True

    def set_transform_stamped(self, msg, *, static: bool = False) -> bool:
        """Add a ``geometry_msgs/TransformStamped`` (read by field names; no ROS import needed).

        Returns and raises as :meth:`set_transform`.
        """
        stamp_ns = int(msg.header.stamp.sec) * NS_PER_S + int(msg.header.stamp.nanosec)
        return self.set_transform(msg.header.frame_id, msg.child_frame_id, stamp_ns,
                                  transform_from_message(msg.transform), static=static)

    def set_tf_message(self, msg, *, static: bool = False) -> int:
        """Add every transform of a ``tf2_msgs/TFMessage`` (``/tf`` or, with ``static``, ``/tf_static``).

        A bad transform is logged and skipped, so one broken publisher does not hide the others.

        Returns:
            How many transforms were stored.
        """
        stored = 0
        for transform in msg.transforms:
            try:
                stored += self.set_transform_stamped(transform, static=static)
            except InvalidInputError as exc:
                logger.warning("TF %r -> %r skipped: %s", transform.header.frame_id, transform.child_frame_id, exc)
        return stored

    def set_transforms(self, transforms: Iterable[tuple[str, str, int, np.ndarray]], *, static: bool = False) -> int:
        """Add ``(parent, child, stamp_ns, T_parent_child)`` tuples; returns how many were stored."""
        return sum(self.set_transform(p, c, s, T, static=static) for p, c, s, T in transforms)

    # ------------------------------------------------------------------ lookups
    def lookup_transform(self, target: str, source: str, stamp_ns: int | None = None) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns`` (tf2 ``lookup_transform(target, source, time)``).

        Args:
            target: frame the result maps into (``a`` of ``T_a_b``).
            source: frame the result maps from (``b`` of ``T_a_b``).
            stamp_ns: nanoseconds; ``None`` or 0: the latest time every dynamic link on the chain
                has data for (tf2's ``Time(0)``).
        Returns:
            (4, 4) float64 ``T_target_source``, metres.
        Raises:
            TransformLookupError: an unknown frame, or frames in different trees.
            ExtrapolationError: the stamp is outside a dynamic link's buffered range (beyond the
                tolerance).
            InvalidInputError: malformed frame ids or stamp.
        """
        target = _check_frame("target", target)
        source = _check_frame("source", source)
        if stamp_ns is not None:
            stamp_ns = _check_stamp("stamp_ns", stamp_ns)
        with self._lock:
            source_chain = self._chain(source)
            target_chain = self._chain(target)
            if target == source:
                return np.eye(4)
            common = self._common_ancestor(source_chain, target_chain, target, source)
            source_links = source_chain[: source_chain.index(common)]
            target_links = target_chain[: target_chain.index(common)]
            if not stamp_ns:
                stamp_ns = self._latest_common_stamp(source_links + target_links)
            T_common_source = self._compose(source_links, stamp_ns, target, source)
            T_common_target = self._compose(target_links, stamp_ns, target, source)
        R = T_common_target[:3, :3].T
        T_target_common = np.eye(4)
        T_target_common[:3, :3] = R
        T_target_common[:3, 3] = -R @ T_common_target[:3, 3]
        return T_target_common @ T_common_source

    def can_transform(self, target: str, source: str, stamp_ns: int | None = None) -> bool:
        """True when :meth:`lookup_transform` would succeed."""
        try:
            self.lookup_transform(target, source, stamp_ns)
        except TransformError:
            return False
        return True

    # ------------------------------------------------------------------ internals
    def _chain(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]``."""
        if frame not in self._links and not any(link.parent == frame for link in self._links.values()):
            known = ", ".join(sorted(self.frames)) or "none"
            raise TransformLookupError(f"frame {frame!r} does not exist in the buffer (known frames: {known})")
        chain = [frame]
        while chain[-1] in self._links:
            chain.append(self._links[chain[-1]].parent)
            if len(chain) > _MAX_CHAIN_LENGTH or chain[-1] in chain[:-1]:
                raise TransformLookupError(f"frame {frame!r}: the parent links form a loop ({' -> '.join(chain[-5:])})")
        return chain

    @staticmethod
    def _common_ancestor(source_chain: list[str], target_chain: list[str], target: str, source: str) -> str:
        in_target = set(target_chain)
        for frame in source_chain:
            if frame in in_target:
                return frame
        raise TransformLookupError(
            f"cannot transform {source!r} into {target!r}: not connected ({source!r} is in the tree rooted at "
            f"{source_chain[-1]!r}, {target!r} in the tree rooted at {target_chain[-1]!r})")

    def _latest_common_stamp(self, children: list[str]) -> int:
        newest = [self._links[c].stamps_ns[-1] for c in children if not self._links[c].static]
        return min(newest) if newest else 0

    def _compose(self, children: list[str], stamp_ns: int, target: str, source: str) -> np.ndarray:
        """``T_ancestor_child0`` for ``children = [child0, child1, ...]`` (each the child of the next)."""
        T = np.eye(4)
        for child in children:
            T = self._sample(child, stamp_ns, target, source) @ T
        return T

    def _sample(self, child: str, stamp_ns: int, target: str, source: str) -> np.ndarray:
        link = self._links[child]
        if link.static:
            return link.transforms[0]
        first, last = link.stamps_ns[0], link.stamps_ns[-1]
        if stamp_ns < first - self._tolerance_ns or stamp_ns > last + self._tolerance_ns:
            direction = "past" if stamp_ns < first else "future"
            raise ExtrapolationError(
                f"lookup {source!r} -> {target!r} at {_seconds(stamp_ns)} would require extrapolation into the "
                f"{direction}: link {link.parent!r} -> {child!r} has data for [{_seconds(first)}, {_seconds(last)}] "
                f"(tolerance {self._config.extrapolation_tolerance_s} s)")
        if stamp_ns <= first:
            return link.transforms[0]
        if stamp_ns >= last:
            return link.transforms[-1]
        i = bisect.bisect_right(link.stamps_ns, stamp_ns)
        s0, s1 = link.stamps_ns[i - 1], link.stamps_ns[i]
        if stamp_ns == s0:
            return link.transforms[i - 1]
        return _interpolate(link.transforms[i - 1], link.transforms[i], (stamp_ns - s0) / (s1 - s0))


__all__ = [
    "ExtrapolationError", "TransformBuffer", "TransformBufferConfig", "TransformError", "TransformLookupError",
    "transform_from_message",
]
