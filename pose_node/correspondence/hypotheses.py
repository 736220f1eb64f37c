"""Template hypotheses: onboarded templates re-cropped like detections and turned in-plane.

The detector matches a crop to templates rendered from 42 viewpoints with the object's +z up in
the image; a real view also rolls the object about the optical axis. A *hypothesis* is one
template turned in-plane by one of R angles (``2 pi r / R``): its crop image, object coordinates
and mask turned by the angle, and its pose turned by ``Rz(angle)`` about the crop camera's axis.
The correspondence network matches the detection crop against a few hypotheses; each gives the
PnP solver an initial pose.

Crop frames: a template is re-cropped around its own mask with the detection crop convention
(:func:`pose_node.core.crop.crop_camera`, the detector's ``mask_box`` framing), so a
crop and a template see the object at the same scale. ``T_crop_object`` of a hypothesis is the
object's pose in that template crop camera; :func:`hypothesis_poses_in_crop` moves it into a
detection's crop camera by the same argument as :func:`pose_node.detection.matching.
template_pose_priors` (keep the rotation, scale the anchor's position by the focal ratio).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pose_node.core.crop import box_outline, crop_cameras, crop_images, mask_outline
from pose_node.onboarding.templates import ObjectTemplates


@dataclass(frozen=True)
class TemplateCrops:
    """Templates of one object re-cropped to the detection crop convention (T templates).

    Attributes:
        rgb: (T, 3, S, S) float32 in [0, 1], the template background outside the object.
        xyz_norm: (T, 3, S, S) float32 normalized object coordinates ``(X - c) / r`` (0 outside).
        mask: (T, 1, S, S) float32 in [0, 1], the object's share of each pixel.
        T_crop_object: (T, 4, 4) float64 object pose in each template's crop camera, metres.
        focal_px: (T,) float64 the template crop cameras' focal lengths, pixels.
        sphere_center_obj_m: (3,) float64 ``c``. sphere_radius_m: ``r``.
    """

    rgb: torch.Tensor
    xyz_norm: torch.Tensor
    mask: torch.Tensor
    T_crop_object: np.ndarray
    focal_px: np.ndarray
    sphere_center_obj_m: np.ndarray
    sphere_radius_m: float


def crop_templates(templates: ObjectTemplates, size_px: int, device: torch.device | str = "cpu") -> TemplateCrops:
    """Re-crop all of an object's templates around their masks, S x S (module docstring)."""
    S_t = templates.size_px
    outlines = [mask_outline(m) if m.any() else box_outline((0, 0, S_t, S_t)) for m in templates.mask]
    R_tc, focal = crop_cameras(templates.K_template, outlines, size_px, templates.config.crop_margin_fraction)
    K = torch.from_numpy(templates.K_template)
    R, f = torch.from_numpy(R_tc), torch.from_numpy(focal)
    mask = torch.from_numpy(templates.mask).to(device)
    rgb = torch.from_numpy(templates.rgb).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    center = templates.sphere_center_obj_m
    radius = float(templates.sphere_radius_m)
    xyz = (torch.from_numpy(templates.xyz).to(device) - torch.from_numpy(center).float().to(device)) / radius
    xyz = torch.where(mask[..., None], xyz, torch.zeros_like(xyz)).permute(0, 3, 1, 2)
    rgb_crop, mask_crop = crop_images(rgb, mask, K, R, f, size_px, templates.config.background_rgb, return_masks=True)
    # Edge pixels mix XYZ with the zeros outside (bilinear); the network reads cells whose mask
    # share is high, where that mix is negligible.
    xyz_crop = crop_images(xyz, mask, K, R, f, size_px, (0, 0, 0))
    T_crop = np.zeros((templates.num_templates, 4, 4))
    T_crop[:, :3, :3] = np.swapaxes(R_tc, 1, 2) @ templates.T_camera_object[:, :3, :3]
    T_crop[:, :3, 3] = (np.swapaxes(R_tc, 1, 2) @ templates.T_camera_object[:, :3, 3:4])[..., 0]
    T_crop[:, 3, 3] = 1.0
    return TemplateCrops(rgb_crop, xyz_crop, mask_crop[:, None], T_crop, focal, center, radius)


def in_plane_angles(count: int) -> np.ndarray:
    """(R,) radians ``2 pi r / R``."""
    return 2.0 * math.pi * np.arange(count) / count


def rotation_about_z(angles_rad: np.ndarray) -> np.ndarray:
    """(..., 3, 3) ``Rz``: a camera turned by ``angle`` about its optical axis sees a point at
    ``Rz(angle) p`` (image content turns by ``angle``, x towards y)."""
    c, s = np.cos(angles_rad), np.sin(angles_rad)
    R = np.zeros((*np.shape(angles_rad), 3, 3))
    R[..., 0, 0], R[..., 0, 1], R[..., 1, 0], R[..., 1, 1], R[..., 2, 2] = c, -s, s, c, 1.0
    return R


def rotate_images(images: torch.Tensor, angles_rad: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Turn square images about their centre pixel ``(S-1)/2`` as :func:`rotation_about_z` turns
    the camera (output pixel ``q`` reads the input at ``Rot(-angle) q``); zeros outside.

    Args:
        images: (B, C, S, S). angles_rad: (B,).
    """
    c, s = torch.cos(angles_rad), torch.sin(angles_rad)
    zero = torch.zeros_like(c)
    theta = torch.stack([torch.stack([c, s, zero], -1), torch.stack([-s, c, zero], -1)], -2).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def hypothesis_poses_in_crop(
    T_template_crop_object: np.ndarray, template_focal_px: np.ndarray, angles_rad: np.ndarray, crop_focal_px: np.ndarray,
    sphere_center_obj_m: np.ndarray,
) -> np.ndarray:
    """Initial poses in a detection's crop camera implied by matching it with hypotheses.

    Args:
        T_template_crop_object: (..., 4, 4) template poses in their crop cameras.
        template_focal_px: (...,) their focal lengths. angles_rad: (...,) in-plane angles.
        crop_focal_px: (...,) the detection crop's focal length.
        sphere_center_obj_m: (..., 3) the anchor (bounding-sphere centre), object frame.
    Returns:
        (..., 4, 4) float64 ``T_crop_object``, metres.
    """
    T = np.asarray(T_template_crop_object, dtype=np.float64)
    Rz = rotation_about_z(np.asarray(angles_rad, dtype=np.float64))
    center = np.asarray(sphere_center_obj_m, dtype=np.float64)
    R = Rz @ T[..., :3, :3]
    anchor = (Rz @ (T[..., :3, :3] @ center[..., None] + T[..., :3, 3:4]))[..., 0]
    k = np.asarray(crop_focal_px, dtype=np.float64) / np.asarray(template_focal_px, dtype=np.float64)
    out = np.zeros(R.shape[:-2] + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = k[..., None] * anchor - (R @ center[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out
