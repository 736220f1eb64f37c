"""BOP dataset I/O: the one place that knows the BOP file format.

Everything in files follows the BOP conventions (millimetres, ``cam_R_m2c`` row-major, depth PNGs
in units of ``depth_scale`` millimetres); everything in this module's API is in metres with 4x4
homogeneous transforms named ``T_a_b`` (see :mod:`pose_node.core.geometry`).

Layout written and read (BOP19 "scene-wise" format)::

    <root>/models/obj_XXXXXX.ply (+ .png texture), models_info.json
    <root>/<split>/<scene_id:06d>/rgb/<im_id:06d>.png
                                 /depth/<im_id:06d>.png         uint16, value * depth_scale = mm
                                 /mask/<im_id:06d>_<gt_id:06d>.png       unoccluded silhouette
                                 /mask_visib/<im_id:06d>_<gt_id:06d>.png visible part
                                 /scene_camera.json  cam_K, cam_R_w2c, cam_t_w2c (mm), depth_scale
                                 /scene_gt.json      cam_R_m2c, cam_t_m2c (mm), obj_id
                                 /scene_gt_info.json bbox_obj, bbox_visib, px_count_*, visib_fract
    <root>/test_targets_bop19.json      [{scene_id, im_id, obj_id, inst_count}]
    <root>/test_targets_multiview.json  [{scene_id, im_ids: [...], obj_id, inst_count}]  (ours)

Estimates are written in the BOP19 CSV format ``scene_id,im_id,obj_id,score,R,t,time``.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pose_node.core.errors import InvalidInputError, PoseNodeError
from pose_node.core.geometry import invert_rigid
from pose_node.core.types import Camera, ObjectModel, View, as_rigid_transform

logger = logging.getLogger(__name__)

MM_PER_M = 1000.0
UINT16_MAX = 65535
DEFAULT_DEPTH_SCALE_MM = 0.1  # BOP PBR / YCB-V style: 0.1 mm per depth unit, 6.55 m range.


class BopFormatError(PoseNodeError):
    """A BOP file is missing or does not follow the format (the message names the file)."""


# --------------------------------------------------------------------------------------------
# Record types (metres)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BopImageCamera:
    """Camera of one BOP image.

    Attributes:
        K: (3, 3) intrinsics, pixels.
        T_camera_world: (4, 4) metres, from ``cam_R_w2c`` / ``cam_t_w2c`` (identity when absent:
            classic BOP datasets have no world frame, so world = camera).
        depth_scale: depth PNG value * depth_scale = millimetres.
        width, height: image size, pixels.
    """

    K: np.ndarray
    T_camera_world: np.ndarray
    depth_scale: float
    width: int
    height: int

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        if K.shape != (3, 3):
            raise InvalidInputError(f"BopImageCamera.K: expected shape (3, 3), got {K.shape}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "T_camera_world", as_rigid_transform("BopImageCamera.T_camera_world", self.T_camera_world))
        if not self.depth_scale > 0:
            raise InvalidInputError(f"BopImageCamera.depth_scale: must be > 0, got {self.depth_scale}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise InvalidInputError(f"BopImageCamera: image size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def T_world_camera(self) -> np.ndarray:
        """(4, 4) metres, the inverse of ``T_camera_world``."""
        return invert_rigid(self.T_camera_world)

    def to_camera(self, frame_id: str = "camera_optical_frame") -> Camera:
        """The core :class:`Camera` (``T_world_camera = inv(T_camera_world)``, no distortion)."""
        return Camera(K=self.K, width=self.width, height=self.height, T_world_camera=self.T_world_camera, frame_id=frame_id)


@dataclass(frozen=True)
class BopGt:
    """One ground-truth instance: ``obj_id`` and ``T_camera_object`` (4, 4) metres."""

    obj_id: int
    T_camera_object: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "obj_id", int(self.obj_id))
        object.__setattr__(self, "T_camera_object", as_rigid_transform("BopGt.T_camera_object", self.T_camera_object))


@dataclass(frozen=True)
class BopGtInfo:
    """BOP ``scene_gt_info`` entry of one GT instance.

    Attributes:
        bbox_obj: (4,) x, y, w, h of the unoccluded silhouette, pixels, BOP convention
            (w = x_max - x_min); -1s when empty.
        bbox_visib: (4,) the same for the visible part.
        px_count_all: pixels of the unoccluded silhouette.
        px_count_valid: silhouette pixels with a valid depth measurement.
        px_count_visib: pixels of the visible part.
        visib_fract: px_count_visib / px_count_all (0 when px_count_all is 0).
    """

    bbox_obj: np.ndarray
    bbox_visib: np.ndarray
    px_count_all: int
    px_count_valid: int
    px_count_visib: int
    visib_fract: float

    def to_json(self) -> dict:
        return {
            "bbox_obj": [int(v) for v in self.bbox_obj],
            "bbox_visib": [int(v) for v in self.bbox_visib],
            "px_count_all": int(self.px_count_all),
            "px_count_valid": int(self.px_count_valid),
            "px_count_visib": int(self.px_count_visib),
            "visib_fract": float(self.visib_fract),
        }

    @classmethod
    def from_json(cls, d: Mapping) -> "BopGtInfo":
        return cls(
            bbox_obj=np.asarray(d["bbox_obj"], dtype=np.int64),
            bbox_visib=np.asarray(d["bbox_visib"], dtype=np.int64),
            px_count_all=int(d["px_count_all"]),
            px_count_valid=int(d["px_count_valid"]),
            px_count_visib=int(d["px_count_visib"]),
            visib_fract=float(d["visib_fract"]),
        )


@dataclass(frozen=True)
class Target:
    """An estimation target: find ``inst_count`` instances of ``obj_id`` in the image group.

    BOP19 single-image targets have ``im_ids == (im_id,)``; multi-view targets list every image
    of the synchronized group.
    """

    scene_id: int
    im_ids: tuple[int, ...]
    obj_id: int
    inst_count: int

    @property
    def is_multiview(self) -> bool:
        return len(self.im_ids) > 1


@dataclass(frozen=True)
class BopEstimate:
    """One row of a BOP19 results CSV.

    Attributes:
        scene_id, im_id, obj_id: which image and object.
        score: confidence (higher is better).
        T_camera_object: (4, 4) metres.
        time_s: wall time for the whole image (BOP: the same for all estimates of an image),
            seconds; -1 when unknown.
    """

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    T_camera_object: np.ndarray
    time_s: float = -1.0


def _T_from_Rt_mm(R_flat, t_mm) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(R_flat, dtype=np.float64).reshape(3, 3)
    T[:3, 3] = np.asarray(t_mm, dtype=np.float64).reshape(3) / MM_PER_M
    return T


def _Rt_mm_from_T(T: np.ndarray) -> tuple[list[float], list[float]]:
    T = np.asarray(T, dtype=np.float64)
    return [float(v) for v in T[:3, :3].reshape(-1)], [float(v) for v in (T[:3, 3] * MM_PER_M)]


def bbox_xywh_from_mask(mask: np.ndarray) -> np.ndarray:
    """BOP ``calc_2d_bbox``: (x_min, y_min, x_max - x_min, y_max - y_min) with INCLUSIVE max, so
    ``w`` is one less than the pixel span (core boxes, ``Detection.box_xyxy``, use an exclusive
    max instead); -1s when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.full(4, -1, dtype=np.int64)
    return np.array([xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()], dtype=np.int64)


def _write_json(path: Path, data: Mapping[int, object]) -> None:
    """One line per image id, keys sorted numerically (as BOP's files are laid out)."""
    keys = sorted(data)
    lines = [f'  "{k}": {json.dumps(data[k])}' for k in keys]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def _read_json(path: Path):
    if not path.is_file():
        raise BopFormatError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BopFormatError(f"{path}: invalid JSON ({exc})") from exc


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise BopFormatError(f"{path}: could not write image")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def depth_m_to_png_units(depth_m: np.ndarray, depth_scale: float) -> np.ndarray:
    """Quantize a metric depth map to BOP uint16 units.

    Args:
        depth_m: (H, W) metres; 0, negative, NaN or inf = invalid.
        depth_scale: millimetres per unit.
    Returns:
        (H, W) uint16; 0 where invalid or beyond the representable range (65535 units).
    """
    depth_m = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth_m) & (depth_m > 0)
    units = np.zeros(depth_m.shape, dtype=np.float64)
    units[valid] = np.rint(depth_m[valid] * MM_PER_M / depth_scale)
    too_far = units > UINT16_MAX
    if too_far.any():
        logger.warning(
            "%d depth pixels beyond %.3f m cannot be stored with depth_scale=%g mm; written as invalid (0)",
            int(too_far.sum()), UINT16_MAX * depth_scale / MM_PER_M, depth_scale,
        )
        units[too_far] = 0
    return units.astype(np.uint16)


def compute_gt_info(
    mask: np.ndarray | None,
    mask_visib: np.ndarray | None,
    depth_valid: np.ndarray | None,
    px_count_all: int | None = None,
    bbox_obj: np.ndarray | None = None,
) -> BopGtInfo:
    """BOP ``scene_gt_info`` fields of one instance from its masks.

    Args:
        mask: (H, W) bool unoccluded silhouette inside the image, or None (unknown).
        mask_visib: (H, W) bool visible part, or None (unknown).
        depth_valid: (H, W) bool pixels with a valid depth measurement, or None (no depth).
        px_count_all: silhouette size including parts outside the image (BOP renders on a 3x
            canvas); default ``mask.sum()``, i.e. truncation is ignored.
        bbox_obj: (4,) xywh box of the whole silhouette, which BOP lets extend beyond the
            image (negative x, y); default: the box of the in-image ``mask``.
    """
    if mask is None:
        empty = np.full(4, -1, dtype=np.int64)
        return BopGtInfo(empty, empty.copy(), 0, 0, 0, 0.0)
    mask = np.asarray(mask, dtype=bool)
    mask_visib = mask if mask_visib is None else np.asarray(mask_visib, dtype=bool)
    n_all = int(mask.sum()) if px_count_all is None else int(px_count_all)
    n_valid = int((mask & depth_valid).sum()) if depth_valid is not None else 0
    n_visib = int(mask_visib.sum())
    return BopGtInfo(
        bbox_obj=bbox_xywh_from_mask(mask) if bbox_obj is None else np.asarray(bbox_obj, dtype=np.int64),
        bbox_visib=bbox_xywh_from_mask(mask_visib),
        px_count_all=n_all,
        px_count_valid=n_valid,
        px_count_visib=n_visib,
        visib_fract=float(n_visib / n_all) if n_all > 0 else 0.0,
    )


class BopSceneWriter:
    """Writes one BOP scene: images, masks and the three scene JSONs.

    Usage::

        with BopSceneWriter(root / "test", scene_id=1) as writer:
            writer.add_image(0, rgb, depth_m, camera, gts, masks, masks_visib)

    The JSONs are written by :meth:`close` (or on leaving the ``with`` block).
    """

    def __init__(self, split_dir: str | Path, scene_id: int, depth_scale: float = DEFAULT_DEPTH_SCALE_MM):
        """
        Args:
            split_dir: e.g. ``<root>/test``; the scene goes to ``split_dir/<scene_id:06d>``.
            scene_id: BOP scene id.
            depth_scale: millimetres per depth PNG unit, written to ``scene_camera.json``
                (this value is used for every image; ``BopImageCamera.depth_scale`` of the cameras
                passed to :meth:`add_image` is ignored on writing).
        """
        if not depth_scale > 0:
            raise InvalidInputError(f"BopSceneWriter.depth_scale: must be > 0, got {depth_scale}")
        self.scene_id = int(scene_id)
        self.depth_scale = float(depth_scale)
        self.scene_dir = Path(split_dir) / f"{self.scene_id:06d}"
        self._scene_camera: dict[int, dict] = {}
        self._scene_gt: dict[int, list] = {}
        self._scene_gt_info: dict[int, list] = {}
        self._closed = False
        for sub in ("rgb", "depth", "mask", "mask_visib"):
            (self.scene_dir / sub).mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "BopSceneWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def add_image(
        self,
        im_id: int,
        rgb: np.ndarray,
        depth_m: np.ndarray | None,
        camera: BopImageCamera,
        gts: Sequence[BopGt],
        masks: Sequence[np.ndarray] | None = None,
        masks_visib: Sequence[np.ndarray] | None = None,
        *,
        px_counts_all: Sequence[int] | None = None,
        bboxes_obj: Sequence[np.ndarray] | None = None,
    ) -> list[BopGtInfo]:
        """Write one image and record its camera, GT and GT info.

        Args:
            im_id: image id within the scene.
            rgb: (H, W, 3) uint8, RGB order.
            depth_m: (H, W) float32 metres (0 / NaN invalid), or None (no depth file written).
            camera: intrinsics, ``T_camera_world`` and size (must match ``rgb``).
            gts: GT instances, in the order of the masks.
            masks: per GT, (H, W) bool unoccluded silhouette; None = no masks written and an
                empty GT info (visib_fract 0).
            masks_visib: per GT, (H, W) bool visible part; None with masks given = no occlusion
                assumed (masks_visib = masks, with a warning).
            px_counts_all: per GT, silhouette size including the part outside the image (default:
                the in-image mask size).
            bboxes_obj: per GT, (4,) xywh box of the whole silhouette (may extend beyond the
                image, as in BOP); default: the in-image mask's box.
        Returns:
            The computed GT infos, one per GT.
        Raises:
            InvalidInputError: wrong shapes or dtypes, duplicate im_id, writer closed.
        """
        if self._closed:
            raise InvalidInputError("BopSceneWriter.add_image: writer already closed")
        im_id = int(im_id)
        if im_id in self._scene_camera:
            raise InvalidInputError(f"BopSceneWriter.add_image: duplicate im_id {im_id} in scene {self.scene_id}")
        h, w = camera.height, camera.width
        rgb = np.asarray(rgb)
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise InvalidInputError(f"BopSceneWriter.add_image: rgb must be ({h}, {w}, 3) uint8, got {rgb.shape} {rgb.dtype}")
        gts = list(gts)
        n = len(gts)
        for name, seq in (("masks", masks), ("masks_visib", masks_visib), ("px_counts_all", px_counts_all),
                          ("bboxes_obj", bboxes_obj)):
            if seq is not None and len(seq) != n:
                raise InvalidInputError(f"BopSceneWriter.add_image: {len(seq)} {name} for {n} GT instances")
        if masks is None and masks_visib is not None:
            raise InvalidInputError("BopSceneWriter.add_image: masks_visib given without masks")
        if masks is not None and masks_visib is None and n > 0:
            logger.warning("scene %d image %d: no masks_visib given; assuming no occlusion", self.scene_id, im_id)

        stem = f"{im_id:06d}"
        _write_png(self.scene_dir / "rgb" / f"{stem}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        depth_valid = None
        if depth_m is not None:
            depth_m = np.asarray(depth_m)
            if depth_m.shape != (h, w):
                raise InvalidInputError(f"BopSceneWriter.add_image: depth_m must be ({h}, {w}), got {depth_m.shape}")
            units = depth_m_to_png_units(depth_m, self.depth_scale)
            _write_png(self.scene_dir / "depth" / f"{stem}.png", units)
            depth_valid = units > 0

        infos = []
        for gt_id in range(n):
            mask = mask_visib = None
            if masks is not None:
                mask = np.asarray(masks[gt_id], dtype=bool)
                mask_visib = mask if masks_visib is None else np.asarray(masks_visib[gt_id], dtype=bool)
                if mask.shape != (h, w) or mask_visib.shape != (h, w):
                    raise InvalidInputError(
                        f"BopSceneWriter.add_image: masks must be ({h}, {w}), got {mask.shape} / {mask_visib.shape}"
                    )
                _write_png(self.scene_dir / "mask" / f"{stem}_{gt_id:06d}.png", mask.astype(np.uint8) * 255)
                _write_png(self.scene_dir / "mask_visib" / f"{stem}_{gt_id:06d}.png", mask_visib.astype(np.uint8) * 255)
            infos.append(compute_gt_info(mask, mask_visib, depth_valid, None if px_counts_all is None else px_counts_all[gt_id],
                                         None if bboxes_obj is None else bboxes_obj[gt_id]))

        R_w2c, t_w2c = _Rt_mm_from_T(camera.T_camera_world)
        self._scene_camera[im_id] = {
            "cam_K": [float(v) for v in camera.K.reshape(-1)],
            "cam_R_w2c": R_w2c,
            "cam_t_w2c": t_w2c,
            "depth_scale": self.depth_scale,
        }
        entries = []
        for gt in gts:
            R, t = _Rt_mm_from_T(gt.T_camera_object)
            entries.append({"cam_R_m2c": R, "cam_t_m2c": t, "obj_id": int(gt.obj_id)})
        self._scene_gt[im_id] = entries
        self._scene_gt_info[im_id] = [info.to_json() for info in infos]
        return infos

    def close(self) -> None:
        """Write ``scene_camera.json``, ``scene_gt.json`` and ``scene_gt_info.json``."""
        if self._closed:
            return
        _write_json(self.scene_dir / "scene_camera.json", self._scene_camera)
        _write_json(self.scene_dir / "scene_gt.json", self._scene_gt)
        _write_json(self.scene_dir / "scene_gt_info.json", self._scene_gt_info)
        self._closed = True


# The largest finite rotation group of a rigid object (the cube's) has 24 elements; more
# transforms than that come from discretizing a continuous symmetry.
MAX_DISCRETE_SYMMETRIES = 23


def models_info_entry(model: ObjectModel, symmetries: Mapping | None = None) -> dict:
    """BOP ``models_info.json`` entry (millimetres) of one model.

    Args:
        model: the model (metres).
        symmetries: optional ``{"symmetries_discrete": [...16 floats, mm], "symmetries_continuous":
            [{"axis", "offset"(mm)}]}`` written verbatim. Default: every non-identity transform of
            ``model.symmetries`` as a discrete symmetry (row-major 4x4, translation in mm).
    """
    v_mm = np.asarray(model.vertices, dtype=np.float64) * MM_PER_M
    lo, hi = v_mm.min(0), v_mm.max(0)
    entry = {
        "diameter": float(model.diameter_m * MM_PER_M),
        "min_x": float(lo[0]), "min_y": float(lo[1]), "min_z": float(lo[2]),
        "size_x": float(hi[0] - lo[0]), "size_y": float(hi[1] - lo[1]), "size_z": float(hi[2] - lo[2]),
    }
    if symmetries is not None:
        entry.update({k: v for k, v in symmetries.items() if k in ("symmetries_discrete", "symmetries_continuous")})
        return entry
    non_identity = [T for T in np.asarray(model.symmetries, dtype=np.float64) if not np.allclose(T, np.eye(4), atol=1e-9)]
    if len(non_identity) > MAX_DISCRETE_SYMMETRIES:
        raise InvalidInputError(
            f"models_info_entry({model.name}): {len(non_identity)} symmetry transforms look like a discretized "
            "continuous symmetry; pass symmetries= with its 'symmetries_continuous' entry instead"
        )
    discrete = []
    for T in non_identity:
        T_mm = T.copy()
        T_mm[:3, 3] *= MM_PER_M
        discrete.append([float(v) for v in T_mm.reshape(-1)])
    if discrete:
        entry["symmetries_discrete"] = discrete
    return entry


def write_models_info(
    models_dir: str | Path, models: Sequence[ObjectModel], symmetries: Mapping[int, Mapping] | None = None
) -> Path:
    """Write ``models_dir/models_info.json`` (see :func:`models_info_entry`). Returns its path."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    info = {m.object_id: models_info_entry(m, (symmetries or {}).get(m.object_id)) for m in models}
    path = models_dir / "models_info.json"
    _write_json(path, info)
    return path


def write_bop_ply(path: str | Path, model: ObjectModel) -> Path:
    """Write one model as a BOP PLY (binary, millimetres) with its texture next to it.

    Vertex properties: ``x y z nx ny nz`` [``red green blue``] [``texture_u texture_v``] and the
    header comment ``TextureFile <stem>.png`` when the model has a texture (the layout of the
    official BOP models, which :func:`pose_node.onboarding.mesh_loading.load_bop_models` reads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(model.vertices, dtype=np.float64) * MM_PER_M
    normals = np.asarray(model.normals, dtype=np.float32)
    faces = np.asarray(model.faces, dtype=np.int32)
    has_uv = model.uv is not None and model.texture is not None
    has_color = model.vertex_colors is not None
    dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if has_color:
        dtype += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if has_uv:
        dtype += [("texture_u", "<f4"), ("texture_v", "<f4")]
    vert = np.zeros(len(v), dtype=dtype)
    vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
    vert["nx"], vert["ny"], vert["nz"] = normals[:, 0], normals[:, 1], normals[:, 2]
    if has_color:
        c = np.asarray(model.vertex_colors, dtype=np.uint8)
        vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    header = ["ply", "format binary_little_endian 1.0"]
    if has_uv:
        texture_name = path.with_suffix(".png").name
        header.append(f"comment TextureFile {texture_name}")
        uv = np.asarray(model.uv, dtype=np.float32)
        vert["texture_u"], vert["texture_v"] = uv[:, 0], uv[:, 1]
        _write_png(path.with_suffix(".png"), cv2.cvtColor(np.asarray(model.texture, dtype=np.uint8), cv2.COLOR_RGB2BGR))
    header.append(f"element vertex {len(v)}")
    header += [f"property float {n}" for n in ("x", "y", "z", "nx", "ny", "nz")]
    if has_color:
        header += [f"property uchar {n}" for n in ("red", "green", "blue")]
    if has_uv:
        header += ["property float texture_u", "property float texture_v"]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    face_rec = np.zeros(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rec["n"] = 3
    face_rec["idx"] = faces
    with path.open("wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vert.tobytes())
        f.write(face_rec.tobytes())
    return path


def write_bop_models(
    models_dir: str | Path, models: Sequence[ObjectModel], symmetries: Mapping[int, Mapping] | None = None
) -> list[Path]:
    """Write every model as ``obj_XXXXXX.ply`` (+ texture) and ``models_info.json``."""
    models_dir = Path(models_dir)
    paths = [write_bop_ply(models_dir / f"obj_{m.object_id:06d}.ply", m) for m in models]
    write_models_info(models_dir, models, symmetries)
    return paths


def _target_entry(entry: Target | Mapping, multiview: bool) -> dict:
    if isinstance(entry, Target):
        scene_id, im_ids, obj_id, inst_count = entry.scene_id, entry.im_ids, entry.obj_id, entry.inst_count
    else:
        scene_id, obj_id, inst_count = entry["scene_id"], entry["obj_id"], entry["inst_count"]
        im_ids = tuple(entry["im_ids"]) if "im_ids" in entry else (entry["im_id"],)
    if int(inst_count) < 1:
        raise InvalidInputError(f"target {entry}: inst_count must be >= 1")
    if multiview:
        return {"scene_id": int(scene_id), "im_ids": [int(i) for i in im_ids], "obj_id": int(obj_id), "inst_count": int(inst_count)}
    if len(im_ids) != 1:
        raise InvalidInputError(f"target {entry}: a BOP19 target has exactly one image, got im_ids={list(im_ids)}")
    return {"im_id": int(im_ids[0]), "inst_count": int(inst_count), "obj_id": int(obj_id), "scene_id": int(scene_id)}


def _write_targets(path: str | Path, entries: Iterable[Target | Mapping], multiview: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_target_entry(e, multiview) for e in entries]
    path.write_text("[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n]\n")
    return path


def write_targets_bop19(path: str | Path, entries: Iterable[Target | Mapping]) -> Path:
    """Write BOP19 targets ``[{im_id, inst_count, obj_id, scene_id}]``.

    Args:
        entries: :class:`Target` with one image, or mappings with ``scene_id, im_id, obj_id,
            inst_count``.
    """
    return _write_targets(path, entries, multiview=False)


def write_targets_multiview(path: str | Path, entries: Iterable[Target | Mapping]) -> Path:
    """Write multi-view targets ``[{scene_id, im_ids: [...], obj_id, inst_count}]``."""
    return _write_targets(path, entries, multiview=True)


BOP_CSV_HEADER = ("scene_id", "im_id", "obj_id", "score", "R", "t", "time")


def write_estimates_csv(path: str | Path, estimates: Iterable[BopEstimate]) -> Path:
    """Write estimates in the BOP19 results format.

    ``R``: 9 space-separated values, row-major; ``t``: 3 values in millimetres; ``time``: seconds
    for the whole image (-1 when unknown).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(BOP_CSV_HEADER)
        for e in estimates:
            R, t = _Rt_mm_from_T(e.T_camera_object)
            w.writerow([
                int(e.scene_id), int(e.im_id), int(e.obj_id), repr(float(e.score)),
                " ".join(repr(v) for v in R), " ".join(repr(v) for v in t), repr(float(e.time_s)),
            ])
    return path


def read_estimates_csv(path: str | Path) -> list[BopEstimate]:
    """Read a BOP19 results CSV (the inverse of :func:`write_estimates_csv`)."""
    path = Path(path)
    if not path.is_file():
        raise BopFormatError(f"{path}: file not found")
    out = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(BOP_CSV_HEADER) - set(reader.fieldnames or ())
        if missing:
            raise BopFormatError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            R = [float(v) for v in row["R"].split()]
            t = [float(v) for v in row["t"].split()]
            if len(R) != 9 or len(t) != 3:
                raise BopFormatError(f"{path}: row {reader.line_num}: R needs 9 values and t 3")
            out.append(BopEstimate(
                scene_id=int(row["scene_id"]), im_id=int(row["im_id"]), obj_id=int(row["obj_id"]),
                score=float(row["score"]), T_camera_object=_T_from_Rt_mm(R, t), time_s=float(row["time"]),
            ))
    return out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class _SceneCache:
    camera: dict[int, dict]
    gt: dict[int, list] | None = None
    gt_info: dict[int, list] | None = None
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)


class BopDataset:
    """Reader of a BOP dataset split (scene-wise format); API in metres.

    Args:
        root: dataset directory (holds ``models/`` and the split folder).
        split: split folder name, e.g. ``test`` or ``test_primesense``.
    Raises:
        BopFormatError: the split folder does not exist.
    """

    IMAGE_DIRS = ("rgb", "gray")
    IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif")

    def __init__(self, root: str | Path, split: str = "test"):
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise BopFormatError(f"{self.split_dir}: split folder not found")
        self._scenes: dict[int, _SceneCache] = {}
        self._models: dict[str, list[ObjectModel]] = {}

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def scene_dir(self, scene_id: int) -> Path:
        return self.split_dir / f"{int(scene_id):06d}"

    def scene_ids(self) -> list[int]:
        return sorted(int(p.name) for p in self.split_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def _scene(self, scene_id: int) -> _SceneCache:
        scene_id = int(scene_id)
        if scene_id not in self._scenes:
            raw = _read_json(self.scene_dir(scene_id) / "scene_camera.json")
            self._scenes[scene_id] = _SceneCache(camera={int(k): v for k, v in raw.items()})
        return self._scenes[scene_id]

    def image_ids(self, scene_id: int) -> list[int]:
        return sorted(self._scene(scene_id).camera)

    def _camera_entry(self, scene_id: int, im_id: int) -> dict:
        cams = self._scene(scene_id).camera
        if int(im_id) not in cams:
            raise BopFormatError(f"{self.scene_dir(scene_id) / 'scene_camera.json'}: no entry for image {im_id}")
        return cams[int(im_id)]

    def _find_image(self, scene_id: int, im_id: int, dirs: Sequence[str]) -> Path | None:
        for d in dirs:
            for ext in self.IMAGE_EXTS:
                p = self.scene_dir(scene_id) / d / f"{int(im_id):06d}{ext}"
                if p.is_file():
                    return p
        return None

    def image_size(self, scene_id: int, im_id: int) -> tuple[int, int]:
        """(width, height) in pixels, from the image file header."""
        cache = self._scene(scene_id)
        if int(im_id) not in cache.sizes:
            path = self._find_image(scene_id, im_id, (*self.IMAGE_DIRS, "depth"))
            if path is None:
                raise BopFormatError(f"{self.scene_dir(scene_id)}: no rgb/gray/depth image for im_id {im_id}")
            from PIL import Image  # header only; cheaper than decoding the image

            with Image.open(path) as im:
                cache.sizes[int(im_id)] = (int(im.width), int(im.height))
        return cache.sizes[int(im_id)]

    def camera(self, scene_id: int, im_id: int) -> BopImageCamera:
        e = self._camera_entry(scene_id, im_id)
        T_camera_world = _T_from_Rt_mm(e["cam_R_w2c"], e["cam_t_w2c"]) if "cam_R_w2c" in e else np.eye(4)
        width, height = self.image_size(scene_id, im_id)
        return BopImageCamera(
            K=np.asarray(e["cam_K"], dtype=np.float64).reshape(3, 3),
            T_camera_world=T_camera_world,
            depth_scale=float(e.get("depth_scale", 1.0)),
            width=width,
            height=height,
        )

    def rgb(self, scene_id: int, im_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB (gray datasets are replicated to 3 channels)."""
        path = self._find_image(scene_id, im_id, self.IMAGE_DIRS)
        if path is None:
            raise BopFormatError(f"{self.scene_dir(scene_id)}: no rgb/gray image for im_id {im_id}")
        im = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if im is None:
            raise BopFormatError(f"{path}: could not decode image")
        return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)

    def has_depth(self, scene_id: int, im_id: int) -> bool:
        return self._find_image(scene_id, im_id, ("depth",)) is not None

    def depth_m(self, scene_id: int, im_id: int) -> np.ndarray:
        """(H, W) float32 metres, 0 where invalid."""
        path = self._find_image(scene_id, im_id, ("depth",))
        if path is None:
            raise BopFormatError(f"{self.scene_dir(scene_id)}: no depth image for im_id {im_id}")
        raw = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
        if raw is None:
            raise BopFormatError(f"{path}: could not decode depth image")
        scale = float(self._camera_entry(scene_id, im_id).get("depth_scale", 1.0))
        return (raw.astype(np.float64) * (scale / MM_PER_M)).astype(np.float32)

    def gts(self, scene_id: int, im_id: int) -> list[BopGt]:
        cache = self._scene(scene_id)
        if cache.gt is None:
            raw = _read_json(self.scene_dir(scene_id) / "scene_gt.json")
            cache.gt = {int(k): v for k, v in raw.items()}
        return [BopGt(int(g["obj_id"]), _T_from_Rt_mm(g["cam_R_m2c"], g["cam_t_m2c"])) for g in cache.gt.get(int(im_id), [])]

    def has_gt_info(self, scene_id: int) -> bool:
        """Whether the scene has ``scene_gt_info.json`` (real datasets and recordings may not)."""
        return (self.scene_dir(scene_id) / "scene_gt_info.json").is_file()

    def has_mask_visib(self, scene_id: int, im_id: int) -> bool:
        """Whether every GT instance of the image has its ``mask_visib`` file (True without GT)."""
        folder = self.scene_dir(scene_id) / "mask_visib"
        return all((folder / f"{int(im_id):06d}_{g:06d}.png").is_file() for g in range(len(self.gts(scene_id, im_id))))

    def gt_infos(self, scene_id: int, im_id: int) -> list[BopGtInfo]:
        cache = self._scene(scene_id)
        if cache.gt_info is None:
            raw = _read_json(self.scene_dir(scene_id) / "scene_gt_info.json")
            cache.gt_info = {int(k): v for k, v in raw.items()}
        return [BopGtInfo.from_json(d) for d in cache.gt_info.get(int(im_id), [])]

    def _mask(self, kind: str, scene_id: int, im_id: int, gt_index: int) -> np.ndarray:
        path = self.scene_dir(scene_id) / kind / f"{int(im_id):06d}_{int(gt_index):06d}.png"
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise BopFormatError(f"{path}: mask not found or unreadable")
        return m > 0

    def mask(self, scene_id: int, im_id: int, gt_index: int) -> np.ndarray:
        """(H, W) bool unoccluded silhouette of GT ``gt_index``."""
        return self._mask("mask", scene_id, im_id, gt_index)

    def mask_visib(self, scene_id: int, im_id: int, gt_index: int) -> np.ndarray:
        """(H, W) bool visible part of GT ``gt_index``."""
        return self._mask("mask_visib", scene_id, im_id, gt_index)

    def view(self, scene_id: int, im_id: int, *, with_depth: bool = True, name: str | None = None) -> View:
        """The image as a core :class:`View` (camera ``T_world_camera = inv(T_camera_world)``).

        Args:
            with_depth: attach the depth map (metres) if the dataset has one.
            name: camera name; default ``im<im_id>``.
        """
        cam = self.camera(scene_id, im_id)
        name = name or f"im{int(im_id)}"
        depth = self.depth_m(scene_id, im_id) if with_depth and self.has_depth(scene_id, im_id) else None
        return View(camera=cam.to_camera(frame_id=f"{name}_optical_frame"), rgb=self.rgb(scene_id, im_id), depth=depth, name=name)

    def models_dir(self, subdir: str = "models") -> Path:
        return self.root / subdir

    def models(self, subdir: str = "models") -> list[ObjectModel]:
        """Object models (metres) from ``root/<subdir>`` (``models`` or ``models_eval``), cached."""
        if subdir not in self._models:
            from pose_node.onboarding.mesh_loading import load_bop_models

            self._models[subdir] = load_bop_models(self.models_dir(subdir))
        return self._models[subdir]

    def models_info(self, subdir: str = "models") -> dict[int, dict]:
        """Raw ``models_info.json`` (millimetres) keyed by int obj_id."""
        raw = _read_json(self.models_dir(subdir) / "models_info.json")
        return {int(k): v for k, v in raw.items()}

    def targets(self, path: str | Path) -> list[Target]:
        """Read BOP19 (``im_id``) or multi-view (``im_ids``) targets; relative paths are taken
        relative to the dataset root first, then the working directory."""
        path = Path(path)
        if not path.is_absolute() and (self.root / path).is_file():
            path = self.root / path
        return read_targets(path)


def read_targets(path: str | Path) -> list[Target]:
    """Read a targets JSON: entries with ``im_id`` (BOP19) or ``im_ids`` (multi-view)."""
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise BopFormatError(f"{path}: expected a JSON list of targets")
    out = []
    for i, e in enumerate(raw):
        try:
            im_ids = tuple(int(v) for v in e["im_ids"]) if "im_ids" in e else (int(e["im_id"]),)
            target = Target(int(e["scene_id"]), im_ids, int(e["obj_id"]), int(e.get("inst_count", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise BopFormatError(f"{path}: target #{i} is malformed ({exc!r}): {e}") from exc
        if not im_ids or target.inst_count < 1:
            raise BopFormatError(f"{path}: target #{i} needs at least one image and inst_count >= 1: {e}")
        out.append(target)
    return out


__all__ = [
    "BopDataset", "BopEstimate", "BopFormatError", "BopGt", "BopGtInfo", "BopImageCamera", "BopSceneWriter",
    "DEFAULT_DEPTH_SCALE_MM", "Target", "bbox_xywh_from_mask", "compute_gt_info", "depth_m_to_png_units",
    "models_info_entry", "read_estimates_csv", "read_targets", "write_bop_models", "write_bop_ply",
    "write_estimates_csv", "write_models_info", "write_targets_bop19", "write_targets_multiview",
]
