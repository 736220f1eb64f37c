"""Crop cameras: the one crop convention of detection, correspondence, refinement and training.

A crop is the image of a virtual *crop camera*: the same optical centre as the camera, turned to
look at the object's silhouette, with square pixels, focal ``f_c`` and principal point
``((S - 1) / 2, (S - 1) / 2)`` on an ``S x S`` image (:func:`crop_camera`):

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
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pose_node.core.errors import InvalidInputError

MAX_SUPERSAMPLING = 4


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


__all__ = [
    "MAX_SUPERSAMPLING", "box_outline", "crop_camera", "crop_cameras", "crop_images", "crop_intrinsics", "crop_proposals",
    "mask_outline", "pixel_rays", "ray_rotation", "rotation_to_ray",
]
