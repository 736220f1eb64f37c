"""The detector: proposals of one view matched to the onboarded templates of known objects.

``Detector(models, config)`` onboards every object once (through the onboarding cache, so a
second start renders nothing), stacks their templates in a :class:`TemplateBank` and then,
per view:

1. proposals (timed as ``"proposals"``): RGB-D mode clusters the depth map
   (:func:`pose_node.detection.proposals_depth.depth_proposals`, gated by the known objects'
   diameter range); RGB mode runs :func:`pose_node.detection.proposals_rgb.rgb_proposals` when
   that module is installed, else the detector cannot be built (:class:`StageUnavailableError`).
2. cap: at most ``max_proposals_per_view`` proposals, highest proposal score first, go on
   (:func:`cap_proposals`; the counts found, matched and cut are reported with the timings).
3. matching (timed as ``"matching"``): masked crop-camera crops, descriptors, CNOS scores
   (mean of the top-k template similarities), per-object score thresholds, merging of depth
   proposals that cut one object in pieces (:meth:`Detector._merge_fragments`), class-agnostic
   mask NMS (several instances of one object survive when they do not overlap), pose priors
   from the best templates (:mod:`pose_node.detection.matching`).

The descriptors of the re-cropped templates are cached next to the onboarding files
(:func:`parts_cache_path`), so a warm start computes no descriptor at all; the matching path is
then run once on blank crops (``warmup``), so the first view is as fast as the others.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from pose_node.core.crop import crop_proposals
from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.types import Detection, ObjectModel, View, is_untextured
from pose_node.detection.matching import (
    MatchingConfig,
    TemplateBank,
    TemplateParts,
    describe_crops,
    match,
    nms_masks,
    priors_for_matches,
    texture_levels,
    template_parts,
    with_grey_variant,
)
from pose_node.detection.multiview import MultiViewEvidenceConfig, confirm_across_views
from pose_node.detection.proposal_types import Proposal, box_from_mask
from pose_node.detection.proposals_depth import DepthProposalConfig, depth_proposals
from pose_node.detection.verification import VerificationConfig, feasible_objects, object_size, proposal_geometry
from pose_node.features.backbones import Backbone, BackboneConfig
from pose_node.features.registry import create_backbone
from pose_node.onboarding.cache import RendererFactory, RendererPool, default_cache_dir, load_or_onboard, onboarding_cache_key
from pose_node.onboarding.templates import ObjectTemplates, TemplateConfig

if TYPE_CHECKING:  # the RGB proposal module is optional
    from pose_node.detection.proposals_rgb import RgbProposalConfig

logger = logging.getLogger(__name__)

DETECTOR_MODES: tuple[str, ...] = ("rgbd", "rgb")
RGB_PROPOSALS_MODULE = "pose_node.detection.proposals_rgb"


@dataclass(frozen=True)
class DetectorConfig:
    """Everything the detector needs.

    Attributes:
        mode: ``"rgbd"`` (depth proposals; views must carry depth) or ``"rgb"`` (RGB proposals).
        depth_proposals: settings of the depth proposals; with ``gate_by_diameter`` its
            ``min_object_diameter_m`` / ``max_object_diameter_m`` are replaced by the known
            objects' range widened by ``diameter_margin_fraction``.
        rgb_proposals: settings of the RGB proposals (None: that module's defaults).
        matching: crop, score, NMS and prior settings.
        templates: onboarding settings (every field is part of the onboarding cache key).
        backbone: the descriptor backbone (its ``device`` is replaced by ``device``).
        device: torch device of the backbone and the template bank (``cpu``, ``cuda:0``).
        gate_by_diameter: gate depth proposals by the objects' diameters (see above).
        diameter_margin_fraction: the gate is ``[(1 - m) * min, (1 + m) * max]`` diameters.
        object_score_thresholds: ``((object_id, threshold), ...)`` overriding
            ``matching.score_threshold`` per object.
        onboarding_batch_size: templates per backbone call while onboarding.
        merge_fragments: merge depth proposals of one object cut in pieces (see
            :meth:`Detector._merge_fragments`).
        merge_gap_px: pieces whose masks come this close (pixels) may be merged.
        warmup: run the matching path once on blank crops when the detector is built, so the
            first view is not slower than the others (the backend picks its kernels on the first
            call of each batch size; batch sizes 1..``warmup_max_batch`` are warmed).
        warmup_max_batch: see ``warmup``.
        max_proposals_per_view: at most this many proposals of a view (highest proposal score
            first) go to descriptors and matching, so a cluttered view's matching time is bounded;
            0: no cap. Unlike the proposal modules' own ``max_proposals`` (50), it holds for both
            sources and a time budget can tighten it per set (:mod:`pose_node.pipeline.budget`). The default
            leaves typical views untouched: path-traced cluttered workcells (640x480, 6-10 objects
            plus 3-8 distractors, 12 views) gave 11-16 depth proposals per view, median 14.
        verification: metric-size verification of proposals with depth samples: objects a
            proposal cannot be by its size are ruled out before the best object is chosen
            (:mod:`pose_node.detection.verification`).
        multiview: in RGB-D, detections the other cameras of the frame should confirm and do not
            are dropped (:meth:`Detector.confirm`, :mod:`pose_node.detection.multiview`; on the
            out-of-domain validation split recall 0.81 -> 0.80, precision 0.60 -> 0.65).
    """

    mode: str = "rgbd"
    depth_proposals: DepthProposalConfig = field(default_factory=DepthProposalConfig)
    rgb_proposals: RgbProposalConfig | None = None
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    templates: TemplateConfig = field(default_factory=lambda: TemplateConfig(template_size_px=96))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    device: str = "cpu"
    gate_by_diameter: bool = True
    diameter_margin_fraction: float = 0.25
    object_score_thresholds: tuple[tuple[int, float], ...] = ()
    onboarding_batch_size: int = 32
    merge_fragments: bool = True
    merge_gap_px: int = 3
    warmup: bool = True
    warmup_max_batch: int = 8
    max_proposals_per_view: int = 32
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    multiview: MultiViewEvidenceConfig = field(default_factory=MultiViewEvidenceConfig)

    def __post_init__(self) -> None:
        if self.mode not in DETECTOR_MODES:
            raise InvalidInputError(f"DetectorConfig.mode: expected one of {DETECTOR_MODES}, got {self.mode!r}")
        if not 0.0 <= self.diameter_margin_fraction < 1.0:
            raise InvalidInputError(f"DetectorConfig.diameter_margin_fraction: expected [0, 1), got {self.diameter_margin_fraction}")
        for name in ("onboarding_batch_size", "merge_gap_px", "warmup_max_batch"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"DetectorConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_proposals_per_view < 0:
            raise InvalidInputError(f"DetectorConfig.max_proposals_per_view: must be >= 0 (0: no cap), got {self.max_proposals_per_view}")
        thresholds = tuple((int(o), float(t)) for o, t in self.object_score_thresholds)
        if any(not -1.0 <= t <= 1.0 for _, t in thresholds):
            raise InvalidInputError(f"DetectorConfig.object_score_thresholds: thresholds must lie in [-1, 1], got {thresholds}")
        object.__setattr__(self, "object_score_thresholds", thresholds)


def load_rgb_proposals_module():
    """The RGB proposal module.

    Raises:
        StageUnavailableError: it is not installed (or fails to import).
    """
    try:
        return importlib.import_module(RGB_PROPOSALS_MODULE)
    except ImportError as exc:
        raise StageUnavailableError(f"RGB proposals not available ({RGB_PROPOSALS_MODULE}: {exc})") from exc


@dataclass(frozen=True)
class _Matched:
    """Match results of P proposals on the host: score (P,), object_index (P,), top_templates
    (P, k), R_camera_crop (P, 3, 3), focal_px (P,), accepted (P,) bool (score >= threshold)."""

    score: np.ndarray
    object_index: np.ndarray
    top_templates: np.ndarray
    R_camera_crop: np.ndarray
    focal_px: np.ndarray
    accepted: np.ndarray

    @staticmethod
    def concatenate(a: _Matched, a_rows: Sequence[int], b: _Matched, b_rows: Sequence[int]) -> _Matched:
        rows_a, rows_b = np.asarray(a_rows, dtype=np.int64), np.asarray(b_rows, dtype=np.int64)
        return _Matched(*(np.concatenate([getattr(a, name)[rows_a], getattr(b, name)[rows_b]])
                          for name in ("score", "object_index", "top_templates", "R_camera_crop", "focal_px", "accepted")))


def cap_proposals(proposals: Sequence[Proposal], max_proposals: int) -> list[Proposal]:
    """The ``max_proposals`` proposals of highest ``score`` (0: all), in their given order.

    Ties go to the earlier proposal (a stable sort), so the cut is deterministic; keeping the given
    order makes a cap that cuts nothing change nothing downstream.
    """
    if max_proposals == 0 or len(proposals) <= max_proposals:
        return list(proposals)
    order = sorted(range(len(proposals)), key=lambda i: -float(proposals[i].score))
    return [proposals[i] for i in sorted(order[:max_proposals])]


def _masks_touch(a: Proposal, b: Proposal, gap_px: int) -> bool:
    """Whether the masks come within ``gap_px`` pixels of each other (boxes checked first)."""
    ax0, ay0, ax1, ay1 = (int(v) for v in a.box_xyxy)
    bx0, by0, bx1, by1 = (int(v) for v in b.box_xyxy)
    if ax0 > bx1 + gap_px or bx0 > ax1 + gap_px or ay0 > by1 + gap_px or by0 > ay1 + gap_px:
        return False
    H, W = a.mask.shape
    x0, y0 = max(min(ax0, bx0) - gap_px, 0), max(min(ay0, by0) - gap_px, 0)
    x1, y1 = min(max(ax1, bx1) + gap_px, W), min(max(ay1, by1) + gap_px, H)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap_px + 1, 2 * gap_px + 1))
    grown = cv2.dilate(a.mask[y0:y1, x0:x1].astype(np.uint8), kernel).astype(bool)
    return bool((grown & b.mask[y0:y1, x0:x1]).any())


def _principal_extent_m(points: np.ndarray, percentile: float = 2.0) -> float:
    """Robust extent (metres) of (N, 3) points along their first principal axis (the
    ``percentile`` .. ``100 - percentile`` range, so flying pixels do not count)."""
    if len(points) < 4:
        return 0.0
    q = points.astype(np.float64) - points.mean(0)
    axis = np.linalg.eigh(q.T @ q)[1][:, -1]
    lo, hi = np.percentile(q @ axis, [percentile, 100.0 - percentile])
    return float(hi - lo)


#: Bump when the meaning of the cached template parts changes.
PARTS_CACHE_VERSION = 3
_PARTS_ARRAYS = ("global_", "colour", "R_template_crop", "crop_focal_px", "texture")


def parts_cache_path(cache_dir: Path, model: ObjectModel, backbone: Backbone, template_config: TemplateConfig,
                     matching: MatchingConfig) -> Path:
    """Where the matching descriptors of one object's templates are cached: ``match-<key>.npz``
    next to the onboarding files, the key a SHA-256 over the onboarding key and the descriptor
    settings (framing, colour histogram)."""
    payload = json.dumps({
        "version": PARTS_CACHE_VERSION, "onboarding": onboarding_cache_key(model, backbone.cache_key, template_config),
        "framing": matching.framing, "colour": matching.colour_weight > 0, "bins": matching.colour_bins,
        "min_brightness": matching.colour_min_brightness,
    }, sort_keys=True)
    return cache_dir / f"match-{hashlib.sha256(payload.encode()).hexdigest()}.npz"


def _load_parts(path: Path, num_templates: int) -> TemplateParts | None:
    """Cached parts, or None (missing, unreadable or of another template count: logged)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            parts = TemplateParts(**{name: data[name] for name in _PARTS_ARRAYS})
    except (OSError, EOFError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable matching cache file %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    if len(parts.global_) != num_templates or len(parts.colour) != num_templates:
        logger.warning("ignoring matching cache file %s: %d templates, expected %d", path, len(parts.global_), num_templates)
        return None
    return parts


def _save_parts(path: Path, parts: TemplateParts) -> None:
    """Atomic write (temporary file + rename); an unwritable directory only logs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".match-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{name: getattr(parts, name) for name in _PARTS_ARRAYS})
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("could not write the matching cache %s (%s)", path, exc)


class Detector:
    """CNOS-style detector of known objects in single views (see the module docstring).

    Args:
        models: the known objects (unique ids).
        config: settings.
        cache_dir: onboarding cache directory (None: the default, see
            :func:`pose_node.onboarding.cache.default_cache_dir`).
        backbone: a backbone to share with other stages (must match ``config.backbone``'s name);
            None: built from ``config.backbone`` on ``config.device``.
        renderer_factory: ``factory(S, S) -> Renderer`` for onboarding cache misses (None: a
            :class:`RendererPool` released once onboarding is done).
    Attributes:
        bank: the stacked templates.
        templates: object id -> :class:`ObjectTemplates`.
        onboarded_from_cache: object id -> whether its templates came from the cache.
        parts_from_cache: object id -> whether its matching descriptors came from the cache.
        onboarding_s: seconds spent onboarding (and building the bank).
    Raises:
        InvalidInputError: no models, duplicate ids, or invalid settings.
        StageUnavailableError: no renderer for onboarding, backbone weights missing, or RGB mode
            without the RGB proposal module.
    """

    def __init__(
        self, models: Sequence[ObjectModel], config: DetectorConfig = DetectorConfig(), *,
        cache_dir: str | Path | None = None, backbone: Backbone | None = None,
        renderer_factory: RendererFactory | None = None,
    ) -> None:
        models = list(models)
        if not models:
            raise InvalidInputError("Detector: needs at least one object model")
        ids = [m.object_id for m in models]
        if len(set(ids)) != len(ids):
            raise InvalidInputError(f"Detector: duplicate object ids {ids}")
        self.config = config
        self._rgb_module = None
        self.rgb_config = config.rgb_proposals
        if config.mode == "rgb":
            # Fail before onboarding when the RGB proposals cannot run (module or weights missing).
            self._rgb_module = load_rgb_proposals_module()
            self.rgb_config = replace(config.rgb_proposals or self._rgb_module.RgbProposalConfig(), device=config.device)
            load_weights = getattr(self._rgb_module, "load_rgb_proposal_model", None)
            if load_weights is not None:
                load_weights(self.rgb_config.resolved_weights_path(), self.rgb_config.device)
        if backbone is None:
            backbone = create_backbone(replace(config.backbone, device=config.device))
        elif backbone.name != config.backbone.name:
            raise InvalidInputError(f"backbone: got {backbone.name!r} but DetectorConfig.backbone.name is {config.backbone.name!r}")
        self.backbone = backbone
        started = time.perf_counter()
        self.templates: dict[int, ObjectTemplates] = {}
        self.onboarded_from_cache: dict[int, bool] = {}
        pool = RendererPool() if renderer_factory is None else None
        try:
            for model in models:
                templates, from_cache = load_or_onboard(model, renderer_factory or pool, backbone, config.templates, cache_dir,
                                                        batch_size=config.onboarding_batch_size)
                self.templates[model.object_id] = templates
                self.onboarded_from_cache[model.object_id] = from_cache
        finally:
            if pool is not None:
                pool.release()
        directory = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        self.parts_from_cache: dict[int, bool] = {}
        parts = []
        for model in models:
            templates = self.templates[model.object_id]
            path = parts_cache_path(directory, model, backbone, config.templates, config.matching)
            cached = _load_parts(path, templates.num_templates)
            self.parts_from_cache[model.object_id] = cached is not None
            if cached is None:
                cached = template_parts(templates, backbone, config.matching)
                _save_parts(path, cached)
            parts.append(cached)
        self.bank = TemplateBank.build([self.templates[i] for i in ids], parts, config.matching, backbone.device)
        self.onboarding_s = time.perf_counter() - started
        thresholds = dict(config.object_score_thresholds)
        self._thresholds = torch.tensor([thresholds.get(i, config.matching.score_threshold) for i in self.bank.object_ids],
                                        device=self.bank.device)
        by_id = {m.object_id: m for m in models}
        self._sizes = [object_size(by_id[i]) for i in self.bank.object_ids] if config.verification.enabled else []
        diameters = [m.diameter_m for m in models]
        self._diameters = {m.object_id: float(m.diameter_m) for m in models}
        self.depth_config = config.depth_proposals
        if config.gate_by_diameter:
            margin = config.diameter_margin_fraction
            self.depth_config = replace(config.depth_proposals, min_object_diameter_m=(1.0 - margin) * min(diameters),
                                        max_object_diameter_m=(1.0 + margin) * max(diameters))
        # The white-balance search of the colour part (MatchingConfig.colour_search_gain) lets
        # look-alikes score higher too; in RGB-D mode the size and texture checks remove them, in
        # RGB mode nothing does (out-of-domain validation split, RGB: recall 0.22 -> 0.31 but
        # precision 0.36 -> 0.19), so it runs in RGB-D mode only.
        self._colour_search = config.mode == "rgbd"
        self._untextured = torch.tensor([is_untextured(by_id[i]) for i in self.bank.object_ids], device=self.bank.device)
        if config.warmup:
            self._warm_up()
        logger.info("detector: %d objects (%d from cache), %d templates each, mode %s, ready in %.1f s", len(models),
                    sum(self.onboarded_from_cache.values()), self.bank.templates_per_object, config.mode, self.onboarding_s)

    def _warm_up(self) -> None:
        """Describe and match blank crops of every batch size up to ``warmup_max_batch``."""
        S = self.bank.size_px
        for batch in range(1, self.config.warmup_max_batch + 1):
            crops = torch.zeros(batch, 3, S, S, device=self.bank.device)
            masks = torch.ones(batch, S, S, device=self.bank.device)
            match(self.bank.embed(describe_crops(self.backbone, crops, masks, self.config.matching, query=self._colour_search)), self.bank,
                  self.config.matching.top_k)

    @property
    def object_ids(self) -> tuple[int, ...]:
        return self.bank.object_ids

    def proposals(self, view: View) -> list[Proposal]:
        """Class-agnostic proposals of one view (depth or RGB, by ``config.mode``).

        Raises:
            InvalidInputError: RGB-D mode and the view has no depth.
        """
        if self.config.mode == "rgbd":
            if view.depth is None:
                raise InvalidInputError(f"View[{view.name}].depth: DetectorConfig.mode 'rgbd' needs depth")
            return depth_proposals(view.depth, view.camera.K, self.depth_config, T_world_camera=view.camera.T_world_camera)
        backbone = self.backbone if self.backbone.name == "efficientnet_lite0" else None
        return self._rgb_module.rgb_proposals(view.rgb, self.rgb_config, backbone=backbone)

    def match_proposals(self, view: View, proposals: Sequence[Proposal], *, object_ids: Sequence[int] | None = None,
                        view_index: int = 0) -> list[Detection]:
        """Identify proposals (see the module docstring, step 3).

        Args:
            view: the view the proposals come from.
            proposals: its proposals.
            object_ids: objects that may be detected (None: all known objects).
            view_index: stored in each detection.
        Returns:
            Detections, best score first, at most ``matching.max_detections``. ``score`` is the
            CNOS score clipped to [0, 1]; ``template_poses`` (k, 4, 4) ``T_camera_object`` priors.
        """
        cfg = self.config.matching
        object_mask = None
        if object_ids is not None:
            wanted = {int(o) for o in object_ids}
            unknown = wanted - set(self.bank.object_ids)
            if unknown:
                raise InvalidInputError(f"object_ids: unknown objects {sorted(unknown)}; the detector knows {list(self.bank.object_ids)}")
            if not wanted:
                return []
            object_mask = torch.tensor([o in wanted for o in self.bank.object_ids], device=self.bank.device)
        if not proposals:
            return []
        proposals = list(proposals)
        matched = self._match(view, proposals, object_mask)
        if self.config.merge_fragments:
            proposals, matched = self._merge_fragments(view, proposals, matched, object_mask)
        candidates = np.flatnonzero(matched.accepted)
        if candidates.size == 0:
            return []
        order = nms_masks([proposals[i].mask for i in candidates], matched.score[candidates], cfg.nms_iou)
        chosen = candidates[order[: cfg.max_detections]]
        object_index = matched.object_index[chosen]
        top = matched.top_templates[chosen][:, : cfg.num_pose_priors]
        priors = priors_for_matches(self.bank, object_index, top, matched.R_camera_crop[chosen], matched.focal_px[chosen])
        return [
            Detection(object_id=self.bank.object_ids[o], view_index=view_index, score=float(np.clip(matched.score[i], 0.0, 1.0)),
                      box_xyxy=np.asarray(proposals[i].box_xyxy, dtype=np.float64), mask=proposals[i].mask, template_poses=p,
                      template_indices=np.asarray(t, dtype=np.int64))
            for i, o, p, t in zip(chosen, object_index, priors, top)
        ]

    def _match(self, view: View, proposals: Sequence[Proposal], object_mask: torch.Tensor | None) -> _Matched:
        """Crops, descriptors and CNOS scores of proposals (host arrays)."""
        cfg = self.config.matching
        crops, crop_masks, R_camera_crop, focal = crop_proposals(view.rgb, view.camera.K, proposals, self.bank.size_px,
                                                                 self.bank.crop_margin_fraction, self.bank.background_rgb,
                                                                 self.bank.device)
        allowed = object_mask
        if self._sizes and view.depth is not None:
            verify = self.config.verification
            geometries = [proposal_geometry(p, view.depth, view.camera.K, verify) for p in proposals]
            feasible = torch.from_numpy(feasible_objects(geometries, self._sizes, verify)).to(self.bank.device)
            if cfg.min_texture_ratio > 0:
                # An unoccluded proposal far less textured than an object's templates is not that
                # object (MatchingConfig.min_texture_ratio); a partly hidden one may show a plain side.
                whole = torch.tensor([g is not None and g.unoccluded for g in geometries], device=self.bank.device)
                texture = texture_levels(crops, crop_masks)
                plain = texture[:, None] < cfg.min_texture_ratio * torch.from_numpy(self.bank.object_texture).to(texture.device)[None]
                feasible &= ~(plain & whole[:, None])
            allowed = feasible if allowed is None else feasible & allowed  # (O,) object masks broadcast
        parts = describe_crops(self.backbone, crops, crop_masks, cfg, query=self._colour_search)
        parts, variant_offsets = with_grey_variant(parts, crops, crop_masks, cfg, self._untextured)
        result = match(self.bank.embed(parts), self.bank, cfg.top_k, allowed, variant_offsets)
        accepted = result.score >= self._thresholds[result.object_index]
        return _Matched(result.score.cpu().numpy(), result.object_index.cpu().numpy(), result.top_templates.cpu().numpy(),
                        R_camera_crop, focal, accepted.cpu().numpy())

    def _merge_fragments(self, view: View, proposals: list[Proposal], matched: _Matched, object_mask: torch.Tensor | None
                         ) -> tuple[list[Proposal], _Matched]:
        """Merge accepted depth proposals of one object that touch and fit in its diameter.

        Depth proposals can cut one object in pieces (a thin waist, a concave fold: see
        :mod:`pose_node.detection.proposals_depth`), and each piece may match the object. Pieces
        matched to the same object whose masks come within ``merge_gap_px`` of each other and
        whose 3D points together span at most the object's diameter (times ``1 +
        diameter_margin_fraction``, robust extent along the principal axis) are merged and the
        merged proposal is matched again; it replaces the pieces when it is accepted for the
        same object with a score at least the best piece's (the whole object looks more like its
        templates than a piece does, two instances side by side less like it than one). Proposals
        without 3D points (RGB mode) are never merged.
        """
        cfg = self.config
        index = [i for i in np.flatnonzero(matched.accepted) if proposals[i].points_cam is not None]
        if len(index) < 2:
            return proposals, matched
        parent = {i: i for i in index}

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        limit = {o: (1.0 + cfg.diameter_margin_fraction) * d for o, d in self._diameters.items()}
        for a_pos, a in enumerate(index):
            for b in index[a_pos + 1:]:
                obj = matched.object_index[a]
                if matched.object_index[b] != obj or root(a) == root(b):
                    continue
                if not _masks_touch(proposals[a], proposals[b], cfg.merge_gap_px):
                    continue
                points = np.concatenate([proposals[a].points_cam, proposals[b].points_cam])
                if _principal_extent_m(points) <= limit[self.bank.object_ids[obj]]:
                    parent[root(b)] = root(a)
        groups: dict[int, list[int]] = {}
        for i in index:
            groups.setdefault(root(i), []).append(i)
        groups = {r: g for r, g in groups.items() if len(g) > 1}
        if not groups:
            return proposals, matched
        merged = []
        for members in groups.values():
            mask = np.logical_or.reduce([proposals[i].mask for i in members])
            merged.append(Proposal(mask=mask, box_xyxy=box_from_mask(mask), score=max(proposals[i].score for i in members),
                                   source=proposals[members[0]].source,
                                   points_cam=np.concatenate([proposals[i].points_cam for i in members]),
                                   support_plane_cam=proposals[members[0]].support_plane_cam))
        again = self._match(view, merged, object_mask)
        replaced: set[int] = set()
        extra = []
        for k, members in enumerate(groups.values()):
            if (again.accepted[k] and again.object_index[k] == matched.object_index[members[0]]
                    and again.score[k] >= matched.score[members].max()):
                replaced.update(members)
                extra.append(k)
        if not extra:
            return proposals, matched
        logger.debug("view %s: merged %d proposals into %d", view.name, len(replaced), len(extra))
        keep = [i for i in range(len(proposals)) if i not in replaced]
        return [proposals[i] for i in keep] + [merged[k] for k in extra], _Matched.concatenate(matched, keep, again, extra)

    def confirm(self, views: Sequence[View], detections: Sequence[Sequence[Detection]]) -> list[list[Detection]]:
        """The detections of a multi-view frame that the other views confirm (``config.multiview``;
        RGB-D only: RGB detections have no 3D point and are all kept).

        Args:
            views: the frame's views, calibrated. detections: per view, :meth:`detect`'s output.
        Returns:
            per view, the detections kept, in their order.
        """
        if self.config.mode != "rgbd":
            return [list(d) for d in detections]
        return confirm_across_views(views, detections, self._diameters, self.config.multiview)

    def detect(self, view: View, *, object_ids: Sequence[int] | None = None, view_index: int = 0,
               max_proposals: int | None = None) -> tuple[list[Detection], dict[str, float]]:
        """Detect the known objects in one view.

        Args:
            view: the image (and depth in RGB-D mode).
            object_ids: objects to look for (None: all known objects).
            view_index: index of the view in its frame (stored in the detections).
            max_proposals: proposals matched, highest proposal score first (0: all; None:
                ``config.max_proposals_per_view``); a time budget passes a tighter one.
        Returns:
            (detections best first, timings: milliseconds ``proposals`` and ``matching``, and the
            counts ``proposals_total`` (found), ``proposals_matched`` (sent to matching after
            the cap) and ``proposals_cut`` (their difference); see :data:`pose_node.pipeline.budget.COUNT_KEYS`).
        Raises:
            InvalidInputError: RGB-D mode without depth, unknown object ids, or ``max_proposals < 0``.
        """
        cap = self.config.max_proposals_per_view if max_proposals is None else int(max_proposals)
        if cap < 0:
            raise InvalidInputError(f"max_proposals: must be >= 0 (0: no cap), got {cap}")
        started = time.perf_counter()
        proposals = self.proposals(view)
        kept = cap_proposals(proposals, cap)
        t_proposals = time.perf_counter()
        detections = self.match_proposals(view, kept, object_ids=object_ids, view_index=view_index)
        t_matching = time.perf_counter()
        timings = {"proposals": 1e3 * (t_proposals - started), "matching": 1e3 * (t_matching - t_proposals),
                   "proposals_total": float(len(proposals)), "proposals_matched": float(len(kept)),
                   "proposals_cut": float(len(proposals) - len(kept))}
        if len(kept) < len(proposals):
            logger.debug("view %s: %d of %d proposals matched (cap %d)", view.name, len(kept), len(proposals), cap)
        logger.debug("view %s: %d proposals -> %d detections (proposals %.1f ms, matching %.1f ms)", view.name, len(kept),
                     len(detections), timings["proposals"], timings["matching"])
        return detections, timings
