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


# -- strong domain randomization (SampleConfig.domain_randomization) -----------------------------


@pytest.fixture(scope="module")
def randomized_models():
    """Two textured procedural objects and one untextured (the rasterizer paints it grey)."""
    import dataclasses

    models = make_procedural_objects(3, seed=4242)
    models[2] = dataclasses.replace(models[2], texture=None, uv=None, vertex_colors=None)
    return models


def _batch(models, renderer, sample_config, seed):
    sampler = TrainingSampler(models, CONFIG, sample_config, seed=seed, renderer=renderer)
    return sampler, sampler.sample_batch(4)


def test_randomized_samples_are_seeded_and_keep_the_shipped_geometry(make_renderer, randomized_models):
    from pose_node.training.correspondence_data import SHIPPED_EFFL0_SAMPLE_CONFIG

    renderer = make_renderer(640, 480)
    config = SampleConfig(num_backgrounds=4)
    assert config.domain_randomization is not None and SHIPPED_EFFL0_SAMPLE_CONFIG.domain_randomization is None
    _, a = _batch(randomized_models, renderer, config, seed=11)
    _, b = _batch(randomized_models, renderer, config, seed=11)
    _, c = _batch(randomized_models, renderer, config, seed=12)
    old = _batch(randomized_models, renderer, dataclasses_replace(SHIPPED_EFFL0_SAMPLE_CONFIG, num_backgrounds=4), seed=11)[1]
    B, S = 4, CONFIG.crop_size_px
    assert a.crops.shape == (B, 3, S, S) and a.crops.dtype == old.crops.dtype
    assert float(a.crops.min()) >= 0.0 and float(a.crops.max()) <= 1.0
    assert np.array_equal(a.crops.numpy(), b.crops.numpy())
    assert not np.array_equal(a.crops.numpy(), c.crops.numpy())
    # Same seed, same scenes and targets: only the appearance differs.
    np.testing.assert_array_equal(a.T_crop_object_gt, old.T_crop_object_gt)
    np.testing.assert_array_equal(a.gt_xyz_norm.numpy(), old.gt_xyz_norm.numpy())
    assert float((a.crops - old.crops).abs().mean()) > 0.03


def test_randomized_untextured_objects_get_colours(make_renderer, randomized_models):
    sampler = TrainingSampler(randomized_models[2:], CONFIG, SampleConfig(num_backgrounds=4, occluder_probability=0.0), seed=5,
                              renderer=make_renderer(640, 480))
    assert sampler.untextured == [True]
    batch = sampler.sample_batch(6)
    g, step = CONFIG.grid_size, CONFIG.crop_size_px // CONFIG.grid_size
    chroma = []
    for k in range(6):
        crop = batch.crops[k].permute(1, 2, 0).numpy()
        cells = batch.gt_visible[k].reshape(g, g).numpy() > 0
        pixels = crop[np.kron(cells, np.ones((step, step))) > 0]
        chroma.append(float(np.median(pixels.max(1) - pixels.min(1))))
    # Grey would give ~0 (up to white-balance error and colour jitter); random hues give clearly more.
    assert max(chroma) > 0.15


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)
