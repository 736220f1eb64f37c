"""Crop cameras and crops (:mod:`pose_node.core.crop`): the crop camera frames a box or mask with its
margin, crops sample the image through it, pixel rays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pose_node.core.crop import box_outline, crop_camera, crop_images, crop_intrinsics, mask_outline, ray_rotation
from pose_node.core.errors import InvalidInputError

K = np.array([[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]])


def test_crop_camera_of_a_centred_box():
    # Box centred on the principal point (159.5, 119.5): the crop camera is the camera, and the
    # larger side (40 px at f = 300) fills 0.8 * 64 crop pixels.
    R, f = crop_camera(K, box_outline((150, 100, 170, 140)), 64, 0.1)
    np.testing.assert_allclose(R, np.eye(3), atol=1e-12)
    assert f == pytest.approx(0.8 * 64 * 300 / 40)
    with pytest.raises(InvalidInputError):
        box_outline((5, 5, 5, 9))
    with pytest.raises(InvalidInputError):
        crop_camera(K, box_outline((0, 0, 4, 4)), 64, 0.5)


def test_mask_outline_is_the_hull_of_the_pixel_squares():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:20] = True
    mask[9:15, 12:14] = True  # a T shape: the hull has its own corners
    outline = mask_outline(mask)
    np.testing.assert_allclose(outline.min(0), [9.5, 4.5])
    np.testing.assert_allclose(outline.max(0), [19.5, 14.5])
    with pytest.raises(InvalidInputError):
        mask_outline(np.zeros((4, 4), bool))


@pytest.mark.parametrize("box", [(250, 10, 300, 60), (5, 150, 60, 235), (140, 100, 180, 130)])
def test_crop_camera_frames_the_box_with_the_margin(box):
    S, margin = 64, 0.1
    R, f = crop_camera(K, box_outline(box), S, margin)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    # The box seen by the crop camera: its larger extent is (1 - 2 margin) S, centred.
    rays = np.linalg.solve(K, np.c_[box_outline(box), np.ones(4)].T)
    uv_crop = crop_intrinsics(f, S) @ (R.T @ rays)
    uv_crop = uv_crop[:2] / uv_crop[2]
    assert (uv_crop.max(1) - uv_crop.min(1)).max() == pytest.approx((1 - 2 * margin) * S, rel=1e-6)
    np.testing.assert_allclose((uv_crop.max(1) + uv_crop.min(1)) / 2, (S - 1) / 2, atol=0.01 * S)


@pytest.mark.parametrize("box", [(60, 40, 92, 72), (0, 0, 160, 120), (120, 10, 150, 30)])
def test_crop_images_sample_the_image_through_the_crop_camera(box):
    # A linear ramp (R = u / 255, G = v / 255): bilinear sampling reproduces it exactly, so crop
    # pixel (j, i) must hold the ramp at K R [(j - (S-1)/2) / f, (i - (S-1)/2) / f, 1] (up to the
    # averaging of sub-samples over the non-linear map, for the large box).
    S, H, W = 32, 120, 160
    Kw = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]])
    u, v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    rgb = torch.from_numpy(np.stack([u / 255, v / 255, np.zeros_like(u)]))[None]
    R, f = crop_camera(Kw, box_outline(box), S, 0.05)
    crops, coverage = crop_images(rgb, torch.ones(1, H, W, dtype=torch.bool), torch.from_numpy(Kw), torch.from_numpy(R[None]),
                                  torch.tensor([f]), S, (7, 8, 9), return_masks=True)
    j, i = np.meshgrid(np.arange(S), np.arange(S))
    rays = R @ np.stack([(j - (S - 1) / 2) / f, (i - (S - 1) / 2) / f, np.ones_like(j, float)]).reshape(3, -1)
    uv = (Kw @ rays)[:2] / rays[2]
    reach = 1.0 + 0.5 * 150.0 / f  # a crop pixel averages the image over about f_image / f_crop pixels
    inside = ((uv[0] >= reach) & (uv[0] <= W - 1 - reach) & (uv[1] >= reach) & (uv[1] <= H - 1 - reach)).reshape(S, S)
    assert inside.sum() > 0.3 * S * S
    np.testing.assert_allclose(crops[0, 0].numpy()[inside], (uv[0] / 255).reshape(S, S)[inside], atol=0.05 / 255)
    np.testing.assert_allclose(crops[0, 1].numpy()[inside], (uv[1] / 255).reshape(S, S)[inside], atol=0.05 / 255)
    assert torch.all(coverage[0][torch.from_numpy(inside)] == 1.0)


def test_crop_images_outside_the_mask_is_the_background_colour():
    S, H, W = 16, 40, 40
    Kw = np.array([[40.0, 0.0, 19.5], [0.0, 40.0, 19.5], [0.0, 0.0, 1.0]])
    rgb = torch.rand(1, 3, H, W)
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[0, :, :20] = True
    R, f = crop_camera(Kw, box_outline((0, 0, 40, 40)), S, 0.0)
    crops = crop_images(rgb, mask, torch.from_numpy(Kw), torch.from_numpy(R[None]), torch.tensor([f]), S, (255, 0, 51))
    right = crops[0, :, :, S // 2 + 1:]
    assert torch.all(right[0] == 1.0) and torch.all(right[1] == 0.0) and torch.allclose(right[2], torch.tensor(0.2))
    assert crops.shape == (1, 3, S, S) and crops.dtype == torch.float32
    with pytest.raises(InvalidInputError):
        crop_images(rgb, mask[:, :10], torch.from_numpy(Kw), torch.from_numpy(R[None]), torch.tensor([f]), S, (0, 0, 0))


def test_crop_images_of_several_channels_equal_separate_crops():
    # Two crops, one of them close up (supersampled): a 4-channel crop is the 3-channel crop of
    # the first three channels and the crop of the fourth, bit for bit.
    S, H, W = 24, 60, 80
    Kw = np.array([[90.0, 0.0, 39.5], [0.0, 90.0, 29.5], [0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    rgb, extra = torch.rand(1, 3, H, W), torch.rand(2, 1, H, W)
    mask = torch.rand(2, H, W) > 0.3
    cams = [crop_camera(Kw, box_outline(box), S, 0.05) for box in ((10, 10, 70, 50), (30, 20, 36, 26))]
    R, f = torch.from_numpy(np.stack([c[0] for c in cams])), torch.tensor([c[1] for c in cams])
    K = torch.from_numpy(Kw)
    both, coverage = crop_images(torch.cat([rgb.expand(2, -1, -1, -1), extra], 1), mask, K, R, f, S, (10, 20, 30, 40),
                                 return_masks=True)
    colour, colour_coverage = crop_images(rgb, mask, K, R, f, S, (10, 20, 30), return_masks=True)
    alone = crop_images(extra.expand(-1, 3, -1, -1), mask, K, R, f, S, (40, 40, 40))
    assert both.shape == (2, 4, S, S)
    assert torch.equal(both[:, :3], colour) and torch.equal(both[:, 3], alone[:, 0]) and torch.equal(coverage, colour_coverage)
    with pytest.raises(InvalidInputError, match=r"\(B\|1, 4, H, W\)"):
        crop_images(rgb, mask, K, R, f, S, (0, 0, 0, 0))


def test_ray_rotation_maps_the_optical_axis_onto_the_pixel_ray():
    uv = np.array([[159.5, 119.5], [300.0, 10.0], [0.0, 239.0]])
    R = ray_rotation(K, uv)
    np.testing.assert_allclose(R[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    rays = np.linalg.solve(K, np.c_[uv, np.ones(3)].T).T
    np.testing.assert_allclose(R[:, :, 2], rays / np.linalg.norm(rays, axis=1, keepdims=True), atol=1e-12)
