"""Run "the pipeline" over BOP targets and score it (what ``pose_eval`` does).

Pipeline contract
-----------------
The runner talks to the pipeline through one small protocol, :class:`Estimator`: given the views
of one frame (one image for BOP19 targets, the synchronized group for multi-view targets) and the
models of the target objects, it returns world-frame :class:`PoseEstimate` s and the latency of
each stage in milliseconds. Views carry ``camera.T_world_camera = inv(T_camera_world)`` from
``scene_camera.json`` (identity when absent, so for classic BOP datasets world = camera frame).

The stages are built from the pipeline's pieces by the factories of
:data:`pose_node.evaluation.stages.STAGE_FACTORIES` (imported when a run needs them; the pipeline
knows nothing of the evaluation). The factory of the *last* requested stage builds an estimator
that runs the pipeline up to and including that stage. A stage without a factory (or whose
factory raises :class:`StageUnavailableError`) is reported as ``"missing"``; then there are zero pose estimates and every pose recall is 0. Nothing
is ever faked.

Detection
---------
An estimator that detects objects exposes ``last_detections``: one :class:`ViewDetections` per
view of its last :meth:`Estimator.estimate` call, in view order (the runner sets it to None
before each call). The runner then scores detection per image
(:mod:`pose_node.detection.metrics`: recall and precision at mask IoU 0.5 of the instances with
``visib_fract >= 0.3``, less visible ones being ignore regions; COCO-style mask AP over IoU
0.5:0.95), latency and proposal counts (found, cut by the cap) per view, and writes them to
``results["detection"]`` (None when no estimator reports detections). Only the frame's target objects are looked for and scored.
When a later stage is missing, the requested stages before it still run: detection alone
reports the detection block while the pose scores stay 0; detection + correspondence give
single-view poses (in a multi-view frame, one estimate per view that detected the object).

An estimator whose ``per_view_estimates`` attribute is true (the single-view stages) is scored per
image with only the estimates of that image's own view (``view_indices``): the single-view
baseline on the same images as the multi-view pipeline, without borrowing other views' poses.

Multi-view protocol
-------------------
A multi-view target ``{scene_id, im_ids, obj_id, inst_count}`` is scored per image, as AlignPose
does: the world-frame estimates are mapped into each camera (``T_camera_world @ T_world_object``)
and every image of the group is scored with the BOP19 single-image protocol, with the per-image
``inst_count`` = number of GT instances of the object with ``visib_fract >= 0.1`` in that image
(the rule BOP used to build ``test_targets_bop19.json``; capped by the group's ``inst_count``);
images where no instance is that visible contribute no target. Covariance coverage and the
rotation / translation error statistics are computed once per estimate, in the world frame.

Real datasets and recordings
----------------------------
Real BOP test sets and user recordings may lack parts our generator writes:

- no ``mask_visib/``: ``results["detection"] = {"skipped": reason}``; pose scores still run (VSD
  takes visibility from the test depth and renders, never from masks).
- no ``scene_gt_info.json``: the GT visibility is computed from the models rendered at the GT
  poses (:mod:`pose_node.evaluation.visibility`, as ``calc_gt_info.py``) where it matters: for
  derived targets, multi-view per-image counts, detection scores, and images where an object has
  more GT instances than its ``inst_count``; elsewhere the targets are taken as given.
  ``results["visibility"]`` says which.
- an image without a depth file: in ``rgbd`` mode its frame runs the RGB pipeline (the RGB-D
  stages need depth in every view); VSD uses the GT instances rendered at the GT poses as its
  test depth (``EvalConfig.vsd_without_depth``). ``results["images_without_depth"]`` lists them.
- no targets file: BOP19 targets derived from ``scene_gt`` (``results["targets_source"]``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pose_node.core.errors import InvalidInputError, PoseNodeError, StageUnavailableError
from pose_node.core.types import Detection, ObjectModel, PoseEstimate, View
from pose_node.datasets.bop import BopDataset, BopEstimate, Target, write_estimates_csv
from pose_node.detection.metrics import DetectionMetricsConfig, DetectionScorer
from pose_node.evaluation import metrics
from pose_node.evaluation.calibration import (
    closest_symmetric_pose, coverage_from_mahalanobis, gaussian_nll, mahalanobis_sq, pose_error_6d,
)
from pose_node.evaluation.results import EvalResults
from pose_node.evaluation.scoring import BopScorer, GtInstance, ImageEstimate, ObjectEvalInfo, ScoringConfig
from pose_node.evaluation.visibility import GtInfoSource, derive_targets, render_gt_scene_depth
from pose_node.pipeline.budget import COUNT_KEYS, latency_items
from pose_node.pipeline.config import MODES
from pose_node.pipeline.estimate import ViewDetections

logger = logging.getLogger(__name__)

KNOWN_STAGES: tuple[str, ...] = ("detection", "correspondence", "refinement")
STAGE_ALIASES: Mapping[str, tuple[str, ...]] = {"full": KNOWN_STAGES}
#: How VSD treats an image without a depth file (``EvalConfig.vsd_without_depth``).
VSD_WITHOUT_DEPTH = ("gt_render", "unavailable")
#: At most this many image ids are listed in ``results["images_without_depth"]["ids"]``.
MAX_LISTED_IMAGES = 20
MULTIVIEW_PROTOCOL = (
    "per-image: world estimates mapped into every view of the group; each image scored with the "
    "BOP19 protocol, inst_count = GT instances with visib_fract >= {visib:g} in that image"
)


@runtime_checkable
class Estimator(Protocol):
    """What the runner needs from the pipeline.

    Optionally, an estimator that detects objects also has an attribute ``last_detections:
    list[ViewDetections] | None`` (one per view of the last :meth:`estimate` call, in view order);
    the runner scores detection with it (module docstring).
    """

    def estimate(self, views: list[View], object_models: Sequence[ObjectModel]) -> tuple[list[PoseEstimate], dict[str, float]]:
        """Estimate the poses of the given objects.

        Args:
            views: one frame; ``views[k].camera.T_world_camera`` is the camera's world pose.
            object_models: the models of the objects to find (the targets' objects).
        Returns:
            World-frame estimates (``T_world_object``, 6x6 covariance in the world frame) and
            stage name -> latency in milliseconds.
        """
        ...


#: ``factory(stages, config, models) -> Estimator`` running the pipeline through ``stages[-1]``.
EstimatorFactory = Callable[[tuple[str, ...], "EvalConfig", Sequence[ObjectModel]], Estimator]


def stage_factories() -> Mapping[str, EstimatorFactory]:
    """:data:`pose_node.evaluation.stages.STAGE_FACTORIES`, imported on first use (the stages load
    torch, the networks' backends and the renderer).

    Raises:
        ImportError: a stage module (or what it needs) failed to import.
    """
    from pose_node.evaluation.stages import STAGE_FACTORIES

    return STAGE_FACTORIES


def expand_stages(names: Sequence[str]) -> tuple[str, ...]:
    """``full`` -> every stage; keeps pipeline order; rejects unknown names."""
    out: list[str] = []
    for n in names:
        for s in STAGE_ALIASES.get(n, (n,)):
            if s not in KNOWN_STAGES:
                raise InvalidInputError(f"unknown stage {s!r}; expected one of {(*KNOWN_STAGES, *STAGE_ALIASES)}")
            if s not in out:
                out.append(s)
    return tuple(s for s in KNOWN_STAGES if s in out)


def stage_status(stages: Sequence[str]) -> dict[str, str]:
    """stage -> ``"available"`` (it has a factory) or ``"missing"`` (none, or the stages failed to
    import)."""
    try:
        factories = stage_factories()
    except ImportError as exc:  # present but broken: every stage missing, say why
        logger.warning("pipeline stages failed to import: %s", exc)
        factories = {}
    return {s: "available" if s in factories else "missing" for s in stages}


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings.

    Attributes:
        mode: ``rgbd`` passes depth to the pipeline, ``rgb`` does not (scoring always uses the
            dataset depth for VSD, as BOP does).
        stages: requested pipeline stages (after :func:`expand_stages`).
        max_targets: evaluate only the first N targets (None = all).
        multiview_visib_min: per-image visibility rule of the multi-view protocol.
        models_subdir: models given to the pipeline.
        eval_models_subdir: models used for the errors (BOP: ``models_eval``); default: that
            folder when present, else ``models_subdir``.
        scoring: thresholds.
        detection_metrics: the detection protocol (:mod:`pose_node.detection.metrics`).
        detector: settings of the detection stage, a
            :class:`pose_node.detection.detector.DetectorConfig` (its ``mode`` is replaced by
            ``mode``); None: its defaults. Typed loosely so this module does not import the stage.
        cache_dir: onboarding cache directory of the stages (None: the default,
            :func:`pose_node.onboarding.cache.default_cache_dir`).
        correspondence: settings of the correspondence stage, a
            :class:`pose_node.pipeline.estimate.CorrespondenceStageConfig`; None: its defaults.
        refinement: settings of the refinement stage, a
            :class:`pose_node.refinement.fusion.FusionConfig`; None: its defaults.
        time_budget: the per-set time budget of the refinement stage, a
            :class:`pose_node.pipeline.budget.TimeBudgetConfig` (the node's ``pipeline.time_budget_ms``);
            None: no budget.
        vsd_without_depth: VSD of an image that has no depth file: ``gt_render`` uses the
            z-buffer of its GT instances rendered at the GT poses as the test depth (occlusion by
            annotated objects only), ``unavailable`` makes VSD and AR null (BOP has no rule).
    """

    mode: str = "rgbd"
    stages: tuple[str, ...] = KNOWN_STAGES
    max_targets: int | None = None
    multiview_visib_min: float = 0.1
    models_subdir: str = "models"
    eval_models_subdir: str | None = None
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    detection_metrics: DetectionMetricsConfig = field(default_factory=DetectionMetricsConfig)
    detector: object | None = None
    cache_dir: str | None = None
    correspondence: object | None = None
    refinement: object | None = None
    vsd_without_depth: str = "gt_render"
    time_budget: object | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"EvalConfig.mode: expected one of {MODES}, got {self.mode!r}")
        if self.vsd_without_depth not in VSD_WITHOUT_DEPTH:
            raise InvalidInputError(
                f"EvalConfig.vsd_without_depth: expected one of {VSD_WITHOUT_DEPTH}, got {self.vsd_without_depth!r}")
        if self.max_targets is not None and self.max_targets < 0:
            raise InvalidInputError(f"EvalConfig.max_targets: must be >= 0, got {self.max_targets}")


@dataclass(frozen=True)
class Frame:
    """One estimator call: the images of a group and the targets defined on them."""

    scene_id: int
    im_ids: tuple[int, ...]
    targets: tuple[Target, ...]


def group_targets(targets: Sequence[Target]) -> list[Frame]:
    """Targets sharing (scene_id, im_ids) become one frame, in order of first appearance."""
    groups: dict[tuple[int, tuple[int, ...]], list[Target]] = {}
    for t in targets:
        groups.setdefault((t.scene_id, t.im_ids), []).append(t)
    return [Frame(s, ims, tuple(ts)) for (s, ims), ts in groups.items()]


class RendererDepthAdapter:
    """Adapts ``pose_node.render.renderer.Renderer`` to :data:`metrics.DepthRenderer`.

    One renderer per image size, created on first use; each object is uploaded once. Construction
    failures (no GL) surface as :class:`StageUnavailableError`.
    """

    def __init__(self, models: Sequence[ObjectModel], renderer_cls=None):
        self._models = {m.object_id: m for m in models}
        self._renderer_cls = renderer_cls
        self._renderers: dict[tuple[int, int], tuple[object, dict[int, object]]] = {}

    def __call__(self, obj_id: int, K: np.ndarray, T_camera_object: np.ndarray, width: int, height: int) -> np.ndarray:
        key = (int(width), int(height))
        if key not in self._renderers:
            try:
                cls = self._renderer_cls
                if cls is None:
                    from pose_node.render.renderer import Renderer as cls  # noqa: N813
                self._renderers[key] = (cls(key[0], key[1]), {})
            except Exception as exc:  # GL/EGL failures come in many types
                raise StageUnavailableError(f"depth renderer unavailable: {type(exc).__name__}: {exc}") from exc
        renderer, handles = self._renderers[key]
        if obj_id not in handles:
            handles[obj_id] = renderer.add_object(self._models[obj_id])
        out = renderer.render(np.asarray(K, np.float64)[None], np.asarray(T_camera_object, np.float64)[None, None],
                              [handles[obj_id]], outputs=("depth",))
        depth = out.depth[0]
        if hasattr(depth, "detach"):
            depth = depth.detach().cpu().numpy()
        return np.asarray(depth, dtype=np.float32).reshape(key[1], key[0])


def default_depth_renderer(models: Sequence[ObjectModel]) -> metrics.DepthRenderer | None:
    """The GL renderer when ``pose_node.render.renderer`` imports, else None (VSD unavailable)."""
    try:
        from pose_node.render.renderer import Renderer
    except ImportError as exc:
        logger.warning("no depth renderer for VSD (%s)", exc)
        return None
    return RendererDepthAdapter(models, Renderer)


def eval_models_subdir(dataset: BopDataset, config: EvalConfig) -> str:
    """Models used for the errors: ``config.eval_models_subdir``, else ``models_eval`` when the
    dataset has it (as bop_toolkit), else ``config.models_subdir``."""
    if config.eval_models_subdir:
        return config.eval_models_subdir
    if (dataset.models_dir("models_eval") / "models_info.json").is_file():
        return "models_eval"
    return config.models_subdir


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if len(values) == 0:
        return {"median": None, "p95": None}
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95))}


# The same GT instance seen from several cameras of a group: its world poses agree up to the
# floating-point error of the mm <-> m round trip through the BOP files, far below these.
GT_SAME_INSTANCE_TRANSLATION_M = 1e-3
GT_SAME_INSTANCE_ROTATION_ENTRY = 1e-3  # max |R1 - R2| entry, ~0.06 degrees


def _frame_gt_world(dataset: BopDataset, frame: Frame, obj_ids: set[int],
                    visib_by_image: Mapping[int, Sequence[float]] | None = None) -> list[tuple[int, np.ndarray, list[float]]]:
    """GT instances of the target objects in the world frame, merged over the group's images
    (see ``GT_SAME_INSTANCE_*`` for when two poses are one instance), each with its visible
    fraction in every image that has it (from ``visib_by_image``: image -> the image's GT
    visib_fract in GT order; images missing there add nothing)."""
    out: list[tuple[int, np.ndarray, list[float]]] = []
    for im_id in frame.im_ids:
        T_world_camera = dataset.camera(frame.scene_id, im_id).T_world_camera
        visib = (visib_by_image or {}).get(im_id)
        for k, gt in enumerate(dataset.gts(frame.scene_id, im_id)):
            if gt.obj_id not in obj_ids:
                continue
            T = T_world_camera @ gt.T_camera_object
            same = [i for i, (o, T2, _) in enumerate(out) if o == gt.obj_id
                    and np.abs(T[:3, 3] - T2[:3, 3]).max() < GT_SAME_INSTANCE_TRANSLATION_M
                    and np.abs(T[:3, :3] - T2[:3, :3]).max() < GT_SAME_INSTANCE_ROTATION_ENTRY]
            if not same:
                out.append((gt.obj_id, T, []))
            if visib is not None and k < len(visib) and np.isfinite(visib[k]):
                out[same[0] if same else -1][2].append(float(visib[k]))
    return out


@dataclass
class _WorldMatches:
    T_est: list[np.ndarray] = field(default_factory=list)
    covariance: list[np.ndarray] = field(default_factory=list)
    T_gt: list[np.ndarray] = field(default_factory=list)  # closest symmetric equivalent
    score: list[float] = field(default_factory=list)
    mssd_m: list[float] = field(default_factory=list)  # symmetry-aware max vertex displacement
    diameter_m: list[float] = field(default_factory=list)
    views_visible: list[int] = field(default_factory=list)  # images where the GT is at least multiview_visib_min visible
    visib_fract: list[float] = field(default_factory=list)  # the GT's mean visible fraction over the images (nan: unknown)
    unmatched_score: list[float] = field(default_factory=list)  # estimates left without a GT of their object (wrong)


def _assign_world(estimates: Sequence[PoseEstimate], gts: list[tuple[int, np.ndarray, list[float]]],
                  objects: Mapping[int, ObjectEvalInfo], out: _WorldMatches, visib_min: float) -> None:
    """Greedy by score: each estimate takes the unassigned GT of its object with the smallest
    symmetry-aware max vertex displacement (MSSD); the closest equivalent is kept."""
    taken: set[int] = set()
    for est in sorted(estimates, key=lambda e: e.score, reverse=True):
        info = objects.get(est.object_id)
        if info is None:
            continue
        best = None
        for g, (obj_id, T_gt, _) in enumerate(gts):
            if obj_id != est.object_id or g in taken:
                continue
            T_sym, cost = closest_symmetric_pose(est.T_world_object, T_gt, info.symmetries, info.hull)
            if best is None or cost < best[1]:
                best = (g, cost, T_sym)
        if best is None:
            out.unmatched_score.append(float(est.score))
        else:
            taken.add(best[0])
            out.T_est.append(np.asarray(est.T_world_object, dtype=np.float64))
            out.covariance.append(np.asarray(est.covariance, dtype=np.float64))
            out.T_gt.append(best[2])
            out.score.append(float(est.score))
            out.mssd_m.append(float(best[1]))
            out.diameter_m.append(float(info.diameter_m) if info.diameter_m else float("nan"))
            visib = gts[best[0]][2]
            out.views_visible.append(sum(v >= visib_min for v in visib))
            out.visib_fract.append(float(np.mean(visib)) if visib else float("nan"))


class _DetectionTally:
    """Detection scores and per-view latency over the frames of an evaluation."""

    def __init__(self, config: DetectionMetricsConfig):
        self.config = config
        self.scorer = DetectionScorer(config)
        self.latency: dict[str, list[float]] = {"total": [], "proposals": [], "matching": []}
        self.proposal_counts: dict[str, list[float]] = {"proposals_total": [], "proposals_cut": []}
        self.frames_without_detections = 0

    def add_frame(self, dataset: BopDataset, gt_info: GtInfoSource, frame: Frame, obj_ids: Sequence[int],
                  view_detections: Sequence[ViewDetections] | None) -> None:
        """Score the images of one frame (no detections at all when the estimator failed)."""
        if view_detections is not None and len(view_detections) != len(frame.im_ids):
            raise InvalidInputError(f"Estimator.last_detections: {len(view_detections)} entries for {len(frame.im_ids)} views")
        if view_detections is None:
            self.frames_without_detections += 1
        wanted = set(obj_ids)
        for k, im in enumerate(frame.im_ids):
            gts, infos = dataset.gts(frame.scene_id, im), gt_info.infos(frame.scene_id, im)
            keep = [g for g, gt in enumerate(gts) if gt.obj_id in wanted]
            dets = [] if view_detections is None else [d for d in view_detections[k].detections if d.object_id in wanted]
            for d in dets:
                if d.mask is None:
                    raise InvalidInputError("Estimator.last_detections: detections need masks to be scored")
            self.scorer.add_image(
                [gts[g].obj_id for g in keep], [dataset.mask_visib(frame.scene_id, im, g) for g in keep],
                [infos[g].visib_fract for g in keep], [d.object_id for d in dets], [d.score for d in dets],
                [d.mask for d in dets],
            )
            if view_detections is not None:
                timings = view_detections[k].timings_ms
                self.latency["total"].append(float(sum(latency_items(timings).values())))
                for name in ("proposals", "matching"):
                    if name in timings:
                        self.latency[name].append(float(timings[name]))
                for name, values in self.proposal_counts.items():
                    if name in timings:
                        values.append(float(timings[name]))

    def results(self, mode: str) -> dict:
        s = self.scorer.summary()
        total = _stats(self.latency["total"])
        return {
            "recall": s.recall, "precision": s.precision, "mask_ap": s.mask_ap,
            "ap_per_iou": {f"{t:.2f}": v for t, v in s.ap_per_iou.items()},
            "latency_ms": {"median": total["median"], "p95": total["p95"], "proposals_median": _stats(self.latency["proposals"])["median"],
                           "matching_median": _stats(self.latency["matching"])["median"], "n_views": len(self.latency["total"])},
            "proposals_per_view": {"found": _stats(self.proposal_counts["proposals_total"]),
                                   "cut": _stats(self.proposal_counts["proposals_cut"])},
            "n_gt": s.n_targets, "n_gt_ignored": s.n_ignored_gt, "n_detections": s.n_detections,
            "n_true_positives": s.n_true_positives, "n_false_positives": s.n_false_positives, "n_images": s.n_images,
            "frames_without_detections": self.frames_without_detections, "mode": mode,
            "visib_fract_min": self.config.visib_fract_min, "match_iou": self.config.match_iou,
            "per_object": {str(k): v for k, v in s.per_object.items()},
            "protocol": (f"per image, target objects only; GT visib_fract >= {self.config.visib_fract_min:g} are targets, less "
                         f"visible GT are ignore regions; recall/precision at mask IoU {self.config.match_iou:g}; mask AP: "
                         "COCO 101-point, mean over objects and IoU " + ", ".join(f"{t:g}" for t in self.config.ap_iou_thresholds)),
        }


def _images_without_depth(dataset: BopDataset, frames: Sequence[Frame]) -> list[tuple[int, int]]:
    """(scene_id, im_id) of the frames' images that have no depth file, in frame order."""
    seen: dict[tuple[int, int], None] = {}
    for f in frames:
        for im in f.im_ids:
            if not dataset.has_depth(f.scene_id, im):
                seen[(f.scene_id, im)] = None
    return list(seen)


def _detection_skip_reason(dataset: BopDataset, frames: Sequence[Frame]) -> str | None:
    """Why detection cannot be scored on these frames (GT visible masks missing), or None."""
    images = list(dict.fromkeys((f.scene_id, im) for f in frames for im in f.im_ids))
    missing = [(s, im) for s, im in images if not dataset.has_mask_visib(s, im)]
    if not missing:
        return None
    s, im = missing[0]
    return (f"no GT visible masks (mask_visib/) for {len(missing)} of {len(images)} images (first: scene {s} image {im}); "
            "recall, precision and mask AP need them")


def _visibility_needed(gts: Sequence, targets: Mapping[int, int]) -> bool:
    """Whether the valid GT of an image depend on visibility: some target object has more GT
    instances than its ``inst_count`` (otherwise every GT of each target object is valid)."""
    return any(sum(1 for g in gts if g.obj_id == o) > n for o, n in targets.items())


def evaluate(
    dataset: BopDataset,
    targets: Sequence[Target],
    estimator: Estimator | None,
    config: EvalConfig = EvalConfig(),
    depth_renderer: metrics.DepthRenderer | None = None,
    stages: Mapping[str, str] | None = None,
    csv_path: str | Path | None = None,
    *,
    gt_info: GtInfoSource | None = None,
    estimator_without_depth: Callable[[], Estimator | None] | None = None,
) -> dict:
    """Run ``estimator`` over the targets and score it.

    Datasets without ``mask_visib/`` get ``results["detection"] = {"skipped": reason}`` (the pose
    scores still run); without ``scene_gt_info.json`` the GT visibility comes from ``gt_info``
    (computed where the targets need it, see ``results["visibility"]``). In ``rgbd`` mode a frame
    with an image that has no depth file runs the RGB pipeline (``estimator_without_depth``) on
    views without depth; ``results["images_without_depth"]`` lists those images.

    Args:
        dataset: the BOP dataset.
        targets: BOP19 and/or multi-view targets.
        estimator: the pipeline, or None when a stage is missing (zero estimates).
        config: settings.
        depth_renderer: for VSD (None: VSD and AR are null when there are estimates to score).
        stages: stage -> status, reported as is.
        csv_path: where to write the BOP CSV of the estimates (None: not written).
        gt_info: GT visibility source; default: the dataset's files, else computed with
            ``depth_renderer`` (in memory).
        estimator_without_depth: builds (once, on first need) the pipeline run on frames with an
            image without depth in ``rgbd`` mode; it may return None (unavailable: those frames get
            no estimates). None: ``estimator`` runs them, given views without depth.
    Returns:
        The results mapping, :meth:`EvalResults.to_json` of the typed results (JSON-serializable; see
        :func:`pose_node.evaluation.cli.main`; :meth:`EvalResults.from_json` reads it back).
    """
    targets = list(targets)[: config.max_targets] if config.max_targets is not None else list(targets)
    frames = group_targets(targets)
    gt_info = gt_info if gt_info is not None else GtInfoSource(dataset, depth_renderer)
    pipeline_models = {m.object_id: m for m in dataset.models(config.models_subdir)}
    eval_subdir = eval_models_subdir(dataset, config)
    eval_models = {m.object_id: m for m in dataset.models(eval_subdir)}
    models_info = dataset.models_info(eval_subdir)
    objects = {
        o: ObjectEvalInfo.from_model(m, diameter_m=float(models_info[o]["diameter"]) / 1000.0 if o in models_info else None)
        for o, m in eval_models.items()
    }
    scorer = BopScorer(objects, depth_renderer, config.scoring)
    world = _WorldMatches()
    latency_total: list[float] = []
    latency_stage: dict[str, list[float]] = {}
    counts_per_set: dict[str, list[float]] = {}
    csv_rows: list[BopEstimate] = []
    frame_errors: list[str] = []
    n_estimates = 0
    reports_detections = estimator is not None and hasattr(estimator, "last_detections")
    detection_skipped = _detection_skip_reason(dataset, frames) if reports_detections else None
    if detection_skipped:
        logger.warning("detection not scored: %s", detection_skipped)
    detection = _DetectionTally(config.detection_metrics) if reports_detections and not detection_skipped else None
    no_depth = set(_images_without_depth(dataset, frames))
    rgb_estimator: list[Estimator | None] = []  # built on first need
    frames_run_rgb = 0
    vsd_rendered_depth: list[tuple[int, int]] = []

    for frame in frames:
        obj_ids = sorted({t.obj_id for t in frame.targets})
        missing = [o for o in obj_ids if o not in pipeline_models or o not in objects]
        if missing:
            raise InvalidInputError(f"targets of scene {frame.scene_id} images {frame.im_ids} name objects without models: {missing}")
        cams = {im: dataset.camera(frame.scene_id, im) for im in frame.im_ids}
        estimates: list[PoseEstimate] = []
        frame_estimator = estimator
        with_depth = config.mode == "rgbd"
        if with_depth and any((frame.scene_id, im) in no_depth for im in frame.im_ids):
            # The RGB-D stages need depth in every view of a frame: the frame runs in RGB.
            with_depth = False
            frames_run_rgb += estimator is not None
            if estimator is not None and estimator_without_depth is not None:
                if not rgb_estimator:
                    rgb_estimator.append(estimator_without_depth())
                frame_estimator = rgb_estimator[0]
                if frame_estimator is None:
                    if detection is not None:  # the frame's GT count as missed
                        detection.add_frame(dataset, gt_info, frame, obj_ids, None)
                    frame_errors.append(f"scene {frame.scene_id} images {list(frame.im_ids)}: an image has no depth and the "
                                        "RGB pipeline is unavailable (see stage_errors)")
        own_view_only = bool(getattr(frame_estimator, "per_view_estimates", False))
        if frame_estimator is not None:
            views = [dataset.view(frame.scene_id, im, with_depth=with_depth) for im in frame.im_ids]
            if detection is not None:
                frame_estimator.last_detections = None
            t0 = time.perf_counter()
            try:
                estimates, stage_ms = frame_estimator.estimate(views, [pipeline_models[o] for o in obj_ids])
            except PoseNodeError as exc:
                frame_errors.append(f"scene {frame.scene_id} images {list(frame.im_ids)}: {type(exc).__name__}: {exc}")
                logger.error("%s", frame_errors[-1])
                estimates, stage_ms = [], {}
            if detection is not None:
                detection.add_frame(dataset, gt_info, frame, obj_ids, getattr(frame_estimator, "last_detections", None))
            total_ms = (time.perf_counter() - t0) * 1000.0
            latency_total.append(total_ms)
            for name, ms in latency_items(stage_ms).items():
                latency_stage.setdefault(name, []).append(float(ms))
            for name in COUNT_KEYS & stage_ms.keys():
                counts_per_set.setdefault(name, []).append(float(stage_ms[name]))
            for e in estimates:
                if not isinstance(e, PoseEstimate):
                    raise InvalidInputError(f"Estimator.estimate must return PoseEstimate objects, got {type(e).__name__}")
            n_estimates += len(estimates)
            for im in frame.im_ids:
                for e in estimates:
                    csv_rows.append(BopEstimate(frame.scene_id, im, e.object_id, float(e.score),
                                                cams[im].T_camera_world @ e.T_world_object, total_ms / 1000.0))

        target_counts: dict[int, int] = {}
        for t in frame.targets:
            target_counts[t.obj_id] = target_counts.get(t.obj_id, 0) + t.inst_count
        visib_by_image: dict[int, list[float]] = {}
        for im in frame.im_ids:
            cam = cams[im]
            gts = dataset.gts(frame.scene_id, im)
            if (len(frame.im_ids) == 1 and not gt_info.known(frame.scene_id, im)
                    and not _visibility_needed(gts, target_counts)):
                # Targets taken as given: every GT of each target object is valid, so the
                # (rendered) visibility would change nothing.
                gt_info.images_without_visibility.add((frame.scene_id, im))
                gt_inst = [GtInstance(g.obj_id, g.T_camera_object, float("nan")) for g in gts]
            else:
                infos = gt_info.infos(frame.scene_id, im)
                if len(infos) != len(gts):
                    raise InvalidInputError(f"scene {frame.scene_id} image {im}: {len(gts)} GT but {len(infos)} GT infos")
                gt_inst = [GtInstance(g.obj_id, g.T_camera_object, i.visib_fract) for g, i in zip(gts, infos)]
                visib_by_image[im] = [g.visib_fract for g in gt_inst]
            if len(frame.im_ids) == 1:
                im_targets = dict(target_counts)
            else:
                im_targets = {}
                for o, n in target_counts.items():
                    k = sum(1 for g in gt_inst if g.obj_id == o and g.visib_fract >= config.multiview_visib_min)
                    if min(k, n) > 0:
                        im_targets[o] = min(k, n)
                if not im_targets:
                    continue
            k_im = frame.im_ids.index(im)
            im_ests = [ImageEstimate(e.object_id, float(e.score), cam.T_camera_world @ e.T_world_object) for e in estimates
                       if not own_view_only or k_im in e.view_indices]
            depth_test = None
            if (frame.scene_id, im) not in no_depth:
                depth_test = dataset.depth_m(frame.scene_id, im)
            elif im_ests and config.vsd_without_depth == "gt_render" and scorer.depth_renderer is not None:
                try:
                    depth_test = render_gt_scene_depth(scorer.depth_renderer, cam.K, cam.width, cam.height, gts)
                    vsd_rendered_depth.append((frame.scene_id, im))
                except StageUnavailableError as exc:  # the scorer then reports VSD unavailable
                    logger.warning("no GT depth render for VSD: %s", exc)
            scorer.add_image(cam.K, cam.width, cam.height, gt_inst, im_targets, im_ests, depth_test,
                             key=(frame.scene_id, im))
        if estimates:
            _assign_world(estimates, _frame_gt_world(dataset, frame, set(obj_ids), visib_by_image), objects, world,
                          config.multiview_visib_min)

    summary = scorer.summary()
    if csv_path is not None:
        write_estimates_csv(csv_path, csv_rows)
    if world.T_est:
        T_est, T_gt = np.stack(world.T_est), np.stack(world.T_gt)
        d2 = mahalanobis_sq(pose_error_6d(T_est, T_gt), np.stack(world.covariance))
        coverage = coverage_from_mahalanobis(d2)
        d2_list = [float(v) for v in d2]
        nll = [float(v) for v in gaussian_nll(d2, np.stack(world.covariance))]
        pose_errors = {
            "rotation_deg": _stats(metrics.rotation_error_deg(T_est, T_gt)),
            "translation_m": _stats(metrics.translation_error_m(T_est, T_gt)),
            "n": len(T_est),
        }
    else:
        coverage = None
        d2_list = []
        nll = []
        pose_errors = {"rotation_deg": _stats([]), "translation_m": _stats([]), "n": 0}

    return EvalResults(
        AR=summary.AR,
        AR_VSD=summary.AR_VSD,
        AR_MSSD=summary.AR_MSSD,
        AR_MSPD=summary.AR_MSPD,
        recall_vsd=None if summary.recall_vsd is None else summary.recall_vsd.tolist(),
        recall_mssd=summary.recall_mssd.tolist(),
        recall_mspd=summary.recall_mspd.tolist(),
        add_s_recall=summary.ADD_S_recall,
        add_or_s_recall=summary.ADD_or_S_recall,
        n_targets=len(targets),
        n_frames=len(frames),
        n_images_scored=summary.n_images,
        n_gt=summary.n_gt,
        n_estimates=n_estimates,
        n_estimates_scored=summary.n_estimates_evaluated,
        latency_ms={"total": _stats(latency_total), "per_stage": {k: _stats(v) for k, v in latency_stage.items()}},
        counts_per_set={k: _stats(v) for k, v in sorted(counts_per_set.items())},
        covariance_coverage=coverage,
        covariance_coverage_n=len(world.T_est),
        covariance_d2=d2_list,
        matched_estimates={"score": world.score, "mssd_m": world.mssd_m, "diameter_m": world.diameter_m,
                           "views_visible": world.views_visible, "visib_fract": world.visib_fract, "nll": nll,
                           "unmatched_scores": world.unmatched_score},
        pose_errors=pose_errors,
        per_object={str(k): v for k, v in summary.per_object.items()},
        stages=dict(stages or {}),
        mode=config.mode,
        vsd_unavailable_reason=summary.vsd_unavailable_reason,
        frame_errors=frame_errors,
        multiview_protocol=MULTIVIEW_PROTOCOL.format(visib=config.multiview_visib_min)
        if any(len(f.im_ids) > 1 for f in frames) else None,
        config={
            "dataset": str(dataset.root), "split": dataset.split, "mode": config.mode,
            "stages_requested": list(config.stages), "max_targets": config.max_targets,
            "models": config.models_subdir, "eval_models": eval_subdir,
            "multiview_visib_min": config.multiview_visib_min, **{k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in asdict(config.scoring).items()},
        },
        estimates_csv=None if csv_path is None else str(csv_path),
        detection=({"skipped": detection_skipped} if detection_skipped
                   else None if detection is None else detection.results(config.mode)),
        images_without_depth={
            "count": len(no_depth),
            "ids": [list(k) for k in sorted(no_depth)[:MAX_LISTED_IMAGES]],
            "truncated": len(no_depth) > MAX_LISTED_IMAGES,
            "frames_run_rgb": frames_run_rgb,
            "vsd_depth": (f"GT instances rendered at the GT poses ({len(vsd_rendered_depth)} images scored)"
                          if vsd_rendered_depth else None),
        },
        visibility=gt_info.report([f.scene_id for f in frames]),
    ).to_json()


def run(
    dataset_dir: str | Path,
    targets_path: str | Path | None,
    config: EvalConfig = EvalConfig(),
    *,
    split: str = "test",
    estimator: Estimator | None = None,
    depth_renderer: metrics.DepthRenderer | None = None,
    csv_path: str | Path | None = None,
    gt_info_cache: str | Path | None = None,
) -> dict:
    """Load the dataset and targets, build the pipeline from the stages' factories (unless an
    ``estimator`` is given), and :func:`evaluate`.

    Args:
        targets_path: targets JSON; None: BOP19 targets derived from ``scene_gt`` and the GT
            visibility (:func:`pose_node.evaluation.visibility.derive_targets`);
            ``results["targets_source"]`` says which.
        estimator: use this instead of the stages' factories (tests, external pipelines); the
            stages are then reported as ``"external"``.
        depth_renderer: default: the GL renderer when available.
        gt_info_cache: JSON file caching the GT visibility computed for scenes without
            ``scene_gt_info.json`` (None: memory only). Never inside the dataset.
    """
    dataset = BopDataset(dataset_dir, split)
    # Targets before the pipeline is built (onboarding is slow; a bad targets file fails first).
    if depth_renderer is None:
        depth_renderer = default_depth_renderer(dataset.models(eval_models_subdir(dataset, config)))
    gt_info = GtInfoSource(dataset, depth_renderer, cache_path=gt_info_cache)
    if targets_path is None:
        targets = derive_targets(dataset, gt_info, max_targets=config.max_targets)
        targets_source = {"kind": "derived", "rule": "per image and object: GT instances with visib_fract >= 0.1 (BOP19 rule)"}
        logger.warning("no targets file: %d targets derived from scene_gt (visib_fract >= 0.1)", len(targets))
    else:
        targets = dataset.targets(targets_path)
        targets_source = {"kind": "file", "path": str(targets_path)}
    stage_errors: dict[str, str] = {}
    estimator_without_depth = None
    if estimator is None:
        status = stage_status(config.stages)
        models = dataset.models(config.models_subdir)
        built: tuple[str, ...] = ()
        if config.stages and all(v == "available" for v in status.values()):
            built = config.stages
            estimator = _build_estimator(built, config, models, status, stage_errors)
        else:
            logger.warning("pipeline stages missing: %s -> no pose estimates",
                           ", ".join(s for s, v in status.items() if v != "available") or "(none requested)")
        while estimator is None:
            # Later stages missing: the stages before the first missing one still run (detection
            # alone gives the detection scores; detection + correspondence single-view poses).
            # A failed build marks its last stage missing, so each try is shorter.
            prefix: list[str] = []
            for stage in config.stages:
                if status.get(stage) != "available":
                    break
                prefix.append(stage)
            if not prefix or tuple(prefix) == tuple(config.stages):
                break
            built = tuple(prefix)
            estimator = _build_estimator(built, config, models, status, stage_errors)
        if estimator is not None and config.mode == "rgbd":
            def estimator_without_depth() -> Estimator | None:
                # Built only when a frame has an image without depth; its failure is reported
                # apart so the RGB-D stages keep their status.
                rgb_errors: dict[str, str] = {}
                rgb = _build_estimator(built, replace(config, mode="rgb"), models, {}, rgb_errors)
                stage_errors.update({f"{k} (rgb, images without depth)": v for k, v in rgb_errors.items()})
                return rgb
    else:
        status = {s: "external" for s in config.stages}
    results = evaluate(dataset, targets, estimator, config, depth_renderer, status, csv_path, gt_info=gt_info,
                       estimator_without_depth=estimator_without_depth)
    try:
        gt_info.save()
    except OSError as exc:  # the scores are still good; only the next run renders again
        logger.warning("GT info cache not written: %s", exc)
        results["visibility"]["cache"] = None
    results["stage_errors"] = stage_errors
    results["targets_source"] = targets_source
    return results


def _build_estimator(stages: tuple[str, ...], config: EvalConfig, models: Sequence[ObjectModel], status: dict[str, str],
                     errors: dict[str, str]) -> Estimator | None:
    """The factory of ``stages[-1]``; a :class:`StageUnavailableError` marks that stage missing
    (reason in ``errors``) and gives None."""
    try:
        return stage_factories()[stages[-1]](stages, config, models)
    except StageUnavailableError as exc:
        status[stages[-1]] = "missing"
        errors[stages[-1]] = str(exc)
        logger.error("stage %s unavailable: %s", stages[-1], exc)
        return None


__all__ = [
    "EvalConfig", "Estimator", "ViewDetections", "EstimatorFactory", "Frame", "KNOWN_STAGES", "RendererDepthAdapter",
    "VSD_WITHOUT_DEPTH",
    "default_depth_renderer", "eval_models_subdir", "evaluate", "expand_stages", "group_targets", "run", "stage_factories",
    "stage_status",
]
