"""Rendered training samples: targets consistent with the truth, hypotheses near it."""

import numpy as np
import pytest

from pose_node.correspondence.hypotheses import in_plane_angles, rotation_about_z
from pose_node.correspondence.network import CorrespondenceNetConfig, cell_centres_px
from pose_node.onboarding.procedural import make_procedural_objects
from pose_node.training.correspondence_data import SampleConfig, TrainingSampler, closest_hypotheses, random_rotation

CONFIG = CorrespondenceNetConfig()


def angle_deg(a, b):
    return np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1)))


@pytest.fixture(scope="module")
def batch(make_renderer):
    models = make_procedural_objects(3, seed=4242)
    sampler = TrainingSampler(models, CONFIG, SampleConfig(second_best_probability=0.0, num_backgrounds=4), seed=3,
                              renderer=make_renderer(640, 480))
    return sampler.sample_batch(6)


def test_coordinates_reproject_onto_their_cells_at_the_true_pose(batch):
    uv = cell_centres_px(CONFIG.grid_size).double().numpy()
    for k in range(len(batch.crops)):
        visible = batch.gt_visible[k].numpy() > 0
        assert visible.sum() >= 10
        X = batch.gt_xyz_norm[k].double().numpy()[visible] * batch.sphere_radius_m[k] + batch.sphere_center_obj_m[k]
        T = batch.T_crop_object_gt[k]
        p = (X @ T[:3, :3].T + T[:3, 3]) @ batch.K_crop[k].T
        err = np.linalg.norm(p[:, :2] / p[:, 2:] - uv[visible], axis=1)
        assert np.median(err) < 0.1 and np.mean(err < 1.0) > 0.9


def test_matched_hypothesis_is_near_the_truth(batch):
    for k in range(len(batch.crops)):
        # 42 viewpoints (about 30 degrees apart) x 8 in-plane angles: the closest is within ~30 degrees.
        assert angle_deg(batch.T_crop_object_init[k, :3, :3], batch.T_crop_object_gt[k, :3, :3]) < 35.0
        assert batch.T_crop_object_init[k, 2, 3] > 0


def test_shapes_and_ranges(batch):
    B, g = len(batch.crops), CONFIG.grid_size
    assert batch.crops.shape == (B, 3, CONFIG.crop_size_px, CONFIG.crop_size_px)
    assert float(batch.crops.min()) >= 0 and float(batch.crops.max()) <= 1
    assert batch.template_xyz_norm.shape == (B, 3, g, g) and batch.template_mask.shape == (B, 1, g, g)
    # The detection mask covers most visible cells (it is only eroded or dilated by a few pixels).
    det = batch.detection_mask.reshape(B, -1).numpy() > 0.5
    vis = batch.gt_visible.numpy() > 0
    assert (det & vis).sum() / vis.sum() > 0.7


def test_symmetric_twin_closest_to_the_hypotheses_is_chosen():
    """A box symmetric under a half turn about z: the truth and its twin are equally good."""
    rng = np.random.default_rng(0)
    flip = np.eye(4)
    flip[:3, :3] = np.diag([-1.0, -1.0, 1.0])
    symmetries = np.stack([np.eye(4), flip])

    class Crops:
        T_crop_object = np.stack([np.eye(4)])

    angles = in_plane_angles(8)
    R_true = random_rotation(rng)
    T_hyp = rotation_about_z(angles)[:, :, :] @ np.eye(3)
    order, best_sym = closest_hypotheses(R_true, Crops, angles, symmetries)
    best = order[0]
    chosen = R_true @ symmetries[best_sym[best], :3, :3]
    other = R_true @ symmetries[1 - best_sym[best], :3, :3]
    assert angle_deg(T_hyp[best], chosen) <= angle_deg(T_hyp[best], other) + 1e-9
    plain, _ = closest_hypotheses(R_true, Crops, angles, None)
    assert angle_deg(T_hyp[best], chosen) <= angle_deg(T_hyp[plain[0]], R_true) + 1e-9
