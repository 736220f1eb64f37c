"""Benchmark frames from a BOP dataset: the frames accuracy is reported on, as the node would see them.

A frame is what ``pose_eval`` gives the pipeline in one call (:func:`pose_node.evaluation.runner.
group_targets`): the images of one multi-view targets group (``{scene_id, im_ids, ...}``, cameras
placed by ``cam_R_w2c`` / ``cam_t_w2c`` of ``scene_camera.json``), or one image of a BOP19 target
(``{scene_id, im_id, ...}``; without world poses the camera frame is the world frame). Without a
targets file the dataset's own ``<split>_targets_multiview.json``, then ``<split>_targets_bop19.json``
are used (``test_*`` for splits named ``test_<sensor>``); without either, every image of the split
is a one-camera frame.

The ``k``-th image of a group is camera ``cam<k>`` (frame id ``cam<k>_optical_frame``). Images are
read from disk when a frame's messages are built, before the benchmark's clock starts, so a
dataset of any length holds one frame in memory.

In RGB-D mode a frame with an image that has no depth file cannot be fed to an RGB-D node (it
would never complete a synchronized set): it is timed as RGB (its own RGB pipeline, sync without
depth streams) and counted (:attr:`DatasetFrames.rgb_frames`).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pose_node.benchmark.inputs import ArrayInput, StreamKey, camera_streams
from pose_node.core.errors import InvalidInputError
from pose_node.core.types import View

if TYPE_CHECKING:  # the readers are imported when a dataset is opened (BenchConfig imports this module)
    from pose_node.datasets.bop import BopDataset
    from pose_node.evaluation.runner import Frame

logger = logging.getLogger(__name__)

MODELS_SUBDIR = "models"
TARGET_KINDS = ("multiview", "bop19")  # the default targets file: the first kind present

#: (cameras, with depth): frames of one kind share a synchronizer configuration and a pipeline mode.
FrameKind = tuple[int, bool]


@dataclass(frozen=True)
class DatasetSource:
    """Which frames of which BOP dataset are timed.

    Attributes:
        root: dataset directory (holds ``models/`` and the split folder).
        split: split folder, e.g. ``test`` or ``test_primesense``.
        targets: targets JSON (multi-view ``im_ids`` or BOP19 ``im_id``), relative to ``root``
            or the working directory; None: the dataset's own (module docstring).
        max_frames: time only the first N frames (None: all).
    """

    root: str
    split: str = "test"
    targets: str | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if not self.root:
            raise InvalidInputError("DatasetSource.root: expected a dataset directory, got an empty path")
        if not self.split or "/" in self.split:
            raise InvalidInputError(f"DatasetSource.split: expected a split folder name, got {self.split!r}")
        if self.max_frames is not None and (isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int)
                                            or self.max_frames < 1):
            raise InvalidInputError(f"DatasetSource.max_frames: expected an integer >= 1 or None, got {self.max_frames!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_targets(root: Path, split: str) -> Path | None:
    """The dataset's own targets file: multi-view first, then BOP19 (module docstring); None if neither."""
    stems = [split] + (["test"] if split.startswith("test_") else [])
    for kind in TARGET_KINDS:
        for stem in stems:
            path = root / f"{stem}_targets_{kind}.json"
            if path.is_file():
                return path
    return None


def open_dataset(source: DatasetSource) -> BopDataset:
    """The dataset reader, after checking the folder looks like a BOP dataset.

    Raises:
        BopFormatError: no such directory, no split folder, or no ``models/models_info.json``
            (one line naming what is missing).
    """
    from pose_node.datasets.bop import BopDataset, BopFormatError

    root = Path(source.root)
    if not root.is_dir():
        raise BopFormatError(f"{root}: not a directory")
    if not (root / source.split).is_dir():
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != MODELS_SUBDIR and not p.name.startswith("."))
        raise BopFormatError(f"{root}: not a BOP dataset: no split folder {source.split!r} "
                             f"(folders: {', '.join(splits) if splits else 'none'})")
    if not (root / MODELS_SUBDIR / "models_info.json").is_file():
        raise BopFormatError(f"{root}: not a BOP dataset: no {MODELS_SUBDIR}/models_info.json")
    return BopDataset(root, source.split)


def _frames_of(dataset: BopDataset, source: DatasetSource) -> tuple[list[Frame], str | None]:
    """The frames in dataset order and the targets file they came from (None: every image)."""
    from pose_node.datasets.bop import BopFormatError
    from pose_node.evaluation.runner import Frame, group_targets

    path = source.targets if source.targets is not None else default_targets(dataset.root, dataset.split)
    if path is None:
        frames = [Frame(s, (i,), ()) for s in dataset.scene_ids() for i in dataset.image_ids(s)]
        if not frames:
            raise BopFormatError(f"{dataset.split_dir}: no scenes with images")
        return frames, None
    frames = group_targets(dataset.targets(path))  # the evaluation's frames: one per (scene_id, im_ids)
    if not frames:
        raise BopFormatError(f"{path}: no targets")
    return frames, str(path)


class DatasetFrames:
    """The benchmark frames of a dataset (module docstring), validated up front.

    Args:
        source: dataset, split, targets, frame limit.
        mode: ``rgbd`` (depth where every image of the frame has it) or ``rgb``.
    Raises:
        BopFormatError: not a BOP dataset, a malformed targets file, an image or camera entry missing.
        InvalidInputError: a multi-view frame whose cameras have no world poses.
    """

    def __init__(self, source: DatasetSource, mode: str) -> None:
        if mode not in ("rgb", "rgbd"):
            raise InvalidInputError(f"DatasetFrames.mode: expected rgb or rgbd, got {mode!r}")
        self.source = source
        self.mode = mode
        self.dataset = open_dataset(source)
        frames, self.targets_path = _frames_of(self.dataset, source)
        self.frames: list[Frame] = frames[: source.max_frames] if source.max_frames else frames
        self.kinds: list[FrameKind] = [self._check(frame) for frame in self.frames]

    def _check(self, frame: Frame) -> FrameKind:
        """Read every image's camera (scene_camera entry, image header) now rather than mid-run."""
        cameras = [self.dataset.camera(frame.scene_id, im) for im in frame.im_ids]
        if len(cameras) > 1 and all(np.allclose(c.T_camera_world, np.eye(4)) for c in cameras):
            raise InvalidInputError(
                f"scene {frame.scene_id} images {list(frame.im_ids)}: a multi-view frame needs camera world poses, but "
                f"{self.dataset.scene_dir(frame.scene_id) / 'scene_camera.json'} has no cam_R_w2c/cam_t_w2c "
                "(use a BOP19 targets file: one camera per frame)")
        with_depth = self.mode == "rgbd" and all(self.dataset.has_depth(frame.scene_id, im) for im in frame.im_ids)
        return len(frame.im_ids), with_depth

    def __len__(self) -> int:
        return len(self.frames)

    def views(self, index: int) -> list[View]:
        """Frame ``index`` as the pipeline's views, ``cam<k>`` for its ``k``-th image; depth (metres)
        when the frame's kind has it. Reads the images (the evaluation's loading,
        :meth:`BopDataset.view`)."""
        frame = self.frames[index]
        with_depth = self.kinds[index][1]
        return [self.dataset.view(frame.scene_id, im, with_depth=with_depth, name=camera_name(k))
                for k, im in enumerate(frame.im_ids)]

    def indices(self, kind: FrameKind) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == kind]

    @property
    def rgb_frames(self) -> list[int]:
        """RGB-D mode: frames timed as RGB because an image has no depth (empty in RGB mode)."""
        return [i for i, (_, depth) in enumerate(self.kinds) if self.mode == "rgbd" and not depth]

    def summary(self) -> dict[str, Any]:
        """What was timed: dataset, split, targets file, frames, views per frame, frames without depth."""
        views = Counter(n for n, _ in self.kinds)
        rgb = self.rgb_frames
        return {
            "dataset": str(self.dataset.root), "split": self.dataset.split, "targets": self.targets_path,
            "n_frames": len(self.frames), "n_views": sum(n for n, _ in self.kinds),
            "views_per_frame": {str(n): c for n, c in sorted(views.items())},
            "frames_without_depth": len(rgb),
            "frames_without_depth_ids": [{"scene_id": self.frames[i].scene_id, "im_ids": list(self.frames[i].im_ids)}
                                         for i in rgb[:20]],
        }

    def frame_ids(self, index: int) -> dict[str, Any]:
        frame = self.frames[index]
        return {"scene_id": frame.scene_id, "im_ids": list(frame.im_ids),
                "mode": "rgbd" if self.kinds[index][1] else "rgb"}


def camera_name(k: int) -> str:
    """The node's camera name of the ``k``-th image of a frame."""
    return f"cam{k}"


class DatasetArrayInput(ArrayInput):
    """Frames of one kind as arrays (no ROS needed; ``decode`` is the identity), read when asked for.

    Args:
        frames: the dataset frames.
        kind: the frames this input serves (its synchronizer streams).
    """

    def __init__(self, frames: DatasetFrames, kind: FrameKind) -> None:
        self._dataset_frames = frames
        self._frames: dict[int, list[View]] = {}
        self.streams = camera_streams([camera_name(k) for k in range(kind[0])], kind[1])
        self._size_mb = 0.0

    def messages(self, frame: int, stamp_ns: int) -> list[tuple[StreamKey, int, Any]]:
        views = self._dataset_frames.views(frame)
        self._size_mb = max(self._size_mb, sum(v.rgb.nbytes + (0 if v.depth is None else v.depth.nbytes) for v in views) / 2**20)
        self._frames = {frame: views}  # one frame held at a time
        return super().messages(frame, stamp_ns)

    def size_mb(self) -> float:
        """The largest frame's arrays, MiB (one frame is held at a time)."""
        return self._size_mb


__all__ = ["DatasetArrayInput", "DatasetFrames", "DatasetSource", "FrameKind", "camera_name", "default_targets", "open_dataset"]
