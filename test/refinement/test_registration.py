"""Model-to-depth registration: a known pose from a noisy partial point cloud, flips, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel
from pose_node.features.registry import create_backbone
from pose_node.refinement.problem import ProblemBuilder
from pose_node.refinement.registration import (
    RegistrationConfig, flip_transforms, observed_segment, register, registration_starts, sample_surface,
)
from scene import HEIGHT, WIDTH, errors, make_scene, perturbed


def l_model() -> ObjectModel:
    """An L-shaped block (no symmetry at all: every flip changes its geometry), vertex-coloured."""
    a = trimesh.creation.box(extents=[0.12, 0.04, 0.05])
    b = trimesh.creation.box(extents=[0.04, 0.08, 0.05])
    b.apply_translation([0.04, 0.06, 0.0])
    mesh = trimesh.util.concatenate([a, b])
    mesh.apply_translation(-mesh.centroid)
    colors = (np.random.default_rng(0).random((len(mesh.vertices), 3)) * 255).astype(np.uint8)
    return ObjectModel(1, "l_block", np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32),
                       np.asarray(mesh.vertex_normals, np.float32), float(np.linalg.norm(mesh.extents)), vertex_colors=colors)


def partial_cloud(model, T_world_object: np.ndarray, view_dirs: np.ndarray, noise_m: float, seed: int) -> np.ndarray:
    """World points of the model's surface facing any of ``view_dirs`` (K, 3) (what K cameras looking
    along them see, self-occlusion aside), with Gaussian noise."""
    s = sample_surface(model, 3000, seed=seed + 1)
    dirs = np.asarray(view_dirs, dtype=np.float64).reshape(-1, 3)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    facing = ((s.normals @ T_world_object[:3, :3].T @ dirs.T) < -0.2).any(1)
    p = s.points[facing] @ T_world_object[:3, :3].T + T_world_object[:3, 3]
    return p + np.random.default_rng(seed).normal(0.0, noise_m, p.shape)


def run_icp(model, cloud: np.ndarray, starts: list[np.ndarray], config: RegistrationConfig = RegistrationConfig()):
    s = sample_surface(model, config.model_points)
    B = len(starts)
    q = torch.from_numpy(cloud)[None].expand(B, -1, -1)
    return register(q, torch.ones(q.shape[:2], dtype=torch.bool), torch.from_numpy(s.points)[None].expand(B, -1, -1),
                    torch.from_numpy(s.normals)[None].expand(B, -1, -1), torch.from_numpy(np.stack(starts)),
                    torch.full((B,), model.diameter_m, dtype=torch.float64), config)


@pytest.fixture(scope="module")
def scene(make_renderer):
    return make_scene(make_renderer(WIDTH, HEIGHT), depth_noise_m=0.002, model=l_model())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_a_known_pose_from_a_noisy_partial_cloud(scene, seed):
    view_dirs = np.array([[1.0, 0.3, -0.5], [-0.2, 1.0, -0.6]])  # two cameras, 2 mm depth noise
    cloud = partial_cloud(scene.model, scene.T_world_object, view_dirs, 0.002, seed)
    start = perturbed(scene.T_world_object, 0.02, 15.0, seed)
    res = run_icp(scene.model, cloud, [start])
    dt, dr = errors(res.T_world_object[0].numpy(), scene.T_world_object)
    assert bool(res.valid[0])
    assert dt < 0.005 and dr < 3.0, f"{dt * 1e3:.2f} mm, {dr:.2f} deg"
    assert float(res.fitness[0]) > 0.8


def test_a_flipped_start_among_the_starts_recovers_the_truth_and_fits_best(scene):
    """From a start 180 degrees off about a principal axis, the start set holds the truth's flip,
    which converges, and its fit beats every other start's."""
    s = sample_surface(scene.model, 500)
    flipped = perturbed(scene.T_world_object, 0.01, 5.0, 3) @ flip_transforms(s)[1]
    starts = registration_starts(flipped, s, scene.model.symmetries)
    assert len(starts) == 4
    cloud = partial_cloud(scene.model, scene.T_world_object, np.array([[0.0, 0.6, -0.8], [0.7, -0.3, -0.6]]), 0.002, 4)
    res = run_icp(scene.model, cloud, starts)
    best = int(torch.argmax(res.fitness - 10.0 * res.rmse_m))
    dt, dr = errors(res.T_world_object[best].numpy(), scene.T_world_object)
    assert dt < 0.005 and dr < 3.0, f"{dt * 1e3:.2f} mm, {dr:.2f} deg"


def test_segment_of_rendered_depth_in_two_views_registers_within_5mm_3deg(scene, make_renderer):
    """The refiner's path: crops' depth (2 mm noise) -> world segment -> ICP."""
    model = scene.model
    S = 128
    builder = ProblemBuilder({model.object_id: model}, make_renderer(S, S), create_backbone())
    start = perturbed(scene.T_world_object, 0.02, 10.0, 5)
    obs = builder.observe(scene.views[:2], [model.object_id], [start], True)
    assert obs.slots[0] == [0, 1]
    centre = start[:3, :3] @ sample_surface(model, 500).centroid + start[:3, 3]
    pts = observed_segment(obs.depth, obs.K_crop, obs.T_crop_world, centre, 0.6 * model.diameter_m, 600)
    assert pts.dtype == torch.float64 and pts.device == obs.depth.device and 100 < len(pts) <= 600
    res = run_icp(model, pts.numpy(), [start])
    dt, dr = errors(res.T_world_object[0].numpy(), scene.T_world_object)
    assert dt < 0.005 and dr < 3.0, f"{dt * 1e3:.2f} mm, {dr:.2f} deg"


def test_flips_are_half_turns_about_orthogonal_axes_through_the_centroid(scene):
    s = sample_surface(scene.model, 500)
    F = flip_transforms(s)
    for f in F:
        assert np.allclose(f[:3, :3] @ f[:3, :3], np.eye(3), atol=1e-9)
        assert np.isclose(np.trace(f[:3, :3]), -1.0)
        assert np.allclose(f[:3, :3] @ s.centroid + f[:3, 3], s.centroid)
    assert np.allclose(s.principal_axes.T @ s.principal_axes, np.eye(3), atol=1e-9)


def test_symmetric_flips_collapse_to_one_start(scene):
    model = scene.model
    s = sample_surface(model, 500)
    F = flip_transforms(s)
    # Declare the half turn about the first principal axis a symmetry (through the centroid).
    symmetries = np.stack([np.eye(4), F[0]])
    starts = registration_starts(np.eye(4), s, symmetries)
    assert len(starts) == 2  # identity ~ flip 0, flip 1 ~ flip 2 (their product is flip 0)


def test_too_few_points_is_invalid_and_bad_shapes_raise(scene):
    cloud = partial_cloud(scene.model, scene.T_world_object, np.array([0.0, 0.0, -1.0]), 0.0, 0)[:10]
    res = run_icp(scene.model, cloud, [scene.T_world_object])
    assert not bool(res.valid[0])
    with pytest.raises(InvalidInputError, match="register"):
        register(torch.zeros(1, 5, 3), torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 6, 3), torch.zeros(1, 6, 3),
                 torch.eye(4)[None], torch.ones(1))
    with pytest.raises(InvalidInputError, match="trim_fraction"):
        RegistrationConfig(trim_fraction=0.0)


def test_cube_rotations_are_24_distinct_rotations_holding_the_flips(scene):
    from pose_node.refinement.registration import cube_rotations

    s = sample_surface(scene.model, 500)
    G = cube_rotations(s)
    assert G.shape == (24, 4, 4) and np.allclose(G[0], np.eye(4))
    R = G[:, :3, :3]
    assert np.allclose(np.einsum("kij,kil->kjl", R, R), np.eye(3), atol=1e-9) and np.allclose(np.linalg.det(R), 1.0)
    assert len({tuple(np.round(r, 6).ravel()) for r in R}) == 24
    for F in flip_transforms(s):
        assert min(np.abs(g - F).max() for g in G) < 1e-9
    assert len(registration_starts(np.eye(4), s, scene.model.symmetries, all_cube_rotations=True)) == 24
