"""Template hypotheses: re-cropped templates, in-plane turns and the poses they imply."""
import numpy as np
import pytest
import torch

from pose_node.core.crop import crop_intrinsics
from pose_node.correspondence.hypotheses import (
    crop_templates,
    hypothesis_poses_in_crop,
    in_plane_angles,
    rotate_images,
    rotation_about_z,
)
from pose_node.onboarding.procedural import make_procedural_object
from pose_node.onboarding.templates import TemplateConfig, render_templates

S = 128


@pytest.fixture(scope="module")
def crops(make_renderer):
    model = make_procedural_object(1, seed=7, shape="box")
    templates = render_templates(model, make_renderer(96, 96), TemplateConfig(template_size_px=96))
    return crop_templates(templates, S)


def project_xyz(xyz_norm: torch.Tensor, mask: torch.Tensor, crops, T: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Object pixels (u, v) of a (3, S, S) normalized XYZ map and where T projects their points."""
    v, u = np.nonzero(mask[0].numpy() > 0.999)
    X = xyz_norm[:, v, u].numpy().T.astype(np.float64) * crops.sphere_radius_m + crops.sphere_center_obj_m
    p = (X @ T[:3, :3].T + T[:3, 3]) @ crop_intrinsics(np.array(focal), S).T
    return np.stack([u, v], 1).astype(np.float64), p[:, :2] / p[:, 2:]


def test_template_crop_pose_reprojects_its_coordinates(crops):
    for t in (0, 11, 30):
        pixels, projected = project_xyz(crops.xyz_norm[t], crops.mask[t], crops, crops.T_crop_object[t], crops.focal_px[t])
        assert len(pixels) > 500
        assert np.median(np.linalg.norm(projected - pixels, axis=1)) < 0.5


@pytest.mark.parametrize("angle_deg", [90.0, 135.0, 270.0])
def test_turned_template_matches_turned_pose(crops, angle_deg):
    t = 5
    angle = np.radians(angle_deg)
    xyz = rotate_images(crops.xyz_norm[t:t + 1], torch.tensor([angle]), mode="nearest")[0]
    mask = rotate_images(crops.mask[t:t + 1], torch.tensor([angle]), mode="nearest")[0]
    T = crops.T_crop_object[t].copy()
    T[:3] = rotation_about_z(np.array(angle)) @ T[:3]
    pixels, projected = project_xyz(xyz, mask, crops, T, crops.focal_px[t])
    assert np.median(np.linalg.norm(projected - pixels, axis=1)) < 1.0


def test_hypothesis_pose_in_a_crop_keeps_the_look(crops):
    """The same template seen in a crop of twice the focal length: same rotation, anchor twice as far."""
    t, angle = 3, in_plane_angles(8)[2]
    T = hypothesis_poses_in_crop(crops.T_crop_object[t], crops.focal_px[t], angle, 2.0 * crops.focal_px[t], crops.sphere_center_obj_m)
    expected_R = rotation_about_z(np.array(angle)) @ crops.T_crop_object[t, :3, :3]
    np.testing.assert_allclose(T[:3, :3], expected_R, atol=1e-12)
    anchor = T[:3, :3] @ crops.sphere_center_obj_m + T[:3, 3]
    anchor_template = expected_R @ crops.sphere_center_obj_m + rotation_about_z(np.array(angle)) @ crops.T_crop_object[t, :3, 3]
    np.testing.assert_allclose(anchor, 2.0 * anchor_template, atol=1e-12)
    batched = hypothesis_poses_in_crop(crops.T_crop_object[:4], crops.focal_px[:4], np.zeros(4), crops.focal_px[:4], crops.sphere_center_obj_m)
    np.testing.assert_allclose(batched, crops.T_crop_object[:4], atol=1e-12)
