"""The GL renderer agrees with the numpy reference rasterizer on a 3-object scene seen by 4
cameras with different intrinsics (depth, object coordinates, instance labels, masks)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.scene import box_model
from render_scenes import K_matrix, quad_model, rotation, sphere_model, translation

from pose_node.onboarding.procedural import ProceduralObjectConfig, make_procedural_object
from pose_node.render.reference import rasterize_reference
from pose_node.render.viewpoints import look_at_T_camera_object

W, H = 120, 90


@pytest.fixture(scope="module")
def scene():
    models = [
        box_model([0.08, 0.05, 0.06]),
        sphere_model(0.04, subdivisions=2),
        make_procedural_object(3, seed=4, shape="cylinder", config=ProceduralObjectConfig(size_range_m=(0.05, 0.07), target_faces=600)),
    ]
    T_world_object = np.stack([
        translation(0.0, -0.02, 0.03) @ rotation([0, 0, 1], 0.4),
        translation(0.06, 0.05, 0.04),
        translation(-0.05, 0.06, 0.0) @ rotation([1, 0, 0], 0.2),
    ])
    eyes = 0.6 * np.array([[0.3, -0.25, 0.3], [-0.35, -0.1, 0.25], [0.05, 0.4, 0.35], [0.0, -0.05, 0.45]])
    T_camera_world = look_at_T_camera_object(eyes, np.array([0.0, 0.03, 0.03]))
    Ks = np.stack([
        K_matrix(110.0, 110.0, 59.5, 44.5),
        K_matrix(95.0, 100.0, 62.3, 40.1),
        K_matrix(130.0, 125.0, 55.0, 47.8, skew=2.0),
        K_matrix(100.0, 100.0, 59.5, 44.5),
    ])
    return models, Ks, T_camera_world[:, None] @ T_world_object[None]


def test_gl_renderer_agrees_with_the_reference_rasterizer(make_renderer, scene):
    models, Ks, T = scene
    renderer = make_renderer(W, H)
    handles = [renderer.add_object(m) for m in models]
    out = renderer.render(Ks, T, handles, outputs=("depth", "xyz", "instance"))
    depth_ref, xyz_ref, instance_ref = rasterize_reference(Ks, T, models, W, H)

    for v in range(len(Ks)):
        union = (out.instance[v] > 0) | (instance_ref[v] > 0)
        both = (out.instance[v] > 0) & (instance_ref[v] > 0)
        assert union.sum() > 0.08 * W * H, f"view {v}: scene too small to be a test"
        agree = (out.instance[v] == instance_ref[v])[union].mean()
        assert agree >= 0.98, f"view {v}: instance labels agree on {agree:.3f} of the foreground"
        same_object = both & (out.instance[v] == instance_ref[v])
        depth_err = np.abs(out.depth[v] - depth_ref[v])[same_object]
        assert np.median(depth_err) < 1e-3 and np.percentile(depth_err, 99) < 1e-4, f"view {v}: depth"
        xyz_err = np.linalg.norm(out.xyz[v] - xyz_ref[v], axis=-1)[same_object]
        assert np.median(xyz_err) < 1e-3 and np.percentile(xyz_err, 99) < 1e-4, f"view {v}: xyz"
        for m in range(len(models)):
            gl_mask, ref_mask = out.instance[v] == m + 1, instance_ref[v] == m + 1
            if ref_mask.sum() < 30:
                continue
            iou = (gl_mask & ref_mask).sum() / (gl_mask | ref_mask).sum()
            assert iou > 0.98, f"view {v}, object {m}: mask IoU {iou:.3f}"
    visible = {(v, m) for v in range(len(Ks)) for m in range(len(models)) if (instance_ref[v] == m + 1).sum() >= 30}
    assert len(visible) >= 10, "most objects should be checked in most views"
    alone = [renderer.render(Ks, T[:, m : m + 1], [handles[m]], outputs=("instance",)).instance > 0 for m in range(len(models))]
    hidden = [int((alone[m] & (out.instance != m + 1)).sum()) for m in range(len(models))]
    assert sum(hidden) > 50, f"the scene should have occlusions (hidden pixels per object: {hidden})"


def test_reference_rasterizer_on_a_fronto_parallel_plane():
    K = K_matrix(40.0, 40.0, 15.5, 11.5)
    z = 0.7
    half_w, half_h = 10.2 * z / 40.0, 6.3 * z / 40.0  # projects to u in [5.3, 25.7], v in [5.2, 17.8]
    plane = quad_model(np.array([[-half_w, -half_h, z], [half_w, -half_h, z], [half_w, half_h, z], [-half_w, half_h, z]]))
    depth, xyz, instance = rasterize_reference(K[None], np.eye(4)[None, None], [plane], 32, 24)
    expected = np.zeros((24, 32), bool)
    expected[6:18, 6:26] = True
    np.testing.assert_array_equal(instance[0] == 1, expected)
    np.testing.assert_allclose(depth[0][expected], z)
    u, v = np.meshgrid(np.arange(32), np.arange(24))
    np.testing.assert_allclose(xyz[0][expected][:, 0], ((u - 15.5) * z / 40.0)[expected])
    np.testing.assert_allclose(xyz[0][expected][:, 1], ((v - 11.5) * z / 40.0)[expected])
