"""Train the RGB proposal head (:mod:`pose_node.detection.proposals_rgb`) on synthetic workcells.

One command reproduces the shipped ``models/rgb_proposals_effl0.pt`` and its JSON record::

    pose_train_rgb_proposals --out-dir models \
        [--heldout-bop-models /path/to/bop/models]   # optional extra evaluation (e.g. YCB)

Steps (everything seeded; outputs cached under ``--cache-dir`` and reused when the settings match):

1. Data: :func:`pose_node.scene.generator.generate_workcell` with procedural objects, one workcell
   per seed (3-8 objects, some with two instances of an object, mostly touching), three cameras,
   640 x 480. Splits use disjoint seed ranges, so the validation and test objects, tables and
   backgrounds are never seen in training; the validation split picks the post-processing
   thresholds, the test split only reports.
2. Targets at stride 4 from the visible masks (area-averaged): foreground fraction and the
   normalized inner distance (per instance, the distance transform of its visible mask divided by
   its maximum).
3. Features: the frozen backbone runs once per image; its maps are stored as float16 arrays.
4. Training: only the head trains (Adam, cosine learning-rate decay), loss = BCE + soft Dice on
   the foreground + ``distance_loss_weight`` x BCE on the inner distance over foreground cells.
5. Evaluation: proposals vs visible GT masks (recall of instances with ``visib_fract >= 0.3`` at
   mask IoU >= 0.5; precision = share of proposals with IoU >= 0.5 to some GT instance), on the
   validation split for a small grid of thresholds, then on the test split and the optional
   held-out BOP-models split with the chosen thresholds. Runtime is measured per image.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pose_node.core.errors import InvalidInputError
from pose_node.detection.proposals_rgb import (
    WEIGHTS_FILE_NAME,
    RgbProposalConfig,
    RgbProposalHeadConfig,
    RgbProposalModel,
    image_tensor,
    predict_maps,
    proposals_from_maps,
    save_checkpoint,
)
from pose_node.datasets.splits import check_not_test_set, default_ycb_models_dirs
from pose_node.features.backbones import Backbone, BackboneConfig, stride_key
from pose_node.scene.clutter import ClutterConfig
from pose_node.training.rgb_proposal_dr import DrWorkcellConfig, generate_dr_split

logger = logging.getLogger(__name__)

MIN_VISIB_FRACT = 0.3
MATCH_IOU = 0.5
_DONE_FILE = "generation.json"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitConfig:
    """One synthetic split: ``num_workcells`` workcells with seeds ``first_seed + i``.

    Attributes:
        name: split name (cache folder).
        first_seed: seed of the first workcell (splits use disjoint ranges).
        num_workcells: workcells (each with its own objects, cameras, tables, backgrounds).
        scenes_per_workcell: arrangements per workcell (one frame each).
        num_cameras: views per scene.
        width_px, height_px: image size.
        objects: ``"procedural"`` or a BOP models directory.
        objects_range: objects per workcell, cycling through ``[min, max]`` over the workcells.
        duplicate_every: every n-th workcell with at most ``duplicate_max_objects`` objects has up
            to two instances of each object (0: never).
        duplicate_max_objects: see ``duplicate_every``.
        distance_range_m: camera distance range (:class:`pose_node.scene.layout.LayoutConfig`).
    """

    name: str
    first_seed: int
    num_workcells: int
    scenes_per_workcell: int = 1
    num_cameras: int = 3
    width_px: int = 640
    height_px: int = 480
    objects: str = "procedural"
    objects_range: tuple[int, int] = (3, 8)
    duplicate_every: int = 3
    duplicate_max_objects: int = 5
    distance_range_m: tuple[float, float] = (0.5, 1.2)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainConfig:
    """Head training settings.

    Attributes:
        steps: optimizer steps.
        batch_size: crops per step (one per image).
        crop_cells: crop size (rows, columns) in cells of the finest stride (64 x 80 cells =
            256 x 320 pixels at stride 4), rounded down to whole coarsest-stride cells.
        object_crop_share: share of crops centred on a random object cell (the rest uniform).
        learning_rate: Adam peak learning rate (cosine decay to 0, ``warmup_steps`` linear warm-up).
        warmup_steps: linear warm-up steps.
        weight_decay: Adam L2 weight decay.
        distance_loss_weight: weight of the inner-distance BCE.
        seed: torch / sampling seed.
        num_threads: torch CPU threads (1 by default: on a shared 2-core machine two threads ran
            5x slower than one).
    """

    steps: int = 2000
    batch_size: int = 12
    crop_cells: tuple[int, int] = (64, 80)
    object_crop_share: float = 0.75
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-5
    distance_loss_weight: float = 2.0
    seed: int = 0
    num_threads: int = 1


TRAIN_SPLIT = SplitConfig("train", first_seed=100_000, num_workcells=100, scenes_per_workcell=2, distance_range_m=(0.45, 1.5))
VAL_SPLIT = SplitConfig("val", first_seed=200_000, num_workcells=8, duplicate_every=0)
TEST_SPLIT = SplitConfig("test", first_seed=300_000, num_workcells=12, duplicate_every=0)
HELDOUT_SPLIT = SplitConfig("heldout", first_seed=400_000, num_workcells=12, duplicate_every=0)

# --dr-ablate NAME: the DrWorkcellConfig fields that leave one randomization out.
DR_ABLATIONS: dict[str, dict] = {
    "camera": {"camera": None, "light_pool_strength_range": (0.0, 0.0)},
    "ycb": {"ycb_share": 0.0},
    "room": {"room_probability": 0.0},
    "distractors": {"clutter": ClutterConfig(num_distractors=(0, 0))},
}

# Post-processing grid searched on the validation split.
THRESHOLD_GRID = {
    "foreground_threshold": (0.4, 0.5, 0.6),
    "seed_threshold": (0.2, 0.3, 0.4, 0.5),
    "min_score": (0.5, 0.6, 0.7),
}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def generate_split(split: SplitConfig, cache_dir: Path) -> Path:
    """Generate (or reuse) the workcells of a split under ``cache_dir/<name>-<key>``. Returns that folder."""
    from pose_node.scene.generator import WorkcellConfig, generate_workcell
    from pose_node.scene.layout import LayoutConfig
    from pose_node.scene.placement import PlacementError

    root = cache_dir / f"{split.name}-{split.key()}"
    done = root / _DONE_FILE
    if done.is_file():
        return root
    started = time.perf_counter()
    lo, hi = split.objects_range
    made = []
    for i in range(split.num_workcells):
        seed = split.first_seed + i
        num_objects = lo + i % (hi - lo + 1)
        duplicates = split.duplicate_every > 0 and i % split.duplicate_every == 0 and num_objects <= split.duplicate_max_objects
        config = WorkcellConfig(
            out_dir=root / f"wc{seed}", objects=split.objects, num_objects=num_objects,
            max_instances_per_object=2 if duplicates else 1, num_scenes=split.scenes_per_workcell, frames_per_scene=1,
            write_bag=False, seed=seed, overwrite=True,
            layout=LayoutConfig(num_cameras=split.num_cameras, width_px=split.width_px, height_px=split.height_px,
                                distance_range_m=split.distance_range_m),
        )
        try:
            generate_workcell(config)
        except PlacementError as err:
            logger.warning("split %s: workcell seed %d skipped: %s", split.name, seed, err)
            continue
        made.append(seed)
    done.write_text(json.dumps({"split": asdict(split), "workcell_seeds": made,
                                "seconds": time.perf_counter() - started}, indent=1))
    logger.info("split %s: %d workcells generated in %.0f s", split.name, len(made), time.perf_counter() - started)
    return root


@dataclass
class Sample:
    """One image with its visible GT masks (H, W) bool and their visible fractions."""

    rgb: np.ndarray
    masks_visib: list[np.ndarray]
    visib_fracts: list[float]
    name: str


def iter_bop_folder(root: Path, prefix: str = "") -> Iterator[Sample]:
    """Every image of a BOP folder (``root/test``), in a fixed order, with its visible GT masks."""
    from pose_node.datasets.bop import BopDataset

    dataset = BopDataset(root)
    for scene_id in dataset.scene_ids():
        for im_id in dataset.image_ids(scene_id):
            infos = dataset.gt_infos(scene_id, im_id)
            yield Sample(
                rgb=dataset.rgb(scene_id, im_id),
                masks_visib=[dataset.mask_visib(scene_id, im_id, g) for g in range(len(infos))],
                visib_fracts=[info.visib_fract for info in infos],
                name=f"{prefix}{scene_id}/{im_id}",
            )


def iter_split(root: Path) -> Iterator[Sample]:
    """Every image of a generated split (workcells listed in its ``generation.json``), or of a
    BOP folder (a folder with ``test/``, e.g. a ``pose_ood_set`` output), in a fixed order."""
    from pose_node.training.rgb_proposal_dr import is_dr_split, iter_dr_split

    if not (root / _DONE_FILE).is_file() and (root / "test").is_dir():
        yield from iter_bop_folder(root)
        return
    if is_dr_split(root):
        # Training data only: every visible instance counts (visib_fract is not recorded).
        for rgb, masks, name in iter_dr_split(root):
            yield Sample(rgb=rgb, masks_visib=masks, visib_fracts=[1.0] * len(masks), name=name)
        return
    seeds = json.loads((root / _DONE_FILE).read_text())["workcell_seeds"]
    for seed in seeds:
        yield from iter_bop_folder(root / f"wc{seed}", prefix=f"wc{seed}/")


def stride_targets(masks_visib: Sequence[np.ndarray], height: int, width: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one image at a stride.

    Args:
        masks_visib: visible masks (H, W) bool of the instances (disjoint).
        height, width: image size H, W, pixels.
        stride: output stride s, pixels.
    Returns:
        foreground (ceil(H/s), ceil(W/s)) float32: share of object pixels per cell; distance
        (same shape) float32: cell mean of the per-instance normalized inner distance.
    """
    fg = np.zeros((height, width), np.float32)
    dist = np.zeros((height, width), np.float32)
    for mask in masks_visib:
        if not mask.any():
            continue
        m = mask.astype(np.uint8)
        dt = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        dist = np.where(mask, dt / max(float(dt.max()), 1e-6), dist)
        fg[mask] = 1.0
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    pad = ((0, h * stride - height), (0, w * stride - width))
    fg, dist = np.pad(fg, pad), np.pad(dist, pad)
    pool = lambda a: a.reshape(h, stride, w, stride).mean((1, 3))  # noqa: E731
    return pool(fg), pool(dist)


@dataclass
class FeatureSet:
    """Cached backbone maps and targets of a split (N images).

    Attributes:
        maps: ``stride_key(s)`` -> (N, C_s, H_s, W_s) float16.
        foreground, distance: (N, H_4, W_4) float32 targets at the head's output stride.
    """

    maps: dict[str, np.ndarray]
    foreground: np.ndarray
    distance: np.ndarray


def _feature_folder(root: Path, backbone: Backbone, head: RgbProposalHeadConfig, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{root.name}|{backbone.cache_key}|{head.strides}|v1".encode()).hexdigest()[:12]
    return cache_dir / "features" / f"{root.name}-{key}"


def feature_seconds(root: Path, backbone: Backbone, head: RgbProposalHeadConfig, cache_dir: Path) -> float:
    """Seconds the (cached) feature precomputation of a split took when it ran."""
    return float(json.loads((_feature_folder(root, backbone, head, cache_dir) / "features.json").read_text())["seconds"])


def precompute_features(root: Path, backbone: Backbone, head: RgbProposalHeadConfig, cache_dir: Path) -> FeatureSet:
    """Backbone maps (float16) and stride targets of every image of a split, cached as .npy files."""
    folder = _feature_folder(root, backbone, head, cache_dir)
    names = [stride_key(s) for s in head.strides] + ["foreground", "distance"]
    if all((folder / f"{n}.npy").is_file() for n in names) and (folder / "features.json").is_file():
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
        return FeatureSet({stride_key(s): arrays[stride_key(s)] for s in head.strides}, arrays["foreground"], arrays["distance"])
    started = time.perf_counter()
    maps: dict[str, list[np.ndarray]] = {stride_key(s): [] for s in head.strides}
    fgs, dists = [], []
    for sample in iter_split(root):
        H, W = sample.rgb.shape[:2]
        features = backbone(image_tensor(sample.rgb, backbone.device))
        for s in head.strides:
            maps[stride_key(s)].append(features.feature_maps[stride_key(s)][0].to("cpu", torch.float16).numpy())
        fg, dist = stride_targets(sample.masks_visib, H, W, head.strides[0])
        fgs.append(fg)
        dists.append(dist)
    folder.mkdir(parents=True, exist_ok=True)
    out = {k: np.stack(v) for k, v in maps.items()}
    out["foreground"], out["distance"] = np.stack(fgs), np.stack(dists)
    for name, array in out.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "features.json").write_text(json.dumps({"images": len(fgs), "seconds": time.perf_counter() - started}))
    logger.info("features of %s: %d images in %.0f s", root.name, len(fgs), time.perf_counter() - started)
    return FeatureSet({stride_key(s): out[stride_key(s)] for s in head.strides}, out["foreground"], out["distance"])


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def head_loss(logits: torch.Tensor, foreground: torch.Tensor, distance: torch.Tensor, distance_weight: float) -> dict[str, torch.Tensor]:
    """Loss terms.

    Args:
        logits: (B, 2, h, w) head output.
        foreground, distance: (B, h, w) targets in [0, 1].
    Returns:
        ``total``, ``fg_bce``, ``fg_dice``, ``dist_bce`` scalars.
    """
    fg_logit, dist_logit = logits[:, 0], logits[:, 1]
    fg_bce = F.binary_cross_entropy_with_logits(fg_logit, foreground)
    prob = torch.sigmoid(fg_logit)
    dice = 1.0 - (2.0 * (prob * foreground).sum((1, 2)) + 1.0) / (prob.sum((1, 2)) + foreground.sum((1, 2)) + 1.0)
    weight = (foreground > 0.5).float()
    dist_bce = (F.binary_cross_entropy_with_logits(dist_logit, distance, reduction="none") * weight).sum() / weight.sum().clamp_min(1.0)
    total = fg_bce + dice.mean() + distance_weight * dist_bce
    return {"total": total, "fg_bce": fg_bce, "fg_dice": dice.mean(), "dist_bce": dist_bce}


def _crop_origins(foreground: torch.Tensor, index: np.ndarray, crop_cells: tuple[int, int], coarse: int,
                  object_share: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners (finest-stride cells, multiples of ``coarse``) of one crop per image.

    With probability ``object_share`` the crop is centred on a random foreground cell, else it is
    placed uniformly; corners are multiples of ``coarse`` cells so every stride crops exactly.
    """
    h, w = foreground.shape[-2:]
    ch, cw = crop_cells
    origins = []
    for i in index:
        cells = None
        if rng.random() < object_share:
            cells = torch.nonzero(foreground[i] > 0.5)
        if cells is not None and len(cells):
            y, x = (int(v) for v in cells[rng.integers(len(cells))])
            y0, x0 = y - ch // 2, x - cw // 2
        else:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        y0 = int(np.clip(round(y0 / coarse), 0, (h - ch) // coarse)) * coarse
        x0 = int(np.clip(round(x0 / coarse), 0, (w - cw) // coarse)) * coarse
        origins.append((y0, x0))
    return origins


def train_head(data: FeatureSet, head_config: RgbProposalHeadConfig, config: TrainConfig) -> tuple[RgbProposalModel, list[dict]]:
    """Train a head on cached features (CPU), on random crops. Returns the model (eval mode) and a loss log.

    The crops are ``crop_cells`` at the finest stride (clamped to the map size); features of the
    whole image were computed once, so the crop only limits the head's own convolutions.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = RgbProposalModel(head_config)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    strides = head_config.strides
    maps = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.maps.items()}
    foreground = torch.from_numpy(np.ascontiguousarray(data.foreground, np.float32))
    distance = torch.from_numpy(np.ascontiguousarray(data.distance, np.float32))
    n, h, w = foreground.shape
    coarse = strides[-1] // strides[0]  # finest cells per coarsest cell
    crop = (min(config.crop_cells[0], h) // coarse * coarse, min(config.crop_cells[1], w) // coarse * coarse)
    if crop[0] < coarse or crop[1] < coarse:
        raise InvalidInputError(f"TrainConfig.crop_cells: {config.crop_cells} is smaller than one coarsest cell ({coarse})")
    log, running, started = [], [], time.perf_counter()
    order, cursor = rng.permutation(n), 0
    for step in range(config.steps):
        if cursor + config.batch_size > n:
            order, cursor = rng.permutation(n), 0
        index = order[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        origins = _crop_origins(foreground, index, crop, coarse, config.object_crop_share, rng)
        batch = {}
        for s in strides:
            f = s // strides[0]
            key = stride_key(s)
            batch[key] = torch.stack([maps[key][i, :, y // f:(y + crop[0]) // f, x // f:(x + crop[1]) // f]
                                      for i, (y, x) in zip(index, origins)]).float()
        fg = torch.stack([foreground[i, y:y + crop[0], x:x + crop[1]] for i, (y, x) in zip(index, origins)])
        dist = torch.stack([distance[i, y:y + crop[0], x:x + crop[1]] for i, (y, x) in zip(index, origins)])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        losses = head_loss(model(batch), fg, dist, config.distance_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        running.append({k: v.detach().item() for k, v in losses.items()})
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            mean = {k: float(np.mean([r[k] for r in running])) for k in running[0]}
            log.append({"step": step + 1, "seconds": round(time.perf_counter() - started, 1), **{k: round(v, 4) for k, v in mean.items()}})
            logger.info("step %d/%d  %s  (%.0f s)", step + 1, config.steps,
                        "  ".join(f"{k} {v:.4f}" for k, v in mean.items()), time.perf_counter() - started)
            running = []
    model.eval()
    return model, log


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def iou_matrix(masks_a: Sequence[np.ndarray], masks_b: Sequence[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) mask IoUs of two lists of (H, W) bool masks of one image."""
    if not masks_a or not masks_b:
        return np.zeros((len(masks_a), len(masks_b)))
    a = np.stack(masks_a).reshape(len(masks_a), -1).astype(np.float32)
    b = np.stack(masks_b).reshape(len(masks_b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@dataclass
class ProposalCounts:
    """Recall / precision counts over images (see :func:`count_matches`)."""

    gt: int = 0
    recalled: int = 0
    proposals: int = 0
    correct: int = 0
    images: int = 0

    def add(self, other: ProposalCounts) -> None:
        for name in ("gt", "recalled", "proposals", "correct", "images"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        return {
            "recall": round(self.recalled / self.gt, 4) if self.gt else None,
            "precision": round(self.correct / self.proposals, 4) if self.proposals else None,
            "gt_instances": self.gt, "recalled": self.recalled, "proposals": self.proposals,
            "correct_proposals": self.correct, "images": self.images,
        }


def count_matches(proposal_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray], visib_fracts: Sequence[float],
                  min_visib_fract: float = MIN_VISIB_FRACT, match_iou: float = MATCH_IOU) -> ProposalCounts:
    """Recall and precision counts of one image.

    A GT instance with ``visib_fract >= min_visib_fract`` is recalled when some proposal overlaps
    its visible mask with IoU >= ``match_iou``; a proposal is correct when it reaches that IoU with
    any GT instance (occluded ones included: they are objects, just not counted for recall).
    With ``match_iou >= 0.5`` a proposal can reach it with at most one of the (disjoint) GT masks,
    so no assignment step is needed.
    """
    ious = iou_matrix(list(proposal_masks), list(gt_masks))
    target = np.asarray(visib_fracts, float) >= min_visib_fract
    best_per_gt = ious.max(0) if len(proposal_masks) else np.zeros(len(gt_masks))
    best_per_proposal = ious.max(1) if len(gt_masks) else np.zeros(len(proposal_masks))
    return ProposalCounts(gt=int(target.sum()), recalled=int((target & (best_per_gt >= match_iou)).sum()),
                          proposals=len(proposal_masks), correct=int((best_per_proposal >= match_iou).sum()), images=1)


@dataclass
class PredictedImage:
    """Head output of one image kept for the threshold search."""

    foreground: np.ndarray
    distance: np.ndarray
    masks_visib: list[np.ndarray]
    visib_fracts: list[float]


def predict_split(root: Path, model: RgbProposalModel, backbone: Backbone) -> tuple[list[PredictedImage], dict]:
    """Head maps of every image of a split plus per-image timings (ms) of backbone and head."""
    images, t_backbone, t_head = [], [], []
    for sample in iter_split(root):
        t0 = time.perf_counter()
        features = backbone(image_tensor(sample.rgb, backbone.device))
        t1 = time.perf_counter()
        fg, dist = predict_maps(model, features)
        fg, dist = fg[0].cpu().numpy(), dist[0].cpu().numpy()
        t2 = time.perf_counter()
        t_backbone.append(1e3 * (t1 - t0))
        t_head.append(1e3 * (t2 - t1))
        images.append(PredictedImage(fg, dist, sample.masks_visib, sample.visib_fracts))
    return images, {"backbone_ms_median": float(np.median(t_backbone)), "head_ms_median": float(np.median(t_head))}


def evaluate_predictions(images: Sequence[PredictedImage], config: RgbProposalConfig) -> tuple[ProposalCounts, float]:
    """Counts of the proposals made from predicted maps with ``config``, and the median post-processing time (ms)."""
    total = ProposalCounts()
    times = []
    for image in images:
        t0 = time.perf_counter()
        masks = [p.mask for p in proposals_from_maps(image.foreground, image.distance, config)]
        times.append(1e3 * (time.perf_counter() - t0))
        total.add(count_matches(masks, image.masks_visib, image.visib_fracts))
    return total, float(np.median(times)) if times else 0.0


def select_thresholds(images: Sequence[PredictedImage], base: RgbProposalConfig) -> tuple[RgbProposalConfig, list[dict]]:
    """Grid search of :data:`THRESHOLD_GRID`: the highest recall, ties broken by precision, then by
    the ``foreground_threshold`` closest to 0.5 (an even probability) and the higher ``min_score``
    (fewer spurious proposals on images unlike the validation set)."""
    results = []
    for values in itertools.product(*THRESHOLD_GRID.values()):
        config = replace(base, **dict(zip(THRESHOLD_GRID, values)))
        counts, _ = evaluate_predictions(images, config)
        summary = counts.summary()
        results.append({**dict(zip(THRESHOLD_GRID, values)), "recall": summary["recall"], "precision": summary["precision"]})
    best = max(results, key=lambda r: (r["recall"] or 0.0, r["precision"] or 0.0, -abs(r["foreground_threshold"] - 0.5),
                                       r["min_score"]))
    return replace(base, **{k: best[k] for k in THRESHOLD_GRID}), results


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pose_train_rgb_proposals", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=Path("models"), help="where the .pt and .json are written")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/rgb_proposals"), help="generated data and features")
    p.add_argument("--heldout-bop-models", type=Path, default=None,
                   help="optional BOP models/ directory (never trained on) rendered into extra evaluation workcells")
    p.add_argument("--train-workcells", type=int, default=TRAIN_SPLIT.num_workcells)
    p.add_argument("--train-data", choices=("plain", "dr"), default="plain",
                   help="plain: the procedural raster split (the original head); dr: domain-randomized images "
                        "(pose_node.training.rgb_proposal_dr: training-split YCB meshes and procedural shapes, room, "
                        "distractors, strong lighting, colour camera model)")
    p.add_argument("--dr-workcells", type=int, default=DrWorkcellConfig.num_workcells,
                   help="workcells of the domain-randomized set (--train-data dr)")
    p.add_argument("--dr-ablate", choices=tuple(DR_ABLATIONS), action="append", default=[],
                   help="leave one randomization out of --train-data dr (ablation runs; repeatable)")
    p.add_argument("--ycb-models-dirs", type=Path, nargs="*", default=None,
                   help="BOP models folders for --train-data dr (only training-split ids load; default: "
                        "pose_node.datasets.splits.default_ycb_models_dirs())")
    p.add_argument("--eval-bop", action="append", default=[], metavar="NAME=DIR",
                   help="also evaluate on a BOP folder (e.g. ood_val=out/ood_val); repeatable; test-split objects refused "
                        "when it is used to select thresholds")
    p.add_argument("--select-on", default="val",
                   help="set whose threshold grid search picks the post-processing thresholds: val or an --eval-bop NAME")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--threads", type=int, default=TrainConfig.num_threads)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--device", default="cpu", help="backbone device for feature extraction (training runs on the CPU)")
    args = p.parse_args(argv)
    if args.train_workcells < 1 or args.steps < 1 or args.threads < 1 or args.dr_workcells < 1:
        p.error("--train-workcells, --dr-workcells, --steps and --threads must be >= 1")
    extra = {}
    for item in args.eval_bop:
        name, sep, folder = item.partition("=")
        if not sep or not name or name in ("train", "val", "test", "heldout") or not (Path(folder) / "test").is_dir():
            p.error(f"--eval-bop: expected NAME=DIR with a new NAME and a BOP folder (DIR/test), got {item!r}")
        extra[name] = Path(folder)
    args.eval_bop = extra
    if args.select_on != "val" and args.select_on not in extra:
        p.error(f"--select-on: {args.select_on!r} is neither val nor an --eval-bop name")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pose_train_rgb_proposals`` (see the module docstring)."""
    from pose_node.features.registry import create_backbone

    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    head_config = RgbProposalHeadConfig()
    train_config = TrainConfig(steps=args.steps, seed=args.seed, num_threads=args.threads)
    splits = {"train": replace(TRAIN_SPLIT, num_workcells=args.train_workcells), "val": VAL_SPLIT, "test": TEST_SPLIT}
    if args.train_data == "dr":
        ycb_dirs = tuple(str(d.resolve()) for d in (args.ycb_models_dirs if args.ycb_models_dirs is not None
                                                    else default_ycb_models_dirs()))
        if not ycb_dirs:
            logger.warning("--train-data dr: no YCB models folder found; procedural training objects only")
        splits["train"] = DrWorkcellConfig(num_workcells=args.dr_workcells, ycb_models_dirs=ycb_dirs)
        for name in args.dr_ablate:
            splits["train"] = replace(splits["train"], name=f"{splits['train'].name}-no_{name}", **DR_ABLATIONS[name])
    if args.heldout_bop_models is not None:
        if not (args.heldout_bop_models / "models_info.json").is_file():
            raise InvalidInputError(f"--heldout-bop-models: {args.heldout_bop_models} has no models_info.json")
        splits["heldout"] = replace(HELDOUT_SPLIT, objects=str(args.heldout_bop_models.resolve()))
    roots, generation_s = {}, {}
    for name, split in splits.items():
        t0 = time.perf_counter()
        roots[name] = (generate_dr_split(split, args.cache_dir) if isinstance(split, DrWorkcellConfig)
                       else generate_split(split, args.cache_dir))
        generation_s[name] = json.loads((roots[name] / _DONE_FILE).read_text())["seconds"]
        logger.info("split %s ready at %s (%.0f s now)", name, roots[name], time.perf_counter() - t0)
    backbone = create_backbone(BackboneConfig(name=head_config.backbone, device=args.device))
    train_data = precompute_features(roots["train"], backbone, head_config, args.cache_dir)
    features_s = feature_seconds(roots["train"], backbone, head_config, args.cache_dir)
    t0 = time.perf_counter()
    model, loss_log = train_head(train_data, head_config, train_config)
    train_s = time.perf_counter() - t0

    model = model.to(backbone.device)
    for name, folder in args.eval_bop.items():
        roots[name] = folder
    if args.select_on != "val":
        check_not_test_set(args.eval_bop[args.select_on], f"select thresholds on {args.eval_bop[args.select_on]}")
    predicted = {args.select_on: predict_split(roots[args.select_on], model, backbone)}
    config, grid = select_thresholds(predicted[args.select_on][0], RgbProposalConfig())
    logger.info("thresholds from %s: %s", args.select_on, {k: getattr(config, k) for k in THRESHOLD_GRID})
    evaluation = {}
    for name in [n for n in ("val", "test", "heldout", *args.eval_bop) if n in roots]:
        images, timing = predicted[name] if name in predicted else predict_split(roots[name], model, backbone)
        counts, post_ms = evaluate_predictions(images, config)
        evaluation[name] = {**counts.summary(), "split": asdict(splits[name]) if name in splits else str(roots[name]),
                            **{k: round(v, 1) for k, v in timing.items()},
                            "postprocess_ms_median": round(post_ms, 1)}
        logger.info("%s: %s", name, evaluation[name])

    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights = args.out_dir / WEIGHTS_FILE_NAME
    record = {
        "description": "RGB class-agnostic proposal head on frozen EfficientNet-Lite0 features (pose_node.detection.proposals_rgb)",
        "command": "pose_train_rgb_proposals " + " ".join(argv if argv is not None else sys.argv[1:]),
        "head_config": asdict(head_config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_config": asdict(train_config),
        "backbone_cache_key": backbone.cache_key,
        "splits": {name: asdict(split) for name, split in splits.items()},
        "proposal_config": {k: v for k, v in asdict(config).items() if k not in ("weights_path", "device")},
        "metric": f"recall: GT instances with visib_fract >= {MIN_VISIB_FRACT} matched by a proposal at mask IoU >= "
                  f"{MATCH_IOU}; precision: proposals with IoU >= {MATCH_IOU} to any GT instance",
        "evaluation": evaluation,
        "threshold_grid_val" if args.select_on == "val" else f"threshold_grid_{args.select_on}": grid,
        "timing_note": "seconds when each step ran (generation and features are cached and reused by later runs); "
                       "per-image times are medians at 640 x 480 with torch_threads threads",
        "timing_s": {"generation": {k: round(v, 1) for k, v in generation_s.items()}, "features_train": round(features_s, 1),
                     "training": round(train_s, 1), "total_this_run": round(time.perf_counter() - started, 1)},
        "loss_log": loss_log,
        "host": {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": args.threads,
                 "torch": torch.__version__},
    }
    save_checkpoint(model.cpu(), weights, metadata={"proposal_config": json.dumps(record["proposal_config"])})
    record["weights_file"] = weights.name
    record["weights_bytes"] = weights.stat().st_size
    record["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    weights.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    logger.info("wrote %s (%d bytes) and %s", weights, record["weights_bytes"], weights.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
