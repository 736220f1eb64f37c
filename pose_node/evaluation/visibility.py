"""GT visibility (``scene_gt_info``) for datasets that do not ship it, and targets derived from it.

Real BOP test sets and user recordings may lack ``scene_gt_info.json`` (and ``mask/``,
``mask_visib/``). Pose scoring needs the visible fraction of each GT instance in two places: to pick
the valid GT of an image (the ``inst_count`` most visible instances of each target object) and to
build targets (BOP19: instances with ``visib_fract >= 0.1``). This module computes it as the BOP
toolkit's ``calc_gt_info.py`` does, from the GT models rendered at the GT poses:

- each instance is rendered alone on a canvas three times the image size (the image in its centre),
  so ``px_count_all`` and ``bbox_obj`` include the part outside the image;
- its visible part is where the rendered surface is at most ``delta`` (15 mm) behind the test depth
  image, or where the test depth is missing (bop19 visibility mode, the one VSD uses);
- images without a depth file use the z-buffer of all GT instances rendered together as their test
  depth (occlusion between annotated objects only; unannotated occluders are not seen). This is
  stated in the report of :class:`GtInfoSource`.

Nothing is written into the dataset folder (it may be read-only): computed entries live in memory
and, optionally, in a JSON cache file next to the results.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pose_node.core.errors import StageUnavailableError
from pose_node.datasets.bop import BopDataset, BopGt, BopGtInfo, Target, bbox_xywh_from_mask, compute_gt_info
from pose_node.evaluation import metrics

logger = logging.getLogger(__name__)

#: ``calc_gt_info.py``: tolerance of the visibility test against the test depth, metres.
BOP_GT_INFO_DELTA_M = 0.015
#: BOP19 targets: GT instances at least this visible are to be found.
TARGET_VISIB_FRACT_MIN = 0.1
#: The canvas for the whole silhouette is this many image sizes wide and high (``calc_gt_info.py``).
CANVAS_FACTOR = 3
CACHE_FORMAT = "pose_eval gt_info cache v1"


def render_gt_scene_depth(depth_renderer: metrics.DepthRenderer, K: np.ndarray, width: int, height: int,
                          gts: Sequence[BopGt]) -> np.ndarray:
    """Z-buffer of every GT instance of an image rendered together.

    Args:
        depth_renderer: see :data:`metrics.DepthRenderer`.
        K: (3, 3) intrinsics, pixels; width, height: image size, pixels.
        gts: the image's GT instances (``T_camera_object`` metres).
    Returns:
        (H, W) float32 metres, nearest GT surface, 0 where no instance is rendered.
    """
    nearest = np.full((int(height), int(width)), np.inf, dtype=np.float32)
    for gt in gts:
        d = depth_renderer(gt.obj_id, K, gt.T_camera_object, int(width), int(height))
        nearest = np.where(d > 0, np.minimum(nearest, d), nearest)
    return np.where(np.isfinite(nearest), nearest, 0.0).astype(np.float32)


def gt_infos_from_render(
    depth_renderer: metrics.DepthRenderer,
    K: np.ndarray,
    width: int,
    height: int,
    gts: Sequence[BopGt],
    depth_m: np.ndarray | None,
    delta_m: float = BOP_GT_INFO_DELTA_M,
) -> list[BopGtInfo]:
    """``scene_gt_info`` entries of one image, as ``bop_toolkit calc_gt_info.py`` computes them.

    Args:
        depth_renderer: renders one model at a pose (:data:`metrics.DepthRenderer`); called once
            per instance at ``CANVAS_FACTOR`` times the image size.
        K: (3, 3) intrinsics, pixels; width, height: image size, pixels.
        gts: the image's GT instances, in ``scene_gt`` order.
        depth_m: (H, W) test depth, metres, 0 = missing; None = the image has no depth file: the
            GT instances' own z-buffer stands in for it (``px_count_valid`` is then 0).
        delta_m: visibility tolerance, metres.
    Returns:
        One :class:`BopGtInfo` per instance.
    """
    w, h = int(width), int(height)
    K = np.asarray(K, dtype=np.float64)
    K_canvas = K.copy()
    K_canvas[0, 2] += w * (CANVAS_FACTOR - 1) // 2
    K_canvas[1, 2] += h * (CANVAS_FACTOR - 1) // 2
    x0, y0 = w * (CANVAS_FACTOR - 1) // 2, h * (CANVAS_FACTOR - 1) // 2
    offset = np.array([x0, y0, 0, 0], dtype=np.int64)
    canvases = [depth_renderer(gt.obj_id, K_canvas, gt.T_camera_object, CANVAS_FACTOR * w, CANVAS_FACTOR * h) for gt in gts]
    crops = [c[y0:y0 + h, x0:x0 + w] for c in canvases]
    if depth_m is None:
        stack = np.stack([np.where(c > 0, c, np.inf) for c in crops]) if crops else np.full((1, h, w), np.inf)
        nearest = stack.min(0)
        depth_test = np.where(np.isfinite(nearest), nearest, 0.0)
        depth_valid = None
        # Same renders on both sides: a visible surface equals the z-buffer exactly, no tolerance.
        delta_m = 0.0
    else:
        depth_test = np.asarray(depth_m, dtype=np.float64)
        depth_valid = depth_test > 0
    dist_test = metrics.depth_to_distance(depth_test, K)
    infos = []
    for canvas, crop in zip(canvases, crops):
        full = canvas > 0
        visib = metrics.estimate_visib_mask_gt(dist_test, metrics.depth_to_distance(crop, K), delta_m)
        bbox_obj = bbox_xywh_from_mask(full)
        if bbox_obj[0] >= 0:
            bbox_obj = bbox_obj - offset
        infos.append(compute_gt_info(crop > 0, visib, depth_valid, px_count_all=int(full.sum()), bbox_obj=bbox_obj))
    return infos


class GtInfoSource:
    """``scene_gt_info`` of a dataset: read from the scene's file when it has one, else computed
    with :func:`gt_infos_from_render` on first use, kept in memory, and saved to ``cache_path``
    by :meth:`save` (reused by a later run on the same dataset, split and ``delta_m``).

    Args:
        dataset: the dataset.
        depth_renderer: renders the GT models (the VSD renderer); None: computing raises.
        cache_path: JSON cache of computed entries (None: memory only). Never inside the dataset.
        delta_m: visibility tolerance against the test depth, metres.
    """

    def __init__(self, dataset: BopDataset, depth_renderer: metrics.DepthRenderer | None = None,
                 cache_path: str | Path | None = None, delta_m: float = BOP_GT_INFO_DELTA_M):
        self.dataset = dataset
        self.depth_renderer = depth_renderer
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.delta_m = float(delta_m)
        self._computed: dict[tuple[int, int], list[BopGtInfo]] = {}
        self._from_cache: dict[tuple[int, int], list[BopGtInfo]] = self._load_cache()
        self._has_file: dict[int, bool] = {}
        self.n_computed = 0
        self.n_cache_hits = 0
        self.images_without_visibility: set[tuple[int, int]] = set()  # targets taken as given there

    def _cache_header(self) -> dict:
        return {"format": CACHE_FORMAT, "dataset": str(self.dataset.root.resolve()), "split": self.dataset.split,
                "delta_m": self.delta_m}

    def _load_cache(self) -> dict[tuple[int, int], list[BopGtInfo]]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            raw = json.loads(self.cache_path.read_text())
        except json.JSONDecodeError as exc:
            logger.warning("ignoring GT info cache %s: invalid JSON (%s)", self.cache_path, exc)
            return {}
        if {k: raw.get(k) for k in self._cache_header()} != self._cache_header():
            logger.info("GT info cache %s is for another dataset, split or delta; recomputing", self.cache_path)
            return {}
        return {(int(s), int(i)): [BopGtInfo.from_json(d) for d in entries]
                for s, images in raw.get("scenes", {}).items() for i, entries in images.items()}

    def has_file(self, scene_id: int) -> bool:
        """Whether the scene's own ``scene_gt_info.json`` is used."""
        if scene_id not in self._has_file:
            self._has_file[scene_id] = self.dataset.has_gt_info(scene_id)
        return self._has_file[scene_id]

    def known(self, scene_id: int, im_id: int) -> bool:
        """Whether the image's GT infos are at hand without rendering (file, memory or cache)."""
        key = (int(scene_id), int(im_id))
        return self.has_file(scene_id) or key in self._computed or key in self._from_cache

    def infos(self, scene_id: int, im_id: int) -> list[BopGtInfo]:
        """The image's GT infos, in ``scene_gt`` order.

        Raises:
            StageUnavailableError: the scene has no ``scene_gt_info.json`` and nothing can render
                the models.
        """
        if self.has_file(scene_id):
            return self.dataset.gt_infos(scene_id, im_id)
        key = (int(scene_id), int(im_id))
        if key in self._computed:
            return self._computed[key]
        gts = self.dataset.gts(scene_id, im_id)
        cached = self._from_cache.get(key)
        if cached is not None and len(cached) == len(gts):
            self.n_cache_hits += 1
            self._computed[key] = cached
            return cached
        if self.depth_renderer is None:
            raise StageUnavailableError(
                f"scene {scene_id}: no scene_gt_info.json and no renderer to compute the GT visibility from the models")
        cam = self.dataset.camera(scene_id, im_id)
        depth = self.dataset.depth_m(scene_id, im_id) if self.dataset.has_depth(scene_id, im_id) else None
        infos = gt_infos_from_render(self.depth_renderer, cam.K, cam.width, cam.height, gts, depth, self.delta_m)
        self.n_computed += 1
        self._computed[key] = infos
        return infos

    def save(self) -> Path | None:
        """Write the computed entries (with earlier cached ones) to ``cache_path``; None when
        there is no cache path or nothing was computed."""
        if self.cache_path is None or not self._computed:
            return None
        scenes: dict[str, dict[str, list]] = {}
        for (s, i), infos in sorted({**self._from_cache, **self._computed}.items()):
            scenes.setdefault(str(s), {})[str(i)] = [info.to_json() for info in infos]
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_path.write_text(json.dumps({**self._cache_header(), "scenes": scenes}) + "\n")
        return self.cache_path

    def report(self, scene_ids: Sequence[int]) -> dict:
        """Where the visibility of the evaluated scenes came from (for the results JSON):
        ``source`` is ``scene_gt_info.json``, ``computed`` (rendered or from the cache),
        ``targets as given`` (not needed anywhere) or ``mixed`` (some scenes have the file)."""
        scene_ids = sorted(set(int(s) for s in scene_ids))
        missing = [s for s in scene_ids if not self.has_file(s)]
        if not missing:
            source = "scene_gt_info.json"
        elif len(missing) < len(scene_ids):
            source = "mixed"
        else:
            source = "computed" if self.n_computed + self.n_cache_hits else "targets as given"
        out = {"source": source, "scenes_without_gt_info": missing}
        if missing:
            out.update({
                "method": (f"GT models rendered at the GT poses (bop_toolkit calc_gt_info: {CANVAS_FACTOR}x canvas, visible "
                           f"where <= {self.delta_m * 1000:g} mm behind the test depth; images without depth: the GT "
                           "instances' own z-buffer)"),
                "n_images_computed": self.n_computed,
                "n_images_from_cache": self.n_cache_hits,
                "n_images_targets_as_given": len(self.images_without_visibility),
                "cache": None if self.cache_path is None else str(self.cache_path),
            })
        return out


def derive_targets(dataset: BopDataset, gt_info: GtInfoSource, visib_fract_min: float = TARGET_VISIB_FRACT_MIN,
                   max_targets: int | None = None) -> list[Target]:
    """BOP19 single-image targets from the GT: per image and object, ``inst_count`` = its GT
    instances with ``visib_fract >= visib_fract_min`` (the rule BOP used for
    ``test_targets_bop19.json``); objects with none are left out.

    Args:
        max_targets: stop after this many targets (visibility of later images is not computed).
    Returns:
        Targets ordered by scene, image and object id.
    """
    targets: list[Target] = []
    for scene_id in dataset.scene_ids():
        for im_id in dataset.image_ids(scene_id):
            counts: dict[int, int] = {}
            for gt, info in zip(dataset.gts(scene_id, im_id), gt_info.infos(scene_id, im_id)):
                if info.visib_fract >= visib_fract_min:
                    counts[gt.obj_id] = counts.get(gt.obj_id, 0) + 1
            for obj_id in sorted(counts):
                if max_targets is not None and len(targets) >= max_targets:
                    return targets
                targets.append(Target(scene_id, (im_id,), obj_id, counts[obj_id]))
    return targets


__all__ = ["BOP_GT_INFO_DELTA_M", "CANVAS_FACTOR", "GtInfoSource", "TARGET_VISIB_FRACT_MIN", "derive_targets",
           "gt_infos_from_render", "render_gt_scene_depth"]
