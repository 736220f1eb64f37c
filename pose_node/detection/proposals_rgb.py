"""Class-agnostic instance proposals from one RGB image (no depth, no object identity).

Two sources:

* :func:`rgb_proposals`: a small segmentation head (:class:`RgbProposalModel`, 70 k parameters,
  a 0.3 MB file) on the frozen EfficientNet-Lite0 feature maps that the detector computes once per
  view anyway (strides 4, 8, 16 and 32, FPN-style top-down fusion, output at stride 4). It
  predicts two maps per stride-4 cell:

  - ``foreground``: the probability that the cell shows an object (anything standing on the
    table, as opposed to the table and the background);
  - ``inner distance``: the distance of the cell to the border of the visible mask of its
    instance, divided by the largest such distance in that instance (1 deep inside, 0 at the
    border, including the contact line between two touching instances).

  Instances: both maps are upsampled to the image size (labelling runs on every
  ``work_stride_px``-th pixel, masks are full resolution); the seeds are the connected components
  of ``inner distance > seed_threshold`` inside the foreground (the cores of the instances,
  separated because the distance falls to 0 where instances meet). The seeds grow back over the
  foreground in ``growth_levels`` steps of decreasing distance, each step giving a pixel to the
  nearest region of its connected component, so neighbours meet near the valley of the distance
  map (an approximate watershed; scipy's ``watershed_ift`` did not split symmetric valleys in
  the middle in our tests). Foreground components that hold no seed (small objects whose
  predicted distance stays low) are instances of their own. Masks smaller than ``min_area_px`` are
  dropped. Score: the mean foreground probability over the mask. The per-instance
  normalization of the distance makes the seeds scale-free: a thin part of an object (a bottle
  neck) has a low normalized distance and does not seed an instance of its own.

  The head is trained on synthetic workcell renders of procedural objects only
  (:mod:`pose_node.training.rgb_proposals`, one command), so the shipped weights are
  reproducible from a fresh clone.

* :func:`onnx_proposals`: any user-supplied proposal model exported to ONNX (e.g. FastSAM or SAM
  with their post-processing inside the graph) following :data:`ONNX_CONTRACT`.

Post-processing runs with NumPy/SciPy/OpenCV on the host: the head output is copied to the CPU
in one place (:func:`rgb_proposals`), documented there.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from pose_node.core.resources import shipped_file, shipped_file_candidates
from pose_node.core.errors import InvalidInputError, StageUnavailableError, check_fields
from pose_node.core.onnx_session import OnnxSessionError, open_onnx_session
from pose_node.detection.proposal_types import Proposal
from pose_node.features.backbones import Backbone, BackboneConfig, BackboneFeatures, stride_key

logger = logging.getLogger(__name__)

WEIGHTS_FILE_NAME = "rgb_proposals_effl0.pt"
CHECKPOINT_FORMAT = "pose_node.rgb_proposals/1"
TRAIN_COMMAND = "pose_train_rgb_proposals (python -m pose_node.training.rgb_proposals)"


# --------------------------------------------------------------------------------------------
# Configuration and weights lookup
# --------------------------------------------------------------------------------------------


def weights_search_paths(file_name: str = WEIGHTS_FILE_NAME) -> list[Path]:
    """Where the shipped weights are looked for, in order (:func:`pose_node.core.resources.shipped_file_candidates`)."""
    return shipped_file_candidates(file_name)


def default_weights_path() -> Path:
    """The first existing file of :func:`weights_search_paths`, else the first candidate."""
    return shipped_file(WEIGHTS_FILE_NAME)


@dataclass(frozen=True)
class RgbProposalConfig:
    """Parameters of :func:`rgb_proposals`.

    Thresholds were chosen on the validation split of the photoreal out-of-domain set
    (``pose_ood_set --split validation``; never on its test split), see the weights' JSON.

    Attributes:
        weights_path: head checkpoint (``.pt``); None: the shipped ``models/rgb_proposals_effl0.pt``
            (:func:`default_weights_path`).
        device: torch device of the head (and of the default backbone when none is passed).
        foreground_threshold: a pixel is foreground when its probability exceeds this.
        seed_threshold: seeds are foreground pixels whose normalized inner distance exceeds this.
        min_seed_area_px: seed components smaller than this (pixels) are ignored.
        growth_levels: steps in which the seeds grow back over the foreground.
        work_stride_px: the instance labelling runs on every n-th pixel (1: full resolution);
            masks are still full resolution.
        min_area_px: proposals with fewer mask pixels are dropped.
        min_score: proposals whose mean foreground probability is lower are dropped.
        max_proposals: best-scoring proposals returned.
    """

    weights_path: str | None = None
    device: str = "cpu"
    foreground_threshold: float = 0.6
    seed_threshold: float = 0.4
    min_seed_area_px: int = 16
    growth_levels: int = 4
    work_stride_px: int = 2
    min_area_px: int = 200
    min_score: float = 0.7
    max_proposals: int = 50

    def __post_init__(self) -> None:
        checks = [
            ("foreground_threshold", 0.0 < self.foreground_threshold < 1.0),
            ("seed_threshold", 0.0 < self.seed_threshold < 1.0),
            ("min_seed_area_px", self.min_seed_area_px >= 1),
            ("growth_levels", self.growth_levels >= 1),
            ("work_stride_px", self.work_stride_px >= 1),
            ("min_area_px", self.min_area_px >= 1),
            ("min_score", 0.0 <= self.min_score <= 1.0),
            ("max_proposals", self.max_proposals >= 1),
        ]
        check_fields(self, checks)
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise InvalidInputError(f"RgbProposalConfig.device: {err}") from err

    def resolved_weights_path(self) -> Path:
        return Path(self.weights_path).expanduser() if self.weights_path is not None else default_weights_path()


# --------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RgbProposalHeadConfig:
    """Architecture of :class:`RgbProposalModel` (stored in the checkpoint).

    Attributes:
        backbone: the backbone name whose features the head reads (``BackboneConfig.name``).
        strides: input feature strides, ascending; the output is at the first one.
        in_channels: channels of the backbone map at each stride.
        hidden_channels: width of the coarse (top-down) path.
        fine_channels: width at the output stride.
    """

    backbone: str = "efficientnet_lite0"
    strides: tuple[int, ...] = (4, 8, 16, 32)
    in_channels: tuple[int, ...] = (24, 40, 112, 320)
    hidden_channels: int = 48
    fine_channels: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "in_channels", tuple(int(c) for c in self.in_channels))
        if len(self.strides) < 2 or len(self.strides) != len(self.in_channels) or list(self.strides) != sorted(self.strides):
            raise InvalidInputError(
                f"RgbProposalHeadConfig.strides / in_channels: need >= 2 ascending strides with one channel count each, "
                f"got {self.strides} / {self.in_channels}"
            )
        if self.hidden_channels < 1 or self.fine_channels < 1:
            raise InvalidInputError("RgbProposalHeadConfig.hidden_channels / fine_channels: must be >= 1")


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def _separable(c: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise: a 3x3 receptive field at a ninth of the cost of a full conv."""
    return nn.Sequential(_conv_bn_relu(c, c, 3, groups=c), _conv_bn_relu(c, c, 1))


class RgbProposalModel(nn.Module):
    """FPN-style head: backbone maps (strides 4..32) -> foreground and inner-distance logits at stride 4.

    Lateral 1x1 projections, a top-down path that upsamples and adds (one 3x3 conv per coarse
    level), and depthwise-separable convs at the finest stride.
    """

    def __init__(self, config: RgbProposalHeadConfig = RgbProposalHeadConfig()) -> None:
        super().__init__()
        self.config = config
        hidden, fine = config.hidden_channels, config.fine_channels
        self.lateral = nn.ModuleList(
            [_conv_bn_relu(c, fine if i == 0 else hidden, 1) for i, c in enumerate(config.in_channels)]
        )
        # One smoothing conv per level below the coarsest, coarse to fine (index 0 unused).
        self.smooth = nn.ModuleList([nn.Identity()] + [_conv_bn_relu(hidden, hidden) for _ in config.strides[1:-1]])
        self.to_fine = _conv_bn_relu(hidden, fine, 1)
        self.fine = nn.Sequential(_separable(fine), _separable(fine))
        self.out = nn.Conv2d(fine, 2, 1)

    def forward(self, feature_maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the two maps.

        Args:
            feature_maps: ``stride_key(s)`` -> (B, C_s, H_s, W_s) for every configured stride
                (extra keys are ignored), all on the head's device.
        Returns:
            (B, 2, H_4, W_4) logits at the finest stride: channel 0 foreground, channel 1 the
            normalized inner distance (apply a sigmoid to both).
        """
        maps = [feature_maps[stride_key(s)] for s in self.config.strides]
        dtype = self.out.weight.dtype
        x = self.lateral[-1](maps[-1].to(dtype))
        for level in range(len(maps) - 2, 0, -1):
            lateral = self.lateral[level](maps[level].to(dtype))
            x = self.smooth[level](lateral + F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False))
        finest = self.lateral[0](maps[0].to(dtype))
        x = finest + F.interpolate(self.to_fine(x), size=finest.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fine(x))


def save_checkpoint(model: RgbProposalModel, path: Path, metadata: dict | None = None) -> Path:
    """Write the head's weights and architecture to ``path`` (loadable with ``weights_only``)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "head_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.config).items()},
        "state_dict": {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
                       for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_rgb_proposal_model(path: str | Path, device: str = "cpu") -> RgbProposalModel:
    """Load a head checkpoint (cached per path, file modification time and device).

    The returned module is shared between callers (frozen, eval mode): do not modify it.

    Raises:
        StageUnavailableError: the file is missing (the message names the path and the command
            that trains the weights) or is not a checkpoint of this head.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        tried = "" if path != default_weights_path() else f" (searched: {', '.join(str(p) for p in weights_search_paths())})"
        raise StageUnavailableError(
            f"RgbProposalConfig.weights_path: RGB proposal weights not found: {path}{tried}; "
            f"train them with `{TRAIN_COMMAND}`"
        )
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns, str(device))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, device: str) -> RgbProposalModel:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, OSError, EOFError) as err:
        raise StageUnavailableError(f"RgbProposalConfig.weights_path: cannot read {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise StageUnavailableError(f"RgbProposalConfig.weights_path: {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    model = RgbProposalModel(RgbProposalHeadConfig(**payload["head_config"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise StageUnavailableError(f"RgbProposalConfig.weights_path: {path} does not match the head: {err}") from err
    model.requires_grad_(False)
    model.eval()
    logger.debug("loaded RGB proposal head %s (mtime %d) on %s", path, mtime_ns, device)
    return model.to(torch.device(device))


@functools.lru_cache(maxsize=4)
def _default_backbone(name: str, device: str) -> Backbone:
    from pose_node.features.registry import create_backbone

    return create_backbone(BackboneConfig(name=name, device=device))


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def validate_rgb(rgb: np.ndarray, argument: str = "rgb") -> np.ndarray:
    """Check an (H, W, 3) uint8 image.

    Raises:
        InvalidInputError: naming ``argument`` and what was received.
    """
    if not isinstance(rgb, np.ndarray):
        raise InvalidInputError(f"{argument}: expected a (H, W, 3) uint8 numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise InvalidInputError(f"{argument}: expected dtype uint8, got {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InvalidInputError(f"{argument}: expected shape (H, W, 3), got {rgb.shape}")
    return rgb


def image_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] on ``device`` from an (H, W, 3) uint8 RGB image."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float().div_(255.0)


def _check_features(features: BackboneFeatures, model: RgbProposalModel, hw: tuple[int, int], device: torch.device) -> None:
    if not isinstance(features, BackboneFeatures):
        raise InvalidInputError(f"features: expected BackboneFeatures, got {type(features).__name__}")
    if tuple(features.image_hw) != hw:
        raise InvalidInputError(f"features: computed for an image of {tuple(features.image_hw)} (H, W), rgb is {hw}")
    for stride, channels in zip(model.config.strides, model.config.in_channels):
        key = stride_key(stride)
        fmap = features.feature_maps.get(key)
        if fmap is None:
            raise InvalidInputError(f"features: no map {key!r} (have {sorted(features.feature_maps)}); the head needs "
                                    f"{model.config.backbone} features at strides {model.config.strides}")
        if fmap.ndim != 4 or fmap.shape[0] != 1 or fmap.shape[1] != channels:
            raise InvalidInputError(f"features: map {key!r} must be (1, {channels}, h, w), got {tuple(fmap.shape)}")
        if fmap.device != device:
            raise InvalidInputError(f"features: map {key!r} is on {fmap.device}, the head on {device} "
                                    "(RgbProposalConfig.device); nothing is moved implicitly")


def predict_maps(model: RgbProposalModel, features: BackboneFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground probability and normalized inner distance at image resolution.

    Args:
        model: the head, on the features' device.
        features: backbone features of B images of size (H, W).
    Returns:
        foreground (B, H, W) and inner distance (B, H, W), both in [0, 1], on the features' device.
    """
    H, W = features.image_hw
    with torch.no_grad():
        logits = model(features.feature_maps)
        stride = model.config.strides[0]
        h, w = logits.shape[-2:]
        # Cell j covers pixels [s j, s j + s): upsampling by s with align_corners=False puts the
        # cell centre at pixel s j + (s - 1) / 2, the backbone's rule; crop the ceil padding.
        up = F.interpolate(logits, size=(h * stride, w * stride), mode="bilinear", align_corners=False)[..., :H, :W]
        probs = torch.sigmoid(up.float())
    return probs[:, 0], probs[:, 1]


def _assign_nearest(labels: np.ndarray, region: np.ndarray) -> None:
    """Give each unlabelled pixel of ``region`` the label of the nearest labelled pixel of its
    connected component of ``region`` (in place; pixels whose nearest label lies in another
    component stay unlabelled)."""
    todo = region & (labels == 0)
    labelled = labels > 0
    if not todo.any() or not labelled.any():
        return
    _, component = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    # DIST_LABEL_PIXEL numbers the zero (labelled) pixels 1..n in raster order.
    _, nearest = cv2.distanceTransformWithLabels((~labelled).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    rows, cols = np.nonzero(todo)
    source = nearest[rows, cols] - 1
    candidate = labels[labelled][source]
    same = component[labelled][source] == component[rows, cols]
    labels[rows[same], cols[same]] = candidate[same]


def label_instances(foreground: np.ndarray, distance: np.ndarray, config: RgbProposalConfig, cell_area_px: float = 1.0) -> np.ndarray:
    """Instance labels of a foreground / inner-distance grid (see the module docstring).

    The seeds grow back over the foreground in ``growth_levels`` steps of decreasing distance; at
    each step a pixel joins the nearest region of its connected component, so neighbours meet
    near the valley of the distance map (an approximation of a watershed on the distance).

    Args:
        foreground: (h, w) bool.
        distance: (h, w) float32 normalized inner distance.
        config: thresholds.
        cell_area_px: image pixels per grid cell (converts ``min_seed_area_px``).
    Returns:
        (h, w) int32 labels, 0 = background, instances 1..n.
    """
    seeds = (foreground & (distance > config.seed_threshold)).astype(np.uint8)
    count, seed_labels, stats, _ = cv2.connectedComponentsWithStats(seeds, connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] * cell_area_px >= config.min_seed_area_px) + 1
    relabel = np.zeros(count, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    labels = relabel[seed_labels]
    for level in np.linspace(config.seed_threshold, 0.0, config.growth_levels + 1)[1:]:
        _assign_nearest(labels, foreground & (distance > level) if level > 0 else foreground)
    # Foreground components without any seed are instances of their own.
    n_fg, fg_labels = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=8)
    seeded = np.zeros(n_fg, bool)
    seeded[fg_labels[labels > 0]] = True
    orphan = ~seeded
    orphan[0] = False
    if orphan.any():
        orphan_ids = np.zeros(n_fg, np.int32)
        orphan_ids[orphan] = np.arange(1, int(orphan.sum()) + 1) + int(labels.max())
        labels = np.where(labels > 0, labels, orphan_ids[fg_labels])
    return labels


def instances_from_maps(foreground: np.ndarray, distance: np.ndarray, config: RgbProposalConfig) -> list[tuple[np.ndarray, float]]:
    """Instance masks from the two maps at image resolution (see the module docstring).

    The labelling runs on every ``work_stride_px``-th pixel; the full-resolution mask of an
    instance is the foreground pixels whose grid cell (or, at the rim, a neighbouring cell) carries
    its label.

    Args:
        foreground: (H, W) float32 foreground probability.
        distance: (H, W) float32 normalized inner distance in [0, 1].
        config: thresholds.
    Returns:
        (mask (H, W) bool, score in [0, 1]) per instance, unsorted, before ``min_score`` and
        ``max_proposals``.
    """
    fg_full = foreground > config.foreground_threshold
    if not fg_full.any():
        return []
    H, W = fg_full.shape
    s = config.work_stride_px
    rows, cols = np.flatnonzero(fg_full.any(1)), np.flatnonzero(fg_full.any(0))
    # Crop to the foreground box, aligned to the grid, with one cell of margin.
    y0, x0 = max(rows[0] // s - 1, 0) * s, max(cols[0] // s - 1, 0) * s
    y1, x1 = min(rows[-1] + 1 + s, H), min(cols[-1] + 1 + s, W)
    fg_c, prob_c = fg_full[y0:y1, x0:x1], foreground[y0:y1, x0:x1]
    grid = label_instances(fg_c[::s, ::s], distance[y0:y1:s, x0:x1:s], config, cell_area_px=float(s * s))
    if s > 1:
        # Rim pixels of the full-resolution foreground may fall in a background cell: take a
        # neighbouring cell's label there.
        grown = cv2.dilate(grid.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
        grid = np.where(grid > 0, grid, grown)
        grid = grid[np.arange(y1 - y0)[:, None] // s, np.arange(x1 - x0)[None, :] // s]
    labels = np.where(fg_c, grid, 0)
    results = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        local = labels[window] == index
        area = int(np.count_nonzero(local))
        if area < config.min_area_px:
            continue
        score = float(prob_c[window][local].mean())
        mask = np.zeros((H, W), bool)
        mask[y0 + window[0].start:y0 + window[0].stop, x0 + window[1].start:x0 + window[1].stop] = local
        results.append((mask, score))
    return results


def proposals_from_maps(foreground: np.ndarray, distance: np.ndarray, config: RgbProposalConfig) -> list[Proposal]:
    """Proposals (``source="rgb"``, best score first) from the head's maps at image resolution.

    Args:
        foreground: (H, W) float32 foreground probability.
        distance: (H, W) float32 normalized inner distance.
        config: thresholds, ``min_score`` and ``max_proposals``.
    """
    instances = [(m, s) for m, s in instances_from_maps(foreground, distance, config) if s >= config.min_score]
    instances.sort(key=lambda item: -item[1])
    return [_proposal(mask, score, "rgb") for mask, score in instances[: config.max_proposals]]


def rgb_proposals(
    rgb: np.ndarray,
    config: RgbProposalConfig | None = None,
    *,
    backbone: Backbone | None = None,
    features: BackboneFeatures | None = None,
) -> list[Proposal]:
    """Class-agnostic instance proposals of one RGB image (see the module docstring).

    Args:
        rgb: (H, W, 3) uint8 RGB image.
        config: parameters; None: the defaults (shipped weights, CPU).
        backbone: the feature backbone (must be the one the head was trained on, by default
            ``efficientnet_lite0``); None: a default one on ``config.device``, created once.
        features: precomputed features of ``rgb`` (batch of one, on ``config.device``), so a
            detector computes the backbone once per view; when given, ``backbone`` is unused.
    Returns:
        Up to ``max_proposals`` proposals with ``source="rgb"`` and ``points_cam=None``, best
        score first. The head output is copied to the host for the post-processing (the only
        device hop).
    Raises:
        InvalidInputError: bad ``rgb`` (dtype, shape) or ``features`` (size, strides, device),
            or a backbone other than the head's.
        StageUnavailableError: the weights file is missing or unreadable (the message names the
            path and the training command).
    """
    started = time.perf_counter()
    config = config or RgbProposalConfig()
    validate_rgb(rgb)
    device = torch.device(config.device)
    model = load_rgb_proposal_model(config.resolved_weights_path(), config.device)
    if features is None:
        if backbone is None:
            backbone = _default_backbone(model.config.backbone, config.device)
        if backbone.name != model.config.backbone:
            raise InvalidInputError(f"backbone: the RGB proposal head reads {model.config.backbone!r} features, got {backbone.name!r}")
        if backbone.device != device:
            raise InvalidInputError(f"backbone: on {backbone.device}, RgbProposalConfig.device is {device}")
        features = backbone(image_tensor(rgb, device))
    t_features = time.perf_counter()
    _check_features(features, model, rgb.shape[:2], device)
    foreground, distance = predict_maps(model, features)
    foreground = foreground[0].cpu().numpy()
    distance = distance[0].cpu().numpy()
    t_head = time.perf_counter()
    proposals = proposals_from_maps(foreground, distance, config)
    logger.debug("rgb_proposals: %d proposals in %.1f ms (features %.1f, head %.1f, instances %.1f)", len(proposals),
                 1e3 * (time.perf_counter() - started), 1e3 * (t_features - started), 1e3 * (t_head - t_features),
                 1e3 * (time.perf_counter() - t_head))
    return proposals


def _proposal(mask: np.ndarray, score: float, source: str) -> Proposal:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.int64)
    return Proposal(mask=mask, box_xyxy=box, score=float(np.clip(score, 0.0, 1.0)), source=source)


# --------------------------------------------------------------------------------------------
# User-supplied ONNX proposal models
# --------------------------------------------------------------------------------------------

ONNX_INPUT_NAME = "images"
ONNX_MASKS_NAME = "masks"
ONNX_SCORES_NAME = "scores"
ONNX_CONTRACT = """\
ONNX proposal model contract (checked when the model is loaded):

- Input ``images``: (1, 3, H_in, W_in) float32, RGB in [0, 1], no mean/std normalization (do it
  inside the graph). H_in, W_in are either dynamic (the image is passed at its own size) or
  fixed (the image is resized to them, without letterboxing, and the masks are mapped back).
- Output ``masks``: (N, H_m, W_m) float32 per-instance foreground probabilities in [0, 1]
  covering the whole input image (any H_m, W_m; e.g. stride-4 masks); they are resized
  bilinearly to the original image size and thresholded at ``mask_threshold``. N may be 0.
- Output ``scores``: (N,) float32 objectness in [0, 1].
- Other outputs are ignored. Models whose exported graph ends in raw detector tensors (e.g.
  FastSAM's YOLO head, SAM's prompt decoder) need their post-processing (box decoding,
  prototype-mask assembly, NMS, or an automatic point grid) inside the exported graph.
"""


@dataclass(frozen=True)
class OnnxProposalConfig:
    """Parameters of :func:`onnx_proposals` (the model contract is :data:`ONNX_CONTRACT`).

    Attributes:
        mask_threshold: a pixel belongs to a mask when its probability exceeds this.
        min_score: proposals with a lower model score are dropped.
        min_area_px: masks with fewer pixels (at image size) are dropped.
        max_proposals: best-scoring proposals returned.
        providers: onnxruntime execution providers, in order of preference.
    """

    mask_threshold: float = 0.5
    min_score: float = 0.25
    min_area_px: int = 100
    max_proposals: int = 50
    providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))

    def __post_init__(self) -> None:
        checks = [
            ("mask_threshold", 0.0 <= self.mask_threshold < 1.0), ("min_score", 0.0 <= self.min_score <= 1.0),
            ("min_area_px", self.min_area_px >= 1), ("max_proposals", self.max_proposals >= 1),
            ("providers", len(self.providers) >= 1),
        ]
        check_fields(self, checks)


class OnnxProposalModelError(StageUnavailableError, OnnxSessionError):
    """ONNX Runtime cannot load the proposal model."""


@functools.lru_cache(maxsize=4)
def _onnx_session(path: str, mtime_ns: int, providers: tuple[str, ...]):
    import onnxruntime as ort

    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise InvalidInputError(f"OnnxProposalConfig.providers: {missing} not available; have {ort.get_available_providers()}")
    session = open_onnx_session(path, providers, error=OnnxProposalModelError,
                                message=f"model_path: cannot load ONNX proposal model {path}")
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    problems = []
    if ONNX_INPUT_NAME not in inputs or len(inputs) != 1:
        problems.append(f"exactly one input named {ONNX_INPUT_NAME!r} (has {sorted(inputs)})")
    elif len(inputs[ONNX_INPUT_NAME].shape) != 4:
        problems.append(f"input {ONNX_INPUT_NAME!r} of rank 4 (has shape {inputs[ONNX_INPUT_NAME].shape})")
    for name in (ONNX_MASKS_NAME, ONNX_SCORES_NAME):
        if name not in outputs:
            problems.append(f"an output named {name!r} (has {sorted(outputs)})")
    if problems:
        raise StageUnavailableError(f"model_path: {path} does not follow the ONNX proposal contract: needs "
                                    + "; ".join(problems) + "\n" + ONNX_CONTRACT)
    logger.debug("loaded ONNX proposal model %s (mtime %d)", path, mtime_ns)
    return session


def onnx_proposals(rgb: np.ndarray, model_path: str | Path, config: OnnxProposalConfig | None = None) -> list[Proposal]:
    """Proposals from a user-supplied ONNX model following :data:`ONNX_CONTRACT`.

    Args:
        rgb: (H, W, 3) uint8 RGB image.
        model_path: the ``.onnx`` file (the session is created once per path and kept).
        config: thresholds and providers; None: the defaults.
    Returns:
        Up to ``max_proposals`` proposals with ``source="onnx"``, best score first.
    Raises:
        InvalidInputError: bad ``rgb``, or the model outputs break the contract (shapes named).
        StageUnavailableError: the file is missing, unreadable, or its inputs/outputs break the
            contract.
    """
    config = config or OnnxProposalConfig()
    validate_rgb(rgb)
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise StageUnavailableError(f"model_path: ONNX proposal model not found: {path}")
    session = _onnx_session(str(path.resolve()), path.stat().st_mtime_ns, tuple(config.providers))
    H, W = rgb.shape[:2]
    in_h, in_w = session.get_inputs()[0].shape[2:]
    image = rgb
    if isinstance(in_h, int) and isinstance(in_w, int) and (in_h, in_w) != (H, W):
        image = cv2.resize(rgb, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
    masks, scores = session.run([ONNX_MASKS_NAME, ONNX_SCORES_NAME], {ONNX_INPUT_NAME: x})
    masks, scores = np.asarray(masks, np.float32), np.asarray(scores, np.float32).reshape(-1)
    if masks.ndim != 3 or masks.shape[0] != scores.shape[0]:
        raise InvalidInputError(f"model_path: output {ONNX_MASKS_NAME!r} must be (N, H_m, W_m) with N = len(scores) "
                                f"= {scores.shape[0]}, got {masks.shape}")
    proposals = []
    for index in np.argsort(-scores, kind="stable"):
        score = float(scores[index])
        if not np.isfinite(score) or score < config.min_score:
            continue
        prob = masks[index]
        if prob.shape != (H, W):
            prob = cv2.resize(prob, (W, H), interpolation=cv2.INTER_LINEAR)
        mask = prob > config.mask_threshold
        if np.count_nonzero(mask) < config.min_area_px:
            continue
        proposals.append(_proposal(mask, score, "onnx"))
        if len(proposals) == config.max_proposals:
            break
    return proposals
