"""Simplified meshes for render-and-compare: same silhouette and depth, colours carried, fewer triangles."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trimesh
from render_scenes import K_matrix, mesh_model, quad_model, rotation, translation

from pose_node.core.errors import InvalidInputError
from pose_node.render.simplify import simplified, vertex_colours


def _two_coloured_capsule():
    """A 16k-triangle capsule (radius 3 cm, 10 cm long along z), red where z < 0, blue above."""
    mesh = trimesh.creation.capsule(height=0.10, radius=0.03, count=[64, 128])
    model = mesh_model(mesh, name="capsule")
    colours = np.where(model.vertices[:, 2:3] < 0, [[220, 30, 30]], [[30, 30, 220]]).astype(np.uint8)
    return replace(model, vertex_colors=colours)


def test_simplified_mesh_renders_the_same_silhouette_depth_and_colours(make_renderer):
    model = _two_coloured_capsule()
    coarse = simplified(model, 1500)
    assert len(model.faces) > 10_000 and len(coarse.faces) <= 1600
    assert coarse.diameter_m == model.diameter_m and coarse.object_id == model.object_id
    renderer = make_renderer(96, 96)
    handles = [renderer.add_object(model), renderer.add_object(coarse)]
    K = K_matrix(300.0, 300.0, 47.5, 47.5)[None]
    for seed in range(3):
        T = translation(0.0, 0.0, 0.45) @ rotation(np.random.default_rng(seed).normal(size=3), 0.9 + seed)
        full, low = (renderer.render(K, T[None, None], [h], outputs=("rgb", "depth")) for h in handles)
        a, b = full.depth[0] > 0, low.depth[0] > 0
        assert (a & b).sum() / (a | b).sum() > 0.97  # silhouette IoU
        both = a & b
        # Depth: well inside the verification's 1 cm agreement tolerance (grazing pixels differ most).
        error = np.abs(full.depth[0][both] - low.depth[0][both])
        assert np.median(error) < 5e-4 and np.percentile(error, 95) < 3e-3
        # Colour: the red / blue halves land on the same pixels (away from where they meet).
        red_full, red_low = (img.rgb[0][..., 0].astype(int) > img.rgb[0][..., 2] for img in (full, low))
        assert (red_full == red_low)[both].mean() > 0.95


def test_texture_becomes_vertex_colours():
    # A quad whose texture is red on top, green at the bottom (OpenGL uv: v = 1 at the top row).
    texture = np.zeros((2, 2, 3), np.uint8)
    texture[0] = (255, 0, 0)
    texture[1] = (0, 255, 0)
    corners = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    quad = quad_model(corners, uv=uv, texture=texture)
    np.testing.assert_array_equal(vertex_colours(quad), [[0, 255, 0], [0, 255, 0], [255, 0, 0], [255, 0, 0]])
    assert vertex_colours(replace(quad, texture=None, uv=None)) is None


def test_small_meshes_and_zero_are_kept_and_negative_is_refused():
    model = _two_coloured_capsule()
    assert simplified(model, 0) is model
    assert simplified(model, len(model.faces)) is model
    with pytest.raises(InvalidInputError, match="max_faces"):
        simplified(model, -1)
