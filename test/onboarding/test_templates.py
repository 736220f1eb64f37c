"""Templates: crop geometry, XYZ/depth consistency, viewpoint coverage, descriptors, surface samples."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trimesh

from pose_node.core.errors import InvalidInputError
from pose_node.features import BackboneConfig, create_backbone
from pose_node.onboarding.procedural import make_procedural_object
from pose_node.onboarding.templates import (
    ObjectTemplates,
    TemplateConfig,
    compute_descriptors,
    onboard_object,
    render_templates,
    template_poses,
)
from pose_node.render.renderer import Renderer, RenderSettings

SIZE_PX = 64
CONFIG = TemplateConfig(template_size_px=SIZE_PX, num_surface_points=512)


@pytest.fixture(scope="module")
def renderer(make_renderer):
    return make_renderer(SIZE_PX, SIZE_PX)


@pytest.fixture(scope="module")
def model():
    # A cone: its bounding-sphere centre is not its origin (base at z = 0) and its silhouette is
    # not centrally symmetric, so the crop geometry is really exercised.
    return make_procedural_object(7, seed=11, target_faces=1500, shape="cone")


@pytest.fixture(scope="module")
def box():
    return make_procedural_object(8, seed=5, target_faces=1500, shape="box")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(BackboneConfig(name="efficientnet_lite0", device="cpu"))


@pytest.fixture(scope="module")
def templates(model, renderer):
    return render_templates(model, renderer, CONFIG)


@pytest.fixture(scope="module")
def onboarded(box, renderer, backbone):
    return onboard_object(box, renderer, backbone, CONFIG, batch_size=16)


def _mesh(model) -> trimesh.Trimesh:
    return trimesh.Trimesh(model.vertices.astype(np.float64), model.faces, process=False)


def _point_mesh_distance(p: np.ndarray, model, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact distance (N,) of points p (N, 3) to the mesh and the index (N,) of the nearest face
    (brute force over all faces; trimesh's proximity queries need rtree, not a dependency)."""
    tri = model.vertices.astype(np.float64)[model.faces]  # (F, 3, 3)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    n = np.cross(b - a, c - a)
    n_len = np.linalg.norm(n, axis=1)
    valid = n_len > 1e-15
    n_unit = n / np.where(valid, n_len, 1.0)[:, None]

    def segment_distance(q, s0, s1):  # q (C, 1, 3); s0, s1 (F, 3) -> (C, F)
        d = s1 - s0
        t = np.clip(((q - s0) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-30), 0.0, 1.0)
        return np.linalg.norm(q - (s0 + t[..., None] * d), axis=-1)

    best_d, best_f = [], []
    for start in range(0, len(p), chunk):
        q = p[start:start + chunk, None, :].astype(np.float64)
        height = ((q - a) * n_unit).sum(-1)  # (C, F)
        foot = q - height[..., None] * n_unit
        # Inside test: the foot is on the inner side of all three edges.
        inside = valid & np.all(
            [((np.cross(v1 - v0, foot - v0)) * n).sum(-1) >= 0 for v0, v1 in ((a, b), (b, c), (c, a))], axis=0
        )
        edge = np.minimum(np.minimum(segment_distance(q, a, b), segment_distance(q, b, c)), segment_distance(q, c, a))
        dist = np.where(inside, np.abs(height), edge)
        best_f.append(dist.argmin(1))
        best_d.append(dist.min(1))
    return np.concatenate(best_d), np.concatenate(best_f)


def _transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """T (..., 4, 4) applied to p (..., N, 3)."""
    return np.einsum("...ij,...nj->...ni", T[..., :3, :3], p) + T[..., None, :3, 3]


def test_shapes_and_types(templates):
    T, S = 42, SIZE_PX
    assert templates.rgb.shape == (T, S, S, 3) and templates.rgb.dtype == np.uint8
    assert templates.depth.shape == (T, S, S) and templates.depth.dtype == np.float32
    assert templates.xyz.shape == (T, S, S, 3) and templates.xyz.dtype == np.float32
    assert templates.mask.shape == (T, S, S) and templates.mask.dtype == bool
    assert templates.T_camera_object.shape == (T, 4, 4) and templates.K_template.shape == (3, 3)
    assert templates.descriptors is None and templates.backbone_cache_key == ""
    assert templates.object_id == 7


def test_object_is_centred_and_fills_the_crop_with_the_margin(model, templates):
    S = SIZE_PX
    K, T = templates.K_template, templates.T_camera_object
    centre = (S - 1) / 2
    # The bounding-sphere centre projects onto the crop centre in every template.
    c_cam = _transform(T, np.broadcast_to(templates.sphere_center_obj_m, (len(T), 1, 3)))[:, 0]
    uv = c_cam[:, :2] / c_cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
    np.testing.assert_allclose(uv, centre, atol=1e-9)
    np.testing.assert_allclose(c_cam[:, 2], CONFIG.distance_diameters * model.diameter_m, rtol=1e-9)
    # Every object pixel lies in the bounding sphere's silhouette: a disc leaving the margin free.
    disc_radius_px = (1 - 2 * CONFIG.crop_margin_fraction) * S / 2
    v, u = np.mgrid[0:S, 0:S]
    radius_px = np.hypot(u - centre, v - centre)
    assert radius_px[templates.mask.any(0)].max() <= disc_radius_px + 1e-6
    # ...the object covers a sensible part of every template, and its 2D box is near the middle
    # (not exactly: an oblique cone's silhouette is the base ellipse plus the apex, lopsided).
    area = templates.mask.reshape(len(T), -1).mean(1)
    assert area.min() > 0.05 and area.max() < 0.8, area
    offsets = []
    for mask in templates.mask:
        ys, xs = np.nonzero(mask)
        box_centre = 0.5 * (np.array([xs.min(), ys.min()]) + [xs.max(), ys.max()])
        offsets.append(np.abs(box_centre - centre).max())
    assert max(offsets) < 0.15 * S and np.median(offsets) < 0.08 * S, offsets


def test_background_is_empty(templates):
    outside = ~templates.mask
    assert np.all(templates.rgb[outside] == CONFIG.background_rgb)
    assert np.all(templates.depth[outside] == 0) and np.all(templates.xyz[outside] == 0)
    assert np.all(templates.depth[templates.mask] > 0)


def test_xyz_lies_on_the_mesh_and_maps_to_depth_and_pixel(model, templates):
    rng = np.random.default_rng(0)
    K = templates.K_template
    points, T_rows, pixels = [], [], []
    for t in range(templates.num_templates):
        vs, us = np.nonzero(templates.mask[t])
        pick = rng.choice(len(us), size=min(40, len(us)), replace=False)
        points.append(templates.xyz[t, vs[pick], us[pick]])
        T_rows.append(np.full(len(pick), t))
        pixels.append(np.stack([us[pick], vs[pick]], 1))
    xyz, t_index, uv_pixel = np.concatenate(points), np.concatenate(T_rows), np.concatenate(pixels)

    distance_m, _ = _point_mesh_distance(xyz, model)
    assert distance_m.max() < 1e-5, distance_m.max()  # 10 micrometres on a ~10 cm object

    T = templates.T_camera_object[t_index]
    p_cam = np.einsum("nij,nj->ni", T[:, :3, :3], xyz) + T[:, :3, 3]
    depth = templates.depth[t_index, uv_pixel[:, 1], uv_pixel[:, 0]]
    np.testing.assert_allclose(p_cam[:, 2], depth, atol=1e-5)
    uv = p_cam[:, :2] / p_cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
    assert np.abs(uv - uv_pixel).max() < 0.05  # attributes are interpolated at pixel centres


def test_viewpoints_are_distinct_and_cover_the_sphere(model, templates):
    T = templates.T_camera_object
    eye_obj = -np.einsum("nji,nj->ni", T[:, :3, :3], T[:, :3, 3])  # camera centres, object frame
    offset = eye_obj - templates.sphere_center_obj_m
    np.testing.assert_allclose(np.linalg.norm(offset, axis=1), CONFIG.distance_diameters * model.diameter_m, rtol=1e-9)
    directions = offset / np.linalg.norm(offset, axis=1, keepdims=True)
    cos = directions @ directions.T
    np.fill_diagonal(cos, -1.0)
    assert np.degrees(np.arccos(cos.max())) > 30.0  # icosphere level 1: neighbours 31.7 degrees apart
    probes = np.random.default_rng(1).normal(size=(5000, 3))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    worst_deg = np.degrees(np.arccos(np.clip((probes @ directions.T).max(1), -1, 1))).max()
    assert worst_deg < 22.0  # every direction has a template within 22 degrees
    # The optical axis (third row of R) points at the sphere centre.
    np.testing.assert_allclose(T[:, 2, :3], -directions, atol=1e-9)


@pytest.mark.parametrize(("num_viewpoints", "min_separation_deg"), [(42, 30.0), (162, 15.0), (642, 7.5)])
def test_viewpoint_counts_and_spacing(num_viewpoints, min_separation_deg):
    T = template_poses(np.zeros(3), 1.0, replace(CONFIG, num_viewpoints=num_viewpoints))
    eye = -np.einsum("nji,nj->ni", T[:, :3, :3], T[:, :3, 3])
    cos = eye @ eye.T
    np.fill_diagonal(cos, -1.0)
    assert len(T) == num_viewpoints and np.degrees(np.arccos(cos.max())) > min_separation_deg


def test_in_plane_rotations_turn_the_template_image(model, renderer):
    config = replace(CONFIG, in_plane_rotations=4, num_surface_points=16)
    rolled = render_templates(model, renderer, config)
    assert rolled.num_templates == 4 * 42
    masks = rolled.mask.reshape(42, 4, SIZE_PX, SIZE_PX)
    for v in range(0, 42, 5):
        for k in range(1, 4):
            # Turning the camera by k * 90 degrees about its axis turns the image clockwise by k * 90.
            expected = np.rot90(masks[v, 0], -k)
            iou = (expected & masks[v, k]).sum() / (expected | masks[v, k]).sum()
            assert iou > 0.97, (v, k, iou)
    # Same viewpoint, same camera centre.
    R, t = rolled.T_camera_object[:, :3, :3], rolled.T_camera_object[:, :3, 3]
    eye = -np.einsum("nji,nj->ni", R, t).reshape(42, 4, 3)
    np.testing.assert_allclose(eye, np.broadcast_to(eye[:, :1], eye.shape), atol=1e-9)


def test_descriptors_are_unit_norm_and_distinct_across_views(onboarded, backbone):
    d = onboarded.descriptors
    assert d.dtype == np.float32 and d.shape == (42, backbone.descriptor_dim)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert onboarded.backbone_cache_key == backbone.cache_key
    sim = d @ d.T
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < 0.995
    # Neighbouring viewpoints look more alike than opposite ones.
    T = onboarded.T_camera_object
    axis = T[:, 2, :3]
    angle = axis @ axis.T
    np.fill_diagonal(angle, -2.0)
    nearest = angle.argmax(1)
    opposite = angle.argmin(1)
    rows = np.arange(len(d))
    assert sim[rows, nearest].mean() > sim[rows, opposite].mean() + 0.05


def test_descriptors_depend_on_the_object_only(onboarded, backbone):
    noisy = onboarded.rgb.copy()
    noise = np.random.default_rng(3).integers(0, 256, noisy.shape, dtype=np.uint8)
    noisy[~onboarded.mask] = noise[~onboarded.mask]
    # Another background and another batch size (16 when onboarded): the same descriptors.
    d_noisy = compute_descriptors(replace(onboarded, rgb=noisy), backbone, batch_size=42)
    np.testing.assert_allclose(d_noisy, onboarded.descriptors, atol=1e-5)
    # A changed object (colours inverted inside the mask) changes every descriptor.
    inverted = onboarded.rgb.copy()
    inverted[onboarded.mask] = 255 - inverted[onboarded.mask]
    d_inv = compute_descriptors(replace(onboarded, rgb=inverted), backbone, batch_size=42)
    assert (d_inv * onboarded.descriptors).sum(1).max() < 0.99
    with pytest.raises(InvalidInputError, match="batch_size"):
        compute_descriptors(onboarded, backbone, batch_size=0)


def test_surface_samples_lie_on_the_mesh_with_face_normals(box, onboarded):
    points, normals = onboarded.surface_points_obj_m, onboarded.surface_normals_obj
    assert points.shape == normals.shape == (CONFIG.num_surface_points, 3)
    mesh = _mesh(box)
    distance_m, face = _point_mesh_distance(points, box)
    assert distance_m.max() < 1e-6
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.mean((normals * mesh.face_normals[face]).sum(1) > 0.999) > 0.97  # edges are ambiguous
    # Even spread: the sample mean is the area-weighted surface centroid; outward normals (box).
    assert np.linalg.norm(points.mean(0) - mesh.centroid) < 0.03 * box.diameter_m
    assert np.all(((points - mesh.centroid) * normals).sum(1) > 0)


def test_invalid_settings_raise(model, renderer):
    with pytest.raises(InvalidInputError, match="num_viewpoints"):
        TemplateConfig(num_viewpoints=100)
    with pytest.raises(InvalidInputError, match="distance_diameters"):
        TemplateConfig(distance_diameters=0.9)
    with pytest.raises(InvalidInputError, match="crop_margin_fraction"):
        TemplateConfig(crop_margin_fraction=0.5)
    with pytest.raises(InvalidInputError, match="template_size_px"):
        render_templates(model, renderer, replace(CONFIG, template_size_px=SIZE_PX * 2))
    far_near_plane = Renderer(SIZE_PX, SIZE_PX, RenderSettings(near_m=5.0, far_m=10.0))  # no GL context is made
    with pytest.raises(InvalidInputError, match="near_m"):
        render_templates(model, far_near_plane, CONFIG)


def test_templates_validate_shapes(templates):
    with pytest.raises(InvalidInputError, match="depth"):
        replace(templates, depth=templates.depth[:-1])
    with pytest.raises(InvalidInputError, match="descriptors"):
        replace(templates, descriptors=np.ones((42, 8), np.float32))  # not unit norm
    assert isinstance(replace(templates, descriptors=None), ObjectTemplates)
