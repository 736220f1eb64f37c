"""Descriptor matching of class-agnostic proposals to object templates (CNOS-style).

Each proposal is cropped like a template (:func:`crop_images`), described (see "Descriptor"
below) and compared with every template of every object by cosine similarity; an object's
score is the mean of its ``top_k`` best template similarities; the proposal takes the
best-scoring object. Detections above a score threshold go through a class-agnostic mask NMS
(:func:`nms_masks`), so two instances of one object stay apart while duplicates of one instance
go. The best templates give pose priors in the real camera (:func:`template_pose_priors`).

Crop convention (written once, here; queries and templates use the same code). A crop is the
image of a virtual *crop camera*: the same optical centre as the camera, turned to look at the
object's silhouette, with square pixels, focal ``f_c`` and principal point ``((S - 1) / 2,
(S - 1) / 2)`` on an ``S x S`` image (:func:`crop_camera`):

- ``R_camera_crop``: the crop camera looks at the centre of the silhouette's extent (the convex
  hull of the mask's pixels, :func:`mask_outline`) as seen by itself (:func:`crop_camera`: aimed
  at the image box centre first, then re-aimed once), turned from the camera by the smallest
  rotation (:func:`rotation_to_ray`);
- ``f_c = (1 - 2 * margin) * S / e``, ``e`` the larger extent of the silhouette in the crop
  camera's normalized coordinates: the silhouette's larger side fills ``(1 - 2 * margin) * S``
  pixels whatever its size and wherever it is in the image (an off-axis object is neither
  stretched nor framed differently, as it would be by an axis-aligned crop of the image);
- crop pixel ``(j, i)`` shows the image at ``K R_camera_crop [(j - (S-1)/2) / f_c, (i - (S-1)/2)
  / f_c, 1]`` (bilinear, on a grid ``k`` times finer, ``k = ceil(f / f_c)`` up to
  :data:`MAX_SUPERSAMPLING`, averaged down so large objects do not alias);
- pixels outside the mask or the image take the templates' background colour, as
  :func:`pose_node.onboarding.templates.masked_template_images` does, so a descriptor depends on
  the object only.

Templates are rendered with the object's bounding sphere filling the template (see
:mod:`pose_node.onboarding.templates`), so an elongated object seen end-on fills less of its
template than of a box crop. :func:`template_parts` therefore re-crops every template around its
own mask with this convention (``framing="mask_box"``, the default; the name says the crop
is fitted to the mask) and describes the
re-cropped templates, so proposals and templates compare like with like; ``framing="sphere"``
uses the templates as rendered (their crop camera is the template camera).

Descriptor: ``normalize([g, w * c])`` where ``g`` is the backbone's global descriptor of the
crop and ``c`` a square-rooted chromaticity histogram of its object pixels
(:func:`colour_histograms`), each minus its mean over all templates in the bank and then
normalized (``MatchingConfig.centre_descriptors``), ``w = colour_weight``; so the cosine is the
mean of the two parts' cosines for ``w = 1``. Why not the global descriptor alone, as CNOS:
EfficientNet-Lite0's pooled head (an ImageNet embedding) is far less discriminative than a
DINOv2 class token; on generated tuning scenes (GT masks, 42 templates) it identified 77-86 %
of procedural objects (96 % of YCB objects), centring alone did not change that, and adding the
colour part made it 100 % on both with a margin of 0.31-0.36 to the best wrong object.
``colour_weight=0`` and ``centre_descriptors=False`` give the plain CNOS descriptor.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pose_node.core.errors import InvalidInputError
from pose_node.detection.metrics import pairwise_mask_iou
from pose_node.features.backbones import Backbone
from pose_node.onboarding.templates import ObjectTemplates

logger = logging.getLogger(__name__)

FRAMINGS: tuple[str, ...] = ("mask_box", "sphere")
MAX_SUPERSAMPLING = 4


@dataclass(frozen=True)
class MatchingConfig:
    """Parameters of proposal-to-template matching.

    The crop size and margin are not here: they are the templates' (``TemplateConfig.
    template_size_px`` / ``crop_margin_fraction``, carried by :class:`TemplateBank`), so a crop can
    never be framed differently from the templates it is compared with.

    Attributes:
        top_k: an object's score is the mean of its ``top_k`` best template similarities (CNOS: 5).
        score_threshold: detections scoring below this are dropped. CNOS keeps >= 0.15 with DINOv2
            class tokens; scores here are cosines of centred EfficientNet-Lite0 + colour
            descriptors (module docstring), on another scale. 0.4 was chosen on generated
            tuning data (640x480; procedural and YCB objects; seeds 101 / 102, not used for
            reporting): it keeps every correctly identified proposal there (lowest such score
            0.45 procedural, 0.57 YCB; 0.41 on a 320x240 scene, where objects are small and
            crops blurrier) and rejects every proposal of an object left out of the bank on the
            procedural data, but only 38 % of them on the YCB data (whose objects look alike to
            this descriptor; 0.5 rejects 85 % there but loses 9 % of the procedural objects).
        nms_iou: class-agnostic NMS: a detection whose mask IoU with a better one exceeds this
            is dropped (CNOS: 0.25).
        max_detections: best detections kept per view after NMS.
        num_pose_priors: templates (best first) whose poses are returned per detection (<= top_k
            is usual; at most the object's template count).
        framing: ``"mask_box"`` (re-crop templates around their masks, like the proposals) or
            ``"sphere"`` (templates as rendered); see the module docstring.
        colour_weight: weight ``w`` of the colour part of the descriptor (0: the backbone's global
            descriptor alone, as CNOS); see "Descriptor" in the module docstring.
        colour_bins: bins per chromaticity axis of the colour histogram (``bins**2`` values).
        colour_min_brightness: pixels darker than this (mean RGB in [0, 1]) are left out of the
            colour histogram (their chromaticity is noise).
        centre_descriptors: subtract the mean template descriptor (each part) before the cosine.
        descriptor_batch_size: crops per backbone call.
    """

    top_k: int = 5
    score_threshold: float = 0.4
    nms_iou: float = 0.25
    max_detections: int = 50
    num_pose_priors: int = 5
    framing: str = "mask_box"
    colour_weight: float = 1.0
    colour_bins: int = 8
    colour_min_brightness: float = 0.05
    centre_descriptors: bool = True
    descriptor_batch_size: int = 32

    def __post_init__(self) -> None:
        checks = [
            ("top_k", self.top_k >= 1), ("score_threshold", -1.0 <= self.score_threshold <= 1.0),
            ("nms_iou", 0.0 < self.nms_iou <= 1.0), ("max_detections", self.max_detections >= 1),
            ("num_pose_priors", self.num_pose_priors >= 0), ("framing", self.framing in FRAMINGS),
            ("descriptor_batch_size", self.descriptor_batch_size >= 1), ("colour_weight", self.colour_weight >= 0.0),
            ("colour_bins", 2 <= self.colour_bins <= 64), ("colour_min_brightness", 0.0 <= self.colour_min_brightness < 1.0),
        ]
        for name, ok in checks:
            if not ok:
                raise InvalidInputError(f"MatchingConfig.{name}: invalid value {getattr(self, name)!r}")


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------


def rotation_to_ray(ray: np.ndarray) -> np.ndarray:
    """The smallest rotation taking ``[0, 0, 1]`` onto the direction of ``ray`` (..., 3) (z > 0).

    Returns:
        (..., 3, 3) float64 rotations ``R`` with ``R @ [0, 0, 1] = ray / |ray|``.
    """
    ray = np.asarray(ray, dtype=np.float64)
    ray = ray / np.linalg.norm(ray, axis=-1, keepdims=True)
    # R = I + [v]x + [v]x^2 / (1 + c), v = z x r, c = z . r (> 0 for rays in front of the camera).
    v = np.stack([-ray[..., 1], ray[..., 0], np.zeros(ray.shape[:-1])], axis=-1)
    c = ray[..., 2]
    vx = np.zeros((*v.shape[:-1], 3, 3))
    vx[..., 0, 1], vx[..., 0, 2] = -v[..., 2], v[..., 1]
    vx[..., 1, 0], vx[..., 1, 2] = v[..., 2], -v[..., 0]
    vx[..., 2, 0], vx[..., 2, 1] = -v[..., 1], v[..., 0]
    return np.eye(3) + vx + (vx @ vx) / (1.0 + c)[..., None, None]


def pixel_rays(K: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Rays ``K^-1 [u, v, 1]`` (..., 3) (z = 1) of pixels ``uv`` (..., 2) with intrinsics K (..., 3, 3)."""
    K = np.asarray(K, dtype=np.float64)
    uv = np.asarray(uv, dtype=np.float64)
    y = (uv[..., 1] - K[..., 1, 2]) / K[..., 1, 1]
    x = (uv[..., 0] - K[..., 0, 2] - K[..., 0, 1] * y) / K[..., 0, 0]
    return np.stack([x, y, np.ones(np.broadcast_shapes(x.shape, y.shape))], axis=-1)


def ray_rotation(K: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the optical axis onto the ray through pixel ``uv``.

    Args:
        K: (..., 3, 3) intrinsics, pixels.
        uv: (..., 2) pixels.
    Returns:
        (..., 3, 3) float64 rotations (``R @ [0, 0, 1]`` is the unit ray).
    """
    return rotation_to_ray(pixel_rays(K, uv))


def crop_camera(K: np.ndarray, outline_uv: np.ndarray, size_px: int, margin_fraction: float) -> tuple[np.ndarray, float]:
    """The crop camera framing an outline (module docstring).

    The camera first looks at the centre of the outline's image box, then at the centre of the
    outline's extent as it sees it (one refinement), so the outline is centred in the crop even
    far off the optical axis; ``f_c`` makes the outline's larger extent ``(1 - 2 * margin) * S``.

    Args:
        K: (3, 3) intrinsics of the image, pixels.
        outline_uv: (N, 2) pixels: points whose convex hull is the object's silhouette (pixel
            edges, e.g. :func:`mask_outline`).
        size_px: S, side of the crop, pixels.
        margin_fraction: free border on each side as a fraction of S, in [0, 0.45].
    Returns:
        ``R_camera_crop`` (3, 3) float64 and the crop focal length ``f_c``, pixels.
    Raises:
        InvalidInputError: fewer than 2 points, a degenerate outline or margin out of range.
    """
    outline = np.asarray(outline_uv, dtype=np.float64)
    if outline.ndim != 2 or outline.shape[1] != 2 or len(outline) < 2:
        raise InvalidInputError(f"outline_uv: expected (N >= 2, 2) pixels, got shape {outline.shape}")
    if not 0.0 <= margin_fraction <= 0.45 or size_px < 1:
        raise InvalidInputError(f"crop_camera: need margin_fraction in [0, 0.45] and size_px >= 1, got {margin_fraction}, {size_px}")
    rays = pixel_rays(K, outline)
    R = ray_rotation(K, 0.5 * (outline.min(0) + outline.max(0)))
    for refine in (True, False):
        local = rays @ R  # R^T applied to each ray: crop frame
        xy = local[:, :2] / local[:, 2:3]
        lo, hi = xy.min(0), xy.max(0)
        if refine:
            R = rotation_to_ray(R @ np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), 1.0]))
    extent = float((hi - lo).max())
    if not extent > 0:
        raise InvalidInputError("outline_uv: degenerate outline (zero extent)")
    return R, (1.0 - 2.0 * margin_fraction) * size_px / extent


def box_outline(box_xyxy: np.ndarray) -> np.ndarray:
    """(4, 2) pixel-edge corners of a box ``x_min y_min x_max y_max`` (exclusive max).

    Raises:
        InvalidInputError: empty box.
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box_xyxy, dtype=np.float64).reshape(4))
    if x1 <= x0 or y1 <= y0:
        raise InvalidInputError(f"box_xyxy: empty box {[x0, y0, x1, y1]}")
    return np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5], [x0 - 0.5, y1 - 0.5]])


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """(N, 2) pixel-edge corners of the convex hull of a (H, W) bool mask's pixels.

    Raises:
        InvalidInputError: empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise InvalidInputError("mask_outline: empty mask")
    r0, c0 = rows[0], cols[0]
    sub = np.ascontiguousarray(mask[r0:rows[-1] + 1, c0:cols[-1] + 1], dtype=np.uint8)
    contours, _ = cv2.findContours(sub, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2).astype(np.float64) + (c0, r0)
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    return (hull[:, None, :] + corners[None]).reshape(-1, 2)


def crop_cameras(K: np.ndarray, outlines: Sequence[np.ndarray], size_px: int, margin_fraction: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`crop_camera` of several outlines (e.g. ``[mask_outline(m) for m in masks]``).

    Args:
        K: (3, 3) or (B, 3, 3) intrinsics.
        outlines: B arrays (N_b, 2), pixels.
    Returns:
        ``R_camera_crop`` (B, 3, 3) float64 and focal lengths (B,) pixels.
    """
    K = np.asarray(K, dtype=np.float64)
    Ks = np.broadcast_to(K, (len(outlines), 3, 3)) if K.ndim == 2 else K
    if len(Ks) != len(outlines):
        raise InvalidInputError(f"crop_cameras: {len(Ks)} intrinsics for {len(outlines)} outlines")
    cams = [crop_camera(k, o, size_px, margin_fraction) for k, o in zip(Ks, outlines)]
    if not cams:
        return np.zeros((0, 3, 3)), np.zeros(0)
    return np.stack([c[0] for c in cams]), np.array([c[1] for c in cams])


def crop_intrinsics(focal_px: np.ndarray, size_px: int) -> np.ndarray:
    """(..., 3, 3) float64 intrinsics of S x S crop cameras of focal ``focal_px`` (...,)."""
    f = np.asarray(focal_px, dtype=np.float64)
    K = np.zeros((*f.shape, 3, 3))
    K[..., 0, 0] = K[..., 1, 1] = f
    K[..., :2, 2] = (size_px - 1) / 2.0
    K[..., 2, 2] = 1.0
    return K


def crop_images(
    rgb: torch.Tensor, masks: torch.Tensor, K: torch.Tensor, R_camera_crop: torch.Tensor, focal_px: torch.Tensor,
    size_px: int, background_rgb: Sequence[int], *, return_masks: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Masked crop-camera images (module docstring), batched.

    Args:
        rgb: (B, C, H, W) or (1, C, H, W) float in [0, 1] (one image shared by all crops); C is
            3 for a colour image, any other count crops several images through one sampling grid
            (an image and its masks: channel by channel the same as separate calls, for less).
        masks: (B, H, W) bool or float in [0, 1]: the object's pixels in its image.
        K: (3, 3) or (B, 3, 3) intrinsics of the image(s), pixels.
        R_camera_crop: (B, 3, 3) crop camera orientations (:func:`crop_cameras`).
        focal_px: (B,) crop focal lengths, pixels.
        size_px: S.
        background_rgb: (C,) 0..255 value per channel of every pixel outside the mask or the image.
        return_masks: also return the crops' masks.
    Returns:
        crops (B, C, S, S) float32 in [0, 1] on ``rgb``'s device; with ``return_masks`` also their
        masks (B, S, S) float32 in [0, 1] (share of object sub-samples per pixel).
    Raises:
        InvalidInputError: inconsistent shapes.
    """
    B, C = masks.shape[0], len(background_rgb)
    if rgb.ndim != 4 or rgb.shape[1] != C or rgb.shape[0] not in (1, B) or masks.ndim != 3 or masks.shape[1:] != rgb.shape[2:]:
        raise InvalidInputError(f"crop_images: rgb (B|1, {C}, H, W) ({C} background values) and masks (B, H, W) expected, "
                                f"got {tuple(rgb.shape)}, {tuple(masks.shape)}")
    if R_camera_crop.shape != (B, 3, 3) or focal_px.shape != (B,) or K.shape not in ((3, 3), (B, 3, 3)):
        raise InvalidInputError(f"crop_images: K (3, 3) or ({B}, 3, 3), R_camera_crop ({B}, 3, 3) and focal_px ({B},) expected, "
                                f"got {tuple(K.shape)}, {tuple(R_camera_crop.shape)}, {tuple(focal_px.shape)}")
    device = rgb.device
    background = torch.tensor([float(c) / 255.0 for c in background_rgb], device=device).view(1, C, 1, 1)
    if B == 0:
        empty = torch.zeros(0, C, size_px, size_px, device=device)
        return (empty, empty[:, 0]) if return_masks else empty
    H, W = rgb.shape[2:]
    f64 = {"device": device, "dtype": torch.float64}
    K = K.to(**f64).expand(B, 3, 3)
    R = R_camera_crop.to(**f64)
    f = focal_px.to(**f64)
    # Image pixels per crop pixel at the crop centre: how much to supersample.
    k = int(min(MAX_SUPERSAMPLING, max(1, math.ceil(float((0.5 * (K[:, 0, 0] + K[:, 1, 1]) / f).max())))))
    n = size_px * k
    # Sub-sample m sits at crop coordinate (m + 0.5) / k - 0.5; relative to the principal point:
    offsets = (torch.arange(n, **f64) + 0.5) / k - 0.5 - (size_px - 1) / 2.0
    x = (offsets[None, None, :] / f[:, None, None]).expand(B, n, n)
    y = (offsets[None, :, None] / f[:, None, None]).expand(B, n, n)
    rays = torch.stack([x, y, torch.ones_like(x)], dim=-1) @ R.transpose(1, 2)[:, None]  # (B, n, n, 3) camera frame
    z = rays[..., 2]
    front = z > 1e-9
    z = torch.where(front, z, torch.ones_like(z))
    u = (K[:, None, None, 0, 0] * rays[..., 0] + K[:, None, None, 0, 1] * rays[..., 1]) / z + K[:, None, None, 0, 2]
    v = K[:, None, None, 1, 1] * rays[..., 1] / z + K[:, None, None, 1, 2]
    # grid_sample with align_corners=False: pixel centre u lies at (u + 0.5) / W * 2 - 1.
    grid = torch.stack([(u + 0.5) * (2.0 / W) - 1.0, (v + 0.5) * (2.0 / H) - 1.0], dim=-1)
    grid = torch.where(front[..., None], grid, torch.full_like(grid, -2.0)).to(torch.float32)
    image = rgb.float().expand(B, -1, -1, -1) if rgb.shape[0] == 1 else rgb.float()
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(masks[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5
    out = torch.where(inside, sampled, background)
    coverage = inside.float()
    if k > 1:
        out = F.avg_pool2d(out, k)
        coverage = F.avg_pool2d(coverage, k)
    return (out.contiguous(), coverage[:, 0].contiguous()) if return_masks else out.contiguous()


def crop_proposals(
    rgb: np.ndarray, K: np.ndarray, proposals: Sequence, size_px: int, margin_fraction: float,
    background_rgb: Sequence[int] = (0, 0, 0), device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Backbone input of proposals: masked crop-camera images (module docstring).

    Args:
        rgb: (H, W, 3) uint8 image.
        K: (3, 3) its intrinsics, pixels.
        proposals: P objects with a non-empty ``mask`` (H, W) bool (e.g.
            :class:`pose_node.detection.proposal_types.Proposal`).
        size_px: S, the templates' size.
        margin_fraction: the templates' ``crop_margin_fraction``.
        background_rgb: the templates' background colour.
        device: where the crops go (the backbone's device); the image goes there once.
    Returns:
        ``(crops, crop_masks, R_camera_crop, focal_px)``: crops (P, 3, S, S) float32 in [0, 1] and
        their masks (P, S, S) float32 in [0, 1] on ``device``; the crop cameras (P, 3, 3) and
        focal lengths (P,) float64 (``crop_intrinsics(focal_px, S)`` gives their intrinsics).
    Raises:
        InvalidInputError: bad image or mask shapes.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidInputError(f"rgb: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    H, W = rgb.shape[:2]
    device = torch.device(device)
    if not proposals:
        return (torch.zeros(0, 3, size_px, size_px, device=device), torch.zeros(0, size_px, size_px, device=device),
                np.zeros((0, 3, 3)), np.zeros(0))
    for p in proposals:
        if p.mask.shape != (H, W):
            raise InvalidInputError(f"proposal mask: expected shape {(H, W)}, got {p.mask.shape}")
    R, focal = crop_cameras(K, [mask_outline(p.mask) for p in proposals], size_px, margin_fraction)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    masks = torch.from_numpy(np.stack([np.asarray(p.mask, dtype=bool) for p in proposals])).to(device)
    crops, crop_masks = crop_images(image, masks, torch.from_numpy(np.asarray(K, dtype=np.float64)), torch.from_numpy(R),
                                    torch.from_numpy(focal), size_px, background_rgb, return_masks=True)
    return crops, crop_masks, R, focal


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def colour_histograms(crops: torch.Tensor, masks: torch.Tensor, bins: int, min_brightness: float) -> torch.Tensor:
    """Square-rooted chromaticity histograms of the object pixels of crops.

    Chromaticity ``(r, g) = (R, G) / (R + G + B)`` does not change with the light's intensity;
    each pixel adds its mask weight to one of ``bins x bins`` cells; pixels darker than
    ``min_brightness`` (mean of R, G, B) are left out. The histogram is normalized to sum 1 and
    square-rooted, so it has unit L2 norm (zero when no pixel counts) and the dot product of two
    is their Bhattacharyya coefficient.

    Args:
        crops: (B, 3, S, S) float RGB in [0, 1].
        masks: (B, S, S) float object weights in [0, 1].
    Returns:
        (B, bins * bins) float32 on the crops' device.
    """
    x = crops.float().clamp_min(1e-6)
    total = x.sum(1)
    cell = ((x[:, :2] / total[:, None]) * bins).long().clamp_(0, bins - 1)
    index = (cell[:, 0] * bins + cell[:, 1]).flatten(1)
    weight = (masks.float() * (total / 3.0 > min_brightness).float()).flatten(1)
    hist = torch.zeros(crops.shape[0], bins * bins, device=crops.device).scatter_add_(1, index, weight)
    return (hist / hist.sum(1, keepdim=True).clamp_min(1e-12)).sqrt()


@dataclass(frozen=True)
class DescriptorParts:
    """Raw descriptor parts of B crops: ``global_`` (B, D) the backbone's unit-norm global
    descriptor, ``colour`` (B, C) :func:`colour_histograms` (C = 0 with ``colour_weight`` 0)."""

    global_: torch.Tensor
    colour: torch.Tensor


def describe_crops(backbone: Backbone, crops: torch.Tensor, crop_masks: torch.Tensor, config: MatchingConfig) -> DescriptorParts:
    """Descriptor parts of crops (B, 3, S, S) with masks (B, S, S), on the backbone's device."""
    B = crops.shape[0]
    chunks = [backbone(crops[i:i + config.descriptor_batch_size]).global_descriptor.float()
              for i in range(0, B, config.descriptor_batch_size)]
    global_ = F.normalize(torch.cat(chunks), dim=-1) if chunks else torch.zeros(0, backbone.descriptor_dim, device=backbone.device)
    return DescriptorParts(global_, describe_colour(crops, crop_masks, config))


# --------------------------------------------------------------------------------------------
# Template bank
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateParts:
    """What the bank needs of one object's T templates (cacheable, see the detector).

    Attributes:
        global_: (T, D) float32 unit-norm backbone descriptors of the template crops.
        colour: (T, C) float32 colour histograms of the template crops.
        R_template_crop: (T, 3, 3) float64 crop camera orientations in the template cameras.
        crop_focal_px: (T,) float64 crop camera focal lengths, pixels.
    """

    global_: np.ndarray
    colour: np.ndarray
    R_template_crop: np.ndarray
    crop_focal_px: np.ndarray


def template_parts(templates: ObjectTemplates, backbone: Backbone, config: MatchingConfig) -> TemplateParts:
    """Crop one object's templates like proposals (``config.framing``) and describe them.

    With ``framing="sphere"`` the crop camera is the template camera (the crop is the template)
    and the onboarding descriptors are reused (they were computed on exactly that image);
    otherwise each template is re-cropped around its mask (module docstring).

    Raises:
        InvalidInputError: sphere framing with descriptors missing or from another backbone.
    """
    T, S = templates.num_templates, templates.size_px
    device = backbone.device
    K_t = templates.K_template
    if config.framing == "sphere":
        if templates.descriptors is None or templates.backbone_cache_key != backbone.cache_key:
            raise InvalidInputError(f"object {templates.object_id}: templates have no descriptors of backbone {backbone.cache_key!r}")
        R, focal = np.broadcast_to(np.eye(3), (T, 3, 3)).copy(), np.full(T, 0.5 * (K_t[0, 0] + K_t[1, 1]))
    else:
        outlines = [mask_outline(m) if m.any() else box_outline((0, 0, S, S)) for m in templates.mask]
        R, focal = crop_cameras(K_t, outlines, S, templates.config.crop_margin_fraction)
    K = torch.from_numpy(K_t)
    globals_, colours = [], []
    for start in range(0, T, config.descriptor_batch_size):
        stop = min(start + config.descriptor_batch_size, T)
        rgb = torch.from_numpy(templates.rgb[start:stop]).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        mask = torch.from_numpy(templates.mask[start:stop]).to(device)
        crops, crop_masks = crop_images(rgb, mask, K, torch.from_numpy(R[start:stop]), torch.from_numpy(focal[start:stop]),
                                        S, templates.config.background_rgb, return_masks=True)
        if config.framing == "sphere":
            parts = DescriptorParts(torch.from_numpy(templates.descriptors[start:stop]).to(device),
                                    describe_colour(crops, crop_masks, config))
        else:
            parts = describe_crops(backbone, crops, crop_masks, config)
        globals_.append(parts.global_.cpu())
        colours.append(parts.colour.cpu())
    return TemplateParts(torch.cat(globals_).numpy().astype(np.float32), torch.cat(colours).numpy().astype(np.float32), R, focal)


def describe_colour(crops: torch.Tensor, crop_masks: torch.Tensor, config: MatchingConfig) -> torch.Tensor:
    """The colour part alone (B, C) (C = 0 when ``colour_weight`` is 0)."""
    if config.colour_weight > 0:
        return colour_histograms(crops, crop_masks, config.colour_bins, config.colour_min_brightness)
    return torch.zeros(crops.shape[0], 0, device=crops.device)


@dataclass(frozen=True, eq=False)
class TemplateBank:
    """All objects' template descriptors, stacked, and what the pose priors need (O objects of
    T templates each; template ``o * T + t`` is template ``t`` of object ``o``).

    Attributes:
        descriptors: (O * T, E) float32 unit-norm embedded descriptors (:meth:`embed`), on the
            backbone's device.
        object_ids: (O,) the objects' ids, in bank order.
        templates_per_object: T.
        mean_global, mean_colour: (D,), (C,) means over the templates of the raw parts,
            subtracted by :meth:`embed` when ``config.centre_descriptors``.
        T_template_object: (O, T, 4, 4) float64 ``T_camera_object`` of the template cameras, metres.
        K_template: (O, 3, 3) float64 intrinsics of each object's template camera, pixels.
        sphere_center_obj_m: (O, 3) float64 bounding-sphere centres (what template cameras look
            at), object frames, metres.
        R_template_crop: (O, T, 3, 3) float64 each template's crop camera in its template camera.
        crop_focal_px: (O, T) float64 focal lengths of the templates' crop cameras, pixels.
        size_px: S, side of templates and crops, pixels.
        crop_margin_fraction: the templates' margin (crops use it too).
        background_rgb: the templates' background colour.
        config: the matching settings the descriptors were made with.
    """

    descriptors: torch.Tensor
    object_ids: tuple[int, ...]
    templates_per_object: int
    mean_global: torch.Tensor
    mean_colour: torch.Tensor
    T_template_object: np.ndarray
    K_template: np.ndarray
    sphere_center_obj_m: np.ndarray
    R_template_crop: np.ndarray
    crop_focal_px: np.ndarray
    size_px: int
    crop_margin_fraction: float
    background_rgb: tuple[int, int, int]
    config: MatchingConfig

    @property
    def device(self) -> torch.device:
        return self.descriptors.device

    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    def object_index(self, object_id: int) -> int:
        try:
            return self.object_ids.index(int(object_id))
        except ValueError:
            raise InvalidInputError(f"object id {object_id} is not in the template bank ({list(self.object_ids)})") from None

    def embed(self, parts: DescriptorParts) -> torch.Tensor:
        """Descriptor (B, E) compared by cosine: ``normalize([g, w * c])`` with ``g``, ``c`` the
        (centred, then unit-norm) global and colour parts and ``w = colour_weight``."""
        return _embed(parts.global_, parts.colour, self.mean_global, self.mean_colour, self.config)

    @classmethod
    def build(cls, templates: Sequence[ObjectTemplates], parts: Sequence[TemplateParts], config: MatchingConfig,
              device: torch.device | str = "cpu") -> TemplateBank:
        """Stack the templates of several objects.

        Args:
            templates: one :class:`ObjectTemplates` per object, all made with the same template
                size, margin, background and template count.
            parts: their :func:`template_parts` (same order).
            config: the matching settings ``parts`` were made with.
            device: where the bank lives (the backbone's device).
        Raises:
            InvalidInputError: no templates, duplicate object ids, inconsistent settings or sizes.
        """
        if not templates or len(parts) != len(templates):
            raise InvalidInputError(f"TemplateBank.build: need templates and their parts, got {len(templates)} and {len(parts)}")
        first = templates[0].config
        ids = [t.object_id for t in templates]
        if len(set(ids)) != len(ids):
            raise InvalidInputError(f"TemplateBank.build: duplicate object ids {ids}")
        for t, p in zip(templates, parts):
            c = t.config
            if (c.template_size_px, c.crop_margin_fraction, c.background_rgb, c.num_templates) != (
                    first.template_size_px, first.crop_margin_fraction, first.background_rgb, first.num_templates):
                raise InvalidInputError(
                    f"TemplateBank.build: object {t.object_id} templates differ in template_size_px / crop_margin_fraction / "
                    "background_rgb / template count from the first object's; onboard all objects with one TemplateConfig"
                )
            if len(p.global_) != c.num_templates or len(p.colour) != c.num_templates:
                raise InvalidInputError(f"TemplateBank.build: object {t.object_id}: parts of {len(p.global_)} templates, expected {c.num_templates}")
        device = torch.device(device)
        global_ = torch.from_numpy(np.concatenate([p.global_ for p in parts])).to(device)
        colour = torch.from_numpy(np.concatenate([p.colour for p in parts])).to(device)
        mean_global, mean_colour = global_.mean(0), colour.mean(0)
        return cls(
            descriptors=_embed(global_, colour, mean_global, mean_colour, config), object_ids=tuple(int(i) for i in ids),
            templates_per_object=first.num_templates, mean_global=mean_global, mean_colour=mean_colour,
            T_template_object=np.stack([t.T_camera_object for t in templates]),
            K_template=np.stack([t.K_template for t in templates]),
            sphere_center_obj_m=np.stack([t.sphere_center_obj_m for t in templates]),
            R_template_crop=np.stack([p.R_template_crop for p in parts]), crop_focal_px=np.stack([p.crop_focal_px for p in parts]),
            size_px=first.template_size_px, crop_margin_fraction=first.crop_margin_fraction,
            background_rgb=tuple(int(c) for c in first.background_rgb), config=config,
        )


def _embed(global_: torch.Tensor, colour: torch.Tensor, mean_global: torch.Tensor, mean_colour: torch.Tensor,
           config: MatchingConfig) -> torch.Tensor:
    if config.centre_descriptors:
        global_, colour = global_ - mean_global, colour - mean_colour
    out = F.normalize(global_.float(), dim=-1)
    if config.colour_weight > 0 and colour.shape[1] > 0:
        out = torch.cat([out, config.colour_weight * F.normalize(colour.float(), dim=-1)], dim=-1)
    return F.normalize(out, dim=-1)


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchResult:
    """Matches of P proposals against a bank of O objects.

    Attributes:
        object_index: (P,) int64 index into ``bank.object_ids`` of the best object.
        score: (P,) float32 that object's score (mean of its top-k cosine similarities).
        top_templates: (P, k) int64 indices (within the best object) of its best templates, best first.
        top_similarities: (P, k) float32 their cosine similarities.
        object_scores: (P, O) float32 every object's score (-inf for objects left out).
    """

    object_index: torch.Tensor
    score: torch.Tensor
    top_templates: torch.Tensor
    top_similarities: torch.Tensor
    object_scores: torch.Tensor


def match(descriptors: torch.Tensor, bank: TemplateBank, top_k: int = 5, object_mask: torch.Tensor | None = None) -> MatchResult:
    """Score proposals against every object (CNOS): mean of the top-k template similarities.

    Args:
        descriptors: (P, D) unit-norm proposal descriptors on ``bank.device``.
        bank: the templates.
        top_k: templates averaged per object (clamped to the template count).
        object_mask: (O,) bool, objects that may be matched (None: all).
    Returns:
        :class:`MatchResult` on ``bank.device``.
    Raises:
        InvalidInputError: wrong shapes, or every object masked out.
    """
    O, T = bank.num_objects, bank.templates_per_object
    D = bank.descriptors.shape[1]
    if descriptors.ndim != 2 or descriptors.shape[1] != D:
        raise InvalidInputError(f"descriptors: expected shape (P, {D}), got {tuple(descriptors.shape)}")
    if object_mask is not None and (object_mask.shape != (O,) or not bool(object_mask.any())):
        raise InvalidInputError(f"object_mask: expected ({O},) bool with at least one True, got {tuple(object_mask.shape)}")
    k = min(top_k, T)
    P = descriptors.shape[0]
    similarity = (descriptors.float() @ bank.descriptors.T).view(P, O, T)
    top_sim, top_idx = similarity.topk(k, dim=2)  # (P, O, k), sorted best first
    object_scores = top_sim.mean(dim=2)
    if object_mask is not None:
        object_scores = object_scores.masked_fill(~object_mask.to(object_scores.device)[None], float("-inf"))
    if P == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=bank.device)
        return MatchResult(empty, torch.zeros(0, device=bank.device), torch.zeros(0, k, dtype=torch.int64, device=bank.device),
                           torch.zeros(0, k, device=bank.device), object_scores)
    score, best = object_scores.max(dim=1)
    rows = torch.arange(P, device=bank.device)
    return MatchResult(best, score, top_idx[rows, best], top_sim[rows, best], object_scores)


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------


def nms_masks(masks: Sequence[np.ndarray], scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy class-agnostic NMS by mask IoU.

    Args:
        masks: N (H, W) bool.
        scores: (N,) higher is better.
        iou_threshold: a mask whose IoU with a kept, better-scoring one exceeds this is dropped.
    Returns:
        (K,) int64 indices of the kept masks, best score first.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(masks) != len(scores):
        raise InvalidInputError(f"nms_masks: {len(masks)} masks but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0:
        return order.astype(np.int64)
    iou = pairwise_mask_iou(masks, masks)
    suppressed = np.zeros(len(scores), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Pose priors
# --------------------------------------------------------------------------------------------


def template_pose_priors(
    T_template_object: np.ndarray, anchor_obj_m: np.ndarray, R_template_crop: np.ndarray, template_crop_focal_px: np.ndarray,
    R_camera_crop: np.ndarray, crop_focal_px: np.ndarray,
) -> np.ndarray:
    """``T_camera_object`` in the real camera implied by matching a crop to a template's crop.

    Both crops are crop-camera images (module docstring), so the match says: the object looks
    in the query's crop camera as in the template's crop camera, only at another scale. The
    anchor is the point the template camera looks at (the object's bounding-sphere centre, on the
    template's optical axis at depth ``d_t``); keeping the rotation and scaling the anchor's
    position by the ratio of the crop focals keeps the look (directions and pixel size ``f D /
    z``; exact for the anchor's direction, the rest differs by the perspective of another
    distance):

    1. In the template crop camera: rotation ``R_tc^T R_template``, anchor ``a = R_tc^T [0, 0,
       d_t]`` (``R_tc`` = ``R_template_crop``).
    2. In the query crop camera: the same rotation, anchor ``k a`` with ``k = f_c / f_tc`` (query
       crop focal over template crop focal).
    3. In the camera (``R_qc`` = ``R_camera_crop``): ``R = R_qc R_tc^T R_template``, anchor ``p =
       k R_qc a`` and ``t = p - R anchor_obj``.

    A partly occluded proposal (smaller box, larger ``f_c``) comes out too far away.

    Args:
        T_template_object: (..., 4, 4) template poses, metres.
        anchor_obj_m: (..., 3) the anchor (bounding-sphere centre) in the object frame, metres.
        R_template_crop, template_crop_focal_px: (..., 3, 3), (...,) the template's crop camera.
        R_camera_crop, crop_focal_px: (..., 3, 3), (...,) the query's crop camera.
    Returns:
        (..., 4, 4) float64 ``T_camera_object`` priors, metres.
    """
    T_t = np.asarray(T_template_object, dtype=np.float64)
    anchor = np.asarray(anchor_obj_m, dtype=np.float64)
    R_tc = np.asarray(R_template_crop, dtype=np.float64)
    R_qc = np.asarray(R_camera_crop, dtype=np.float64)
    k = np.asarray(crop_focal_px, dtype=np.float64) / np.asarray(template_crop_focal_px, dtype=np.float64)
    d_t = (T_t[..., :3, :3] @ anchor[..., None])[..., 2, 0] + T_t[..., 2, 3]
    a = np.swapaxes(R_tc, -1, -2)[..., :, 2] * d_t[..., None]  # R_tc^T [0, 0, d_t]
    R = R_qc @ np.swapaxes(R_tc, -1, -2) @ T_t[..., :3, :3]
    p = k[..., None] * (R_qc @ a[..., None])[..., 0]
    out = np.zeros((*R.shape[:-2], 4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = p - (R @ anchor[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def priors_for_matches(bank: TemplateBank, object_index: np.ndarray, template_indices: np.ndarray,
                       R_camera_crop: np.ndarray, crop_focal_px: np.ndarray) -> np.ndarray:
    """Pose priors (N, k, 4, 4) of N detections from their k best templates.

    Args:
        object_index: (N,) bank object index of each detection.
        template_indices: (N, k) template indices within that object, best first.
        R_camera_crop, crop_focal_px: (N, 3, 3), (N,) the detections' crop cameras.
    """
    o = np.asarray(object_index, dtype=np.int64)[:, None]
    t = np.asarray(template_indices, dtype=np.int64)
    if t.shape[1] == 0:
        return np.zeros((len(o), 0, 4, 4))
    return template_pose_priors(
        bank.T_template_object[o, t], bank.sphere_center_obj_m[o[:, 0]][:, None], bank.R_template_crop[o, t],
        bank.crop_focal_px[o, t], np.asarray(R_camera_crop, dtype=np.float64)[:, None],
        np.asarray(crop_focal_px, dtype=np.float64)[:, None],
    )
