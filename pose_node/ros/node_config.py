"""The pose_node configuration file: parsed into frozen dataclasses and fully validated at start.

One YAML file describes a workcell (``config/pose_node.yaml`` is a commented example)::

    world_frame: world
    cameras:                      # name -> topics (+ optional depth, optional static extrinsics)
      cam0: {color_topic: ..., camera_info_topic: ..., depth_topic: ..., depth_encoding: 32FC1,
             T_world_camera: {translation_m: [x, y, z], rotation_xyzw: [x, y, z, w]}}
    objects:                      # a list; each entry has exactly one source
      - {id: 1, name: mug, mesh: meshes/mug.ply, units: mm, symmetries_continuous: [...], thresholds: {...}}
      - {bop_models: ../models, ids: [1, 2]}
      - {procedural: {seed: 0, count: 4}}
    pipeline: {mode: rgbd, device: cpu, backend: auto, multiview: refinement, thresholds: {...},
               max_proposals_per_view: 32, time_budget_ms: 0}
    sync: {slop_s: 0.02, timeout_s: 0.1, min_cameras: 1, queue_size: 10}
    tracking: {gate_m: 0.05, name_reuse_s: 2.0}
    diagnostics: {window_s: 5.0, late_s: 1.0, stale_timeout_s: 3.0, period_s: 1.0}
    tf_timeout_s: 0.5
    debug_images: false

Every error is an :class:`~pose_node.core.errors.InvalidInputError` whose message starts with
the key path of the offending value (``cameras.cam0.depth_encoding: expected one of 16UC1,
32FC1, got 'foo'``); unknown keys are errors too (a misspelt optional key would otherwise be
silently ignored). Relative paths are resolved against the YAML file's folder. The object
entries are flattened into one :class:`ObjectConfig` per object (BOP ``models_info.json`` is
read here, so ids, names and symmetries are known and checked before any mesh is loaded);
:func:`pose_node.onboarding.object_models.load_object_models` then builds the
:class:`~pose_node.core.types.ObjectModel` list. The pipeline's own types (:class:`PipelineConfig`,
:class:`Thresholds`, the modes and backends) live in :mod:`pose_node.pipeline.config`; this module
only reads the file into them.
:func:`load_object_configs` reads the objects of a file alone (``pose_scene`` renders them).

This module imports neither rclpy nor the mesh loaders, so parsing is fast and works without ROS.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose
from pose_node.core.units import MESH_UNITS
from pose_node.onboarding.object_models import ContinuousSymmetry, ProceduralSpec
from pose_node.pipeline.config import (
    BACKENDS, DEVICE_PATTERN, MODES, MULTIVIEW_METHODS, ObjectThresholds, PipelineConfig, Thresholds,
)
from pose_node.ros.health import HealthConfig
from pose_node.ros.sync import SyncConfig

DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "32FC1")
OBJECT_SOURCES: tuple[str, ...] = ("mesh", "bop_models", "procedural")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_TOPIC_RE = re.compile(rf"^(~/|/)?{_TOPIC_TOKEN}(/{_TOPIC_TOKEN})*$")
# A quaternion whose norm is this far from 1 is a typo (or Euler angles), not rounding.
_QUATERNION_NORM_TOLERANCE = 1e-3
_ROTATION_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------
# Dataclasses
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraConfig:
    """One camera of the workcell.

    Attributes:
        name: camera name (``[A-Za-z_][A-Za-z0-9_]*``), used in logs, diagnostics and sync keys.
        color_topic: ``sensor_msgs/Image`` topic, rgb8 / bgr8 / mono8.
        camera_info_topic: ``sensor_msgs/CameraInfo`` of the colour camera.
        depth_topic: depth ``sensor_msgs/Image`` registered to the colour camera (same size and
            K), or None (RGB only).
        depth_encoding: the depth encoding every message must have (``16UC1`` millimetres or
            ``32FC1`` metres), or None to accept either.
        T_world_camera: (4, 4) float64 static pose of the colour optical frame in the world
            frame, metres; None: looked up in TF at each image stamp (moving cameras).
    """

    name: str
    color_topic: str
    camera_info_topic: str
    depth_topic: str | None = None
    depth_encoding: str | None = None
    T_world_camera: np.ndarray | None = None

    def stream_names(self) -> tuple[str, ...]:
        """The synchronizer streams of this camera: ``color``, ``info`` and, with depth, ``depth``."""
        return ("color", "info", "depth") if self.depth_topic else ("color", "info")


@dataclass(frozen=True)
class ObjectConfig:
    """One known object (one per object even when its entry in the file names several).

    Attributes:
        object_id: integer id (BOP ``obj_id``), unique.
        name: ``[A-Za-z_][A-Za-z0-9_]*``, unique; used in TF frames and class ids. Defaults to
            ``obj_XXXXXX`` for ``bop_models`` and ``procedural`` entries, the names ``pose_scene``
            gives the same objects in its ``models/`` folder.
        source: ``mesh``, ``bop_models`` or ``procedural`` (the kind of entry it came from).
        mesh_path: absolute mesh path (None for procedural objects).
        units: units of the mesh file (``m`` for procedural objects).
        symmetries_discrete: 4x4 row-major transforms ``T_obj_objsym`` as 16-tuples,
            translation in the mesh's units (BOP ``symmetries_discrete``); identity implied.
        symmetries_continuous: BOP ``symmetries_continuous``.
        procedural: the generator call for procedural objects, else None.
        thresholds: per-object overrides.
        key_path: where the entry is in the file (``objects[2]``), for later error messages.
    """

    object_id: int
    name: str
    source: str
    mesh_path: Path | None = None
    units: str = "m"
    symmetries_discrete: tuple[tuple[float, ...], ...] = ()
    symmetries_continuous: tuple[ContinuousSymmetry, ...] = ()
    procedural: ProceduralSpec | None = None
    thresholds: ObjectThresholds = field(default_factory=ObjectThresholds)
    key_path: str = ""

    def bop_symmetries(self) -> dict[str, list]:
        """The symmetries as a BOP ``models_info.json`` entry (for ``mesh_loading.symmetry_transforms``)."""
        return {
            "symmetries_discrete": [list(s) for s in self.symmetries_discrete],
            "symmetries_continuous": [{"axis": list(s.axis), "offset": list(s.offset)} for s in self.symmetries_continuous],
        }


@dataclass(frozen=True)
class TrackingConfig:
    """Instance naming (:class:`pose_node.pipeline.InstanceTracker`).

    Attributes:
        gate_m: an estimate keeps the name of the nearest recently seen instance of its object
            within this distance, metres (> 0).
        name_reuse_s: an instance unseen for this long (header-stamp time) is forgotten and its
            name may be given to a new instance, seconds (>= 0).
    """

    gate_m: float = 0.05
    name_reuse_s: float = 2.0


@dataclass(frozen=True)
class NodeConfig:
    """The whole configuration of a pose_node.

    Attributes:
        world_frame: the fixed frame poses are published in.
        cameras: in file order.
        objects: one per object, in file order.
        pipeline: mode, device, backend, thresholds.
        sync: multi-camera synchronization settings.
        tracking: instance naming.
        diagnostics: ``/diagnostics`` window and silence thresholds.
        debug_images: publish ``~/debug/<camera>/image`` per processed set (each camera's image
            with the estimates drawn); off by default (drawing costs time on the worker).
        tf_timeout_s: how long a set waits for a camera's transform that TF does not have yet
            (the first images can arrive before ``/tf_static``), seconds (>= 0); after a wait
            that timed out, that frame is not waited for again until it has been found.
        source_path: the YAML file it was read from (None for a mapping).
    """

    world_frame: str
    cameras: tuple[CameraConfig, ...]
    objects: tuple[ObjectConfig, ...]
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    diagnostics: HealthConfig = field(default_factory=HealthConfig)
    tf_timeout_s: float = 0.5
    debug_images: bool = False
    source_path: Path | None = None

    def camera(self, name: str) -> CameraConfig:
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise InvalidInputError(f"cameras.{name}: no such camera (configured: {[c.name for c in self.cameras]})")

    def object(self, object_id: int) -> ObjectConfig:
        for obj in self.objects:
            if obj.object_id == object_id:
                return obj
        raise InvalidInputError(f"objects: no object with id {object_id} (configured: {[o.object_id for o in self.objects]})")

    def thresholds_for(self, object_id: int) -> Thresholds:
        """The pipeline thresholds with the object's overrides applied."""
        overrides = {k: v for k, v in vars(self.object(object_id).thresholds).items() if v is not None}
        return replace(self.pipeline.thresholds, **overrides)

    def sync_streams(self) -> dict[str, tuple[str, ...]]:
        """``streams`` argument of :class:`pose_node.ros.sync.ApproximateTimeSynchronizer`."""
        return {c.name: c.stream_names() for c in self.cameras}


# ---------------------------------------------------------------------------------------------
# Parsing helpers: every value is read through a _Section, which knows its key path.
# ---------------------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


class _Section:
    """A mapping read with key-path-aware, typed accessors; unknown keys fail at construction."""

    def __init__(self, value: Any, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(value, Mapping):
            raise InvalidInputError(f"{path or '<top level>'}: expected a mapping, got {_describe(value)}")
        self.path = path
        self.data = value
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise InvalidInputError(
                    f"{self.key(key)}: unknown key (expected one of {', '.join(allowed)}){suggestion}")

    def key(self, key: Any) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def raw(self, key: str, required: bool = False) -> Any:
        value = self.data.get(key)
        if value is None and required:
            raise InvalidInputError(f"{self.key(key)}: required")
        return value

    def string(self, key: str, default: str | None = None, *, required: bool = False,
               choices: Sequence[str] | None = None, pattern: re.Pattern | None = None, what: str = "") -> str | None:
        value = self.raw(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidInputError(f"{self.key(key)}: expected a string, got {_describe(value)}")
        if choices is not None and value not in choices:
            raise InvalidInputError(f"{self.key(key)}: expected one of {', '.join(choices)}, got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise InvalidInputError(f"{self.key(key)}: expected {what}, got {value!r}")
        return value

    def integer(self, key: str, default: int | None = None, *, required: bool = False, minimum: int | None = None) -> int | None:
        value = self.raw(key, required)
        if value is None:
            return default
        return _integer(self.key(key), value, minimum)

    def number(self, key: str, default: float | None = None, *, required: bool = False, minimum: float | None = None,
               maximum: float | None = None, exclusive_minimum: bool = False, allow_inf: bool = False) -> float | None:
        value = self.raw(key, required)
        if value is None:
            return default
        return _number(self.key(key), value, minimum, maximum, exclusive_minimum, allow_inf)

    def vector(self, key: str, length: int, *, required: bool = False) -> tuple[float, ...] | None:
        value = self.raw(key, required)
        if value is None:
            return None
        return _vector(self.key(key), value, length)


def _integer(path: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{path}: expected an integer, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{path}: expected an integer >= {minimum}, got {value}")
    return value


def _number(path: str, value: Any, minimum: float | None = None, maximum: float | None = None,
            exclusive_minimum: bool = False, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{path}: expected a number, got {_describe(value)}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not (allow_inf and value > 0)):
        raise InvalidInputError(f"{path}: expected a finite number{' or .inf' if allow_inf else ''}, got {value}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise InvalidInputError(f"{path}: expected a number {'>' if exclusive_minimum else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{path}: expected a number <= {maximum}, got {value}")
    return value


def _vector(path: str, value: Any, length: int) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length:
        raise InvalidInputError(f"{path}: expected a list of {length} numbers, got {_describe(value)}")
    return tuple(_number(f"{path}[{i}]", v) for i, v in enumerate(value))


def _resolve_path(path: str, value: Any, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{path}: expected a path string, got {_describe(value)}")
    resolved = Path(value).expanduser()
    return resolved if resolved.is_absolute() else (base_dir / resolved).resolve()


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
_CAMERA_KEYS = ("color_topic", "camera_info_topic", "depth_topic", "depth_encoding", "T_world_camera")


def _parse_extrinsics(value: Any, path: str) -> np.ndarray:
    section = _Section(value, path, ("translation_m", "rotation_xyzw"))
    t = section.vector("translation_m", 3, required=True)
    q = np.array(section.vector("rotation_xyzw", 4, required=True))
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > _QUATERNION_NORM_TOLERANCE:
        raise InvalidInputError(
            f"{path}.rotation_xyzw: expected a unit quaternion (x, y, z, w), got norm {norm:.6g}")
    return Pose.from_quaternion_xyzw(torch.from_numpy(q / norm), torch.tensor(t, dtype=torch.float64)).matrix().numpy()


def _parse_camera(name: Any, value: Any) -> CameraConfig:
    path = f"cameras.{name}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInputError(f"{path}: camera names must match [A-Za-z_][A-Za-z0-9_]*, got {name!r}")
    section = _Section(value, path, _CAMERA_KEYS)
    topic = dict(pattern=_TOPIC_RE, what="a ROS topic name")
    depth_topic = section.string("depth_topic", **topic)
    depth_encoding = section.string("depth_encoding", choices=DEPTH_ENCODINGS)
    if depth_encoding is not None and depth_topic is None:
        raise InvalidInputError(f"{path}.depth_encoding: given without {path}.depth_topic")
    extrinsics = value.get("T_world_camera")
    return CameraConfig(
        name=name,
        color_topic=section.string("color_topic", required=True, **topic),
        camera_info_topic=section.string("camera_info_topic", required=True, **topic),
        depth_topic=depth_topic,
        depth_encoding=depth_encoding,
        T_world_camera=None if extrinsics is None else _parse_extrinsics(extrinsics, f"{path}.T_world_camera"),
    )


def _parse_cameras(value: Any) -> tuple[CameraConfig, ...]:
    if not isinstance(value, Mapping) or not value:
        raise InvalidInputError(f"cameras: expected a non-empty mapping of camera name -> settings, got {_describe(value)}")
    cameras = tuple(_parse_camera(name, settings) for name, settings in value.items())
    seen: dict[str, str] = {}
    for camera in cameras:
        for key in ("color_topic", "camera_info_topic", "depth_topic"):
            topic = getattr(camera, key)
            if topic is None:
                continue
            if topic in seen:
                raise InvalidInputError(f"cameras.{camera.name}.{key}: topic {topic!r} is already used by {seen[topic]}")
            seen[topic] = f"cameras.{camera.name}.{key}"
    return cameras


_THRESHOLD_KEYS = ("detection_score", "pose_score", "max_position_std_m", "max_rotation_std_deg")
# The node publishes a pose only when its score reaches this, unless pipeline.thresholds.pose_score
# says otherwise: the calibrated per-mode threshold of the shipped refinement calibration
# (``pose_score_threshold`` in models/refinement_effl0.json, fitted on the out-of-domain validation
# split by pose_refinement_bench --calibrate-dataset so that published poses are right >= 95 % of
# the time), else this. The library default (Thresholds.pose_score) stays 0 so that evaluations
# see every estimate.
DEFAULT_PUBLISH_POSE_SCORE = 0.3


def default_publish_pose_score(mode: str, calibration: Path | None = None) -> float:
    """The node's default ``pose_score`` for ``mode`` (comment above); ``calibration``: the json (None: the shipped one)."""
    from pose_node.core.resources import REFINEMENT_CALIBRATION_FILE, shipped_file

    path = calibration if calibration is not None else shipped_file(REFINEMENT_CALIBRATION_FILE)
    try:
        entry = json.loads(path.read_text()).get("pose_score_threshold", {}).get(mode, {})
        return float(entry["threshold"]) if 0.0 <= float(entry.get("threshold", -1.0)) <= 1.0 else DEFAULT_PUBLISH_POSE_SCORE
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_PUBLISH_POSE_SCORE


def _threshold_values(value: Any, path: str) -> dict[str, float]:
    section = _Section(value, path, _THRESHOLD_KEYS)
    values = {
        "detection_score": section.number("detection_score", minimum=0.0, maximum=1.0),
        "pose_score": section.number("pose_score", minimum=0.0, maximum=1.0),
        "max_position_std_m": section.number("max_position_std_m", minimum=0.0, exclusive_minimum=True, allow_inf=True),
        "max_rotation_std_deg": section.number("max_rotation_std_deg", minimum=0.0, exclusive_minimum=True, allow_inf=True),
    }
    return {k: v for k, v in values.items() if v is not None}


def _parse_pipeline(value: Any) -> PipelineConfig:
    section = _Section({} if value is None else value, "pipeline", ("mode", "device", "backend", "multiview", "thresholds",
                                                                    "max_proposals_per_view", "time_budget_ms", "min_supporting_views"))
    defaults = PipelineConfig()
    raw_thresholds = section.raw("thresholds")
    mode = section.string("mode", defaults.mode, choices=MODES)
    thresholds = Thresholds(**{"pose_score": default_publish_pose_score(mode),
                               **_threshold_values({} if raw_thresholds is None else raw_thresholds, "pipeline.thresholds")})
    return PipelineConfig(
        mode=mode,
        device=section.string("device", defaults.device, pattern=DEVICE_PATTERN, what="cpu, cuda or cuda:N"),
        backend=section.string("backend", defaults.backend, choices=BACKENDS),
        multiview=section.string("multiview", defaults.multiview, choices=MULTIVIEW_METHODS),
        thresholds=thresholds,
        max_proposals_per_view=section.integer("max_proposals_per_view", defaults.max_proposals_per_view, minimum=0),
        time_budget_ms=section.number("time_budget_ms", defaults.time_budget_ms, minimum=0.0),
        min_supporting_views=section.integer("min_supporting_views", defaults.min_supporting_views, minimum=1),
    )


def _parse_sync(value: Any) -> SyncConfig:
    section = _Section({} if value is None else value, "sync", ("slop_s", "timeout_s", "min_cameras", "queue_size"))
    defaults = SyncConfig()
    timeout = defaults.timeout_s
    if "timeout_s" in section.data:  # an explicit null means "wait for every camera"
        timeout = None if section.data["timeout_s"] is None else section.number("timeout_s", minimum=0.0, exclusive_minimum=True)
    return SyncConfig(
        slop_s=section.number("slop_s", defaults.slop_s, minimum=0.0),
        timeout_s=timeout,
        min_cameras=section.integer("min_cameras", defaults.min_cameras, minimum=1),
        queue_size=section.integer("queue_size", defaults.queue_size, minimum=1),
    )


def _parse_tracking(value: Any) -> TrackingConfig:
    section = _Section({} if value is None else value, "tracking", ("gate_m", "name_reuse_s"))
    defaults = TrackingConfig()
    return TrackingConfig(
        gate_m=section.number("gate_m", defaults.gate_m, minimum=0.0, exclusive_minimum=True),
        name_reuse_s=section.number("name_reuse_s", defaults.name_reuse_s, minimum=0.0),
    )


def _parse_diagnostics(value: Any) -> HealthConfig:
    keys = ("window_s", "late_s", "stale_timeout_s", "period_s")
    section = _Section({} if value is None else value, "diagnostics", keys)
    defaults = HealthConfig()
    values = {k: section.number(k, getattr(defaults, k), minimum=0.0, exclusive_minimum=True) for k in keys}
    if values["stale_timeout_s"] <= values["late_s"]:
        raise InvalidInputError(f"diagnostics.stale_timeout_s: expected > diagnostics.late_s ({values['late_s']}), "
                                f"got {values['stale_timeout_s']}")
    return HealthConfig(**values)


def _default_name(object_id: int) -> str:
    return f"obj_{object_id:06d}"


def _parse_symmetries(section: _Section) -> tuple[tuple[tuple[float, ...], ...], tuple[ContinuousSymmetry, ...]]:
    discrete_raw = section.raw("symmetries_discrete")
    continuous_raw = section.raw("symmetries_continuous")
    discrete_raw = [] if discrete_raw is None else discrete_raw
    continuous_raw = [] if continuous_raw is None else continuous_raw
    for key, raw in (("symmetries_discrete", discrete_raw), ("symmetries_continuous", continuous_raw)):
        if not isinstance(raw, Sequence) or isinstance(raw, str):
            raise InvalidInputError(f"{section.key(key)}: expected a list, got {_describe(raw)}")
    discrete = []
    for i, entry in enumerate(discrete_raw):
        path = f"{section.key('symmetries_discrete')}[{i}]"
        values = _vector(path, entry, 16)
        T = np.asarray(values).reshape(4, 4)
        R = T[:3, :3]
        if (np.abs(R @ R.T - np.eye(3)).max() > _ROTATION_TOLERANCE or np.linalg.det(R) < 0
                or np.abs(T[3] - [0, 0, 0, 1]).max() > _ROTATION_TOLERANCE):
            raise InvalidInputError(f"{path}: not a rigid transform (16 numbers, row-major 4x4, last row 0 0 0 1)")
        discrete.append(values)
    continuous = []
    for i, entry in enumerate(continuous_raw):
        path = f"{section.key('symmetries_continuous')}[{i}]"
        sym = _Section(entry, path, ("axis", "offset"))
        axis = sym.vector("axis", 3, required=True)
        if np.linalg.norm(axis) < 1e-9:
            raise InvalidInputError(f"{path}.axis: must not be zero")
        continuous.append(ContinuousSymmetry(axis=axis, offset=sym.vector("offset", 3) or (0.0, 0.0, 0.0)))
    return tuple(discrete), tuple(continuous)


def _object_thresholds(section: _Section) -> ObjectThresholds:
    raw = section.raw("thresholds")
    return ObjectThresholds(**_threshold_values(raw, section.key("thresholds"))) if raw is not None else ObjectThresholds()


def _parse_mesh_entry(section: _Section, base_dir: Path) -> list[ObjectConfig]:
    object_id = section.integer("id", required=True, minimum=1)
    mesh_path = _resolve_path(section.key("mesh"), section.raw("mesh", required=True), base_dir)
    if not mesh_path.is_file():
        raise InvalidInputError(f"{section.key('mesh')}: file not found: {mesh_path}")
    if section.raw("units") is None:
        raise InvalidInputError(
            f"{section.key('units')}: required (mesh files carry no reliable unit); one of {', '.join(MESH_UNITS)}")
    discrete, continuous = _parse_symmetries(section)
    return [ObjectConfig(
        object_id=object_id,
        name=section.string("name", _default_name(object_id), pattern=_NAME_RE, what="a name matching [A-Za-z_][A-Za-z0-9_]*"),
        source="mesh", mesh_path=mesh_path, units=section.string("units", choices=MESH_UNITS),
        symmetries_discrete=discrete, symmetries_continuous=continuous,
        thresholds=_object_thresholds(section), key_path=section.path,
    )]


def _parse_bop_entry(section: _Section, base_dir: Path) -> list[ObjectConfig]:
    models_dir = _resolve_path(section.key("bop_models"), section.raw("bop_models"), base_dir)
    info_path = models_dir / "models_info.json"
    if not info_path.is_file():
        raise InvalidInputError(f"{section.key('bop_models')}: no models_info.json in {models_dir} (not a BOP models folder?)")
    try:
        info = {int(k): v for k, v in json.loads(info_path.read_text()).items()}
    except (ValueError, AttributeError) as exc:
        raise InvalidInputError(f"{section.key('bop_models')}: cannot read {info_path}: {exc}") from exc
    ids_raw = section.raw("ids")
    if ids_raw is None:
        ids = sorted(info)
    else:
        if not isinstance(ids_raw, Sequence) or isinstance(ids_raw, str) or not ids_raw:
            raise InvalidInputError(f"{section.key('ids')}: expected a non-empty list of object ids, got {_describe(ids_raw)}")
        ids = [_integer(f"{section.key('ids')}[{i}]", v, 1) for i, v in enumerate(ids_raw)]
        for i, obj_id in enumerate(ids):
            if obj_id not in info:
                raise InvalidInputError(f"{section.key('ids')}[{i}]: object {obj_id} is not in {info_path} (has {sorted(info)})")
    thresholds = _object_thresholds(section)
    objects = []
    for obj_id in ids:
        mesh_path = models_dir / f"obj_{obj_id:06d}.ply"
        if not mesh_path.is_file():
            raise InvalidInputError(f"{section.key('bop_models')}: {mesh_path.name} is listed in models_info.json but missing")
        # Re-validate the file's symmetries with the same rules as hand-written ones.
        sym_section = _Section(
            {k: info[obj_id][k] for k in ("symmetries_discrete", "symmetries_continuous") if k in info[obj_id]},
            f"{info_path}[{obj_id}]", ("symmetries_discrete", "symmetries_continuous"))
        discrete, continuous = _parse_symmetries(sym_section)
        objects.append(ObjectConfig(
            object_id=obj_id, name=_default_name(obj_id), source="bop_models", mesh_path=mesh_path, units="mm",
            symmetries_discrete=discrete, symmetries_continuous=continuous, thresholds=thresholds,
            key_path=section.path,
        ))
    return objects


def _parse_procedural_entry(section: _Section) -> list[ObjectConfig]:
    spec_section = _Section(section.raw("procedural"), section.key("procedural"), ("seed", "count", "first_id"))
    spec = ProceduralSpec(
        seed=spec_section.integer("seed", required=True, minimum=0),
        count=spec_section.integer("count", required=True, minimum=1),
        first_id=spec_section.integer("first_id", 1, minimum=1),
    )
    thresholds = _object_thresholds(section)
    return [
        ObjectConfig(object_id=i, name=_default_name(i), source="procedural", units="m", procedural=spec,
                     thresholds=thresholds, key_path=section.path)
        for i in range(spec.first_id, spec.first_id + spec.count)
    ]


_ENTRY_KEYS = {
    "mesh": ("id", "name", "mesh", "units", "symmetries_discrete", "symmetries_continuous", "thresholds"),
    "bop_models": ("bop_models", "ids", "thresholds"),
    "procedural": ("procedural", "thresholds"),
}


def parse_objects_section(value: Any, *, base_dir: str | Path, key: str = "objects") -> tuple[ObjectConfig, ...]:
    """Validate the ``objects:`` list alone (module docstring: the entry kinds), as the node does.

    Args:
        value: the parsed list of object entries.
        base_dir: folder relative mesh and ``bop_models`` paths are resolved against.
        key: key path of the list in error messages (``objects`` in the node's file; a tool that
            builds the entries from its own arguments names the argument instead).
    Returns:
        One :class:`ObjectConfig` per object, in list order.
    Raises:
        InvalidInputError: the first problem found, its message led by the key path.
    """
    base_dir = Path(base_dir).resolve()
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise InvalidInputError(f"{key}: expected a non-empty list of object entries, got {_describe(value)}")
    objects: list[ObjectConfig] = []
    for i, entry in enumerate(value):
        path = f"{key}[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidInputError(f"{path}: expected a mapping, got {_describe(entry)}")
        kinds = [k for k in OBJECT_SOURCES if k in entry]
        if len(kinds) != 1:
            found = f"got {', '.join(kinds)}" if kinds else f"got keys {', '.join(map(str, entry)) or 'none'}"
            raise InvalidInputError(f"{path}: expected exactly one source key of {', '.join(OBJECT_SOURCES)}, {found}")
        section = _Section(entry, path, _ENTRY_KEYS[kinds[0]])
        if kinds[0] == "mesh":
            objects += _parse_mesh_entry(section, base_dir)
        elif kinds[0] == "bop_models":
            objects += _parse_bop_entry(section, base_dir)
        else:
            objects += _parse_procedural_entry(section)
    by_id: dict[int, ObjectConfig] = {}
    by_name: dict[str, ObjectConfig] = {}
    for obj in objects:
        if obj.object_id in by_id:
            raise InvalidInputError(
                f"{obj.key_path}: object id {obj.object_id} is already used by {by_id[obj.object_id].key_path}")
        if obj.name in by_name:
            raise InvalidInputError(f"{obj.key_path}: object name {obj.name!r} is already used by {by_name[obj.name].key_path}")
        by_id[obj.object_id] = by_name[obj.name] = obj
    return tuple(objects)


_TOP_KEYS = ("world_frame", "cameras", "objects", "pipeline", "sync", "tracking", "diagnostics", "tf_timeout_s", "debug_images")


def parse_node_config(mapping: Mapping[str, Any], *, base_dir: str | Path | None = None,
                      source_path: Path | None = None) -> NodeConfig:
    """Validate a configuration mapping (module docstring: the layout).

    Args:
        mapping: the parsed YAML.
        base_dir: folder relative paths are resolved against (default: the working directory).
        source_path: the file the mapping came from, recorded in the result.
    Returns:
        The configuration.
    Raises:
        InvalidInputError: the first problem found, its message led by the key path.
    """
    base_dir = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    top = _Section(mapping, "", _TOP_KEYS)
    world_frame = top.string("world_frame", "world")
    if not world_frame or world_frame.startswith("/") or any(c.isspace() for c in world_frame):
        raise InvalidInputError(
            f"world_frame: expected a TF frame id (non-empty, no leading '/', no spaces), got {world_frame!r}")
    cameras = _parse_cameras(top.raw("cameras", required=True))
    objects = parse_objects_section(top.raw("objects", required=True), base_dir=base_dir)
    pipeline = _parse_pipeline(top.raw("pipeline"))
    sync = _parse_sync(top.raw("sync"))
    tracking = _parse_tracking(top.raw("tracking"))
    diagnostics = _parse_diagnostics(top.raw("diagnostics"))
    tf_timeout_s = top.number("tf_timeout_s", NodeConfig.tf_timeout_s, minimum=0.0)
    debug_images = top.raw("debug_images")
    if debug_images is not None and not isinstance(debug_images, bool):
        raise InvalidInputError(f"debug_images: expected true or false, got {_describe(debug_images)}")
    if pipeline.mode == "rgbd":
        for camera in cameras:
            if camera.depth_topic is None:
                raise InvalidInputError(
                    f"cameras.{camera.name}.depth_topic: required by pipeline.mode 'rgbd' (or set pipeline.mode: rgb)")
    if sync.min_cameras > len(cameras):
        raise InvalidInputError(f"sync.min_cameras: {sync.min_cameras} is more than the {len(cameras)} configured cameras")
    return NodeConfig(world_frame=world_frame, cameras=cameras, objects=objects, pipeline=pipeline, sync=sync,
                      tracking=tracking, diagnostics=diagnostics, tf_timeout_s=tf_timeout_s,
                      debug_images=bool(debug_images), source_path=source_path)


def _read_yaml_mapping(path: str | Path) -> tuple[Any, Path]:
    """The parsed content of a YAML file (not None) and its resolved path."""
    import yaml

    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInputError(f"config file {path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # One line (the tools print it as their error line): the problem and where, without the
        # quoted source lines of str(exc).
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise InvalidInputError(f"config file {path}: not valid YAML{where}: {problem}") from exc
    if mapping is None:
        raise InvalidInputError(f"config file {path}: empty")
    return mapping, path


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a YAML configuration file; relative paths resolve against its folder.

    Raises:
        InvalidInputError: missing or unparsable file, or any invalid value (see :func:`parse_node_config`).
    """
    mapping, path = _read_yaml_mapping(path)
    return parse_node_config(mapping, base_dir=path.parent, source_path=path)


def load_object_configs(path: str | Path) -> tuple[ObjectConfig, ...]:
    """The objects of a YAML file: the node's whole configuration file or one holding only ``objects:``.

    Only the ``objects`` section is validated (with the node's rules: the objects equal those the
    node configured with this file would load); the other top-level keys must be known ones but
    are not checked, so a simulation can reuse the file of a cell whose cameras differ.

    Raises:
        InvalidInputError: missing or unparsable file, no ``objects`` list, or an invalid object
            entry; the message starts with the file's path.
    """
    mapping, path = _read_yaml_mapping(path)
    try:
        top = _Section(mapping, "", _TOP_KEYS)
        if top.raw("objects") is None:
            raise InvalidInputError("no objects: list (expected the node's configuration file or a file with an objects: list)")
        return parse_objects_section(top.raw("objects"), base_dir=path.parent)
    except InvalidInputError as exc:
        raise InvalidInputError(f"config file {path}: {exc}") from exc


__all__ = [
    "BACKENDS", "DEPTH_ENCODINGS", "MESH_UNITS", "MODES", "CameraConfig", "ContinuousSymmetry", "NodeConfig",
    "ObjectConfig", "ObjectThresholds", "PipelineConfig", "ProceduralSpec", "Thresholds", "TrackingConfig", "load_node_config",
    "load_object_configs", "parse_node_config", "parse_objects_section",
]
