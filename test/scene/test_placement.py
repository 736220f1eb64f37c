import numpy as np
import pytest
import trimesh
from scipy.spatial import ConvexHull, Delaunay

from pose_node.onboarding.procedural import SHAPES, make_procedural_object
from pose_node.scene.placement import (
    PlacementConfig, PlacementError, compute_rest_poses, place_objects, polygons_separated,
)

TABLE_M = (1.0, 0.8)


@pytest.fixture(scope="module")
def models():
    return [make_procedural_object(i + 1, 100 + i, shape=shape, target_faces=1000) for i, shape in enumerate(SHAPES)]


@pytest.fixture(scope="module")
def rest_poses(models):
    return [compute_rest_poses(m) for m in models]


def _world_vertices(model, T):
    return trimesh.transform_points(np.asarray(model.vertices, float), T)


def _segment_distances(points, polygon):
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    t = np.clip(np.einsum("pki,ki->pk", points[:, None] - a, ab) / np.einsum("ki,ki->k", ab, ab), 0, 1)
    closest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - closest, axis=-1).min()


def _footprint_distance(p, q):
    return min(_segment_distances(p, q), _segment_distances(q, p))


@pytest.mark.parametrize("seed", range(6))
def test_placement_is_plausible(models, rest_poses, seed):
    indices = [0, 1, 2, 3, 4, 5, 0, 3]  # two instances of two models
    placed = place_objects(models, indices, np.random.default_rng(seed), table_size_m=TABLE_M, rest_poses=rest_poses)
    assert [p.model_index for p in placed] == indices
    assert [p.object_id for p in placed] == [models[i].object_id for i in indices]
    vertices = [_world_vertices(models[p.model_index], p.T_world_object) for p in placed]
    for p, v in zip(placed, vertices):
        T = p.T_world_object
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
        assert abs(v[:, 2].min()) < 1e-9, "resting exactly on the table"
        assert np.all(np.abs(v[:, :2]) <= np.asarray(TABLE_M) / 2), "on the table"
        # Static stability: the centre of mass projects inside the support polygon (contacts).
        mesh = trimesh.Trimesh(models[p.model_index].vertices, models[p.model_index].faces, process=True)
        assert mesh.is_watertight
        com = trimesh.transform_points(mesh.center_mass[None], T)[0]
        contacts = v[v[:, 2] < 1e-5, :2]
        hull = ConvexHull(contacts)
        assert hull.volume > 1e-7, "support polygon has area"
        assert Delaunay(contacts[hull.vertices]).find_simplex(com[:2]) >= 0
    # No interpenetration: no point of one object is inside another's convex hull.
    hulls = [Delaunay(v[ConvexHull(v).vertices]) for v in vertices]
    for i, vi in enumerate(vertices):
        mesh_i = trimesh.Trimesh(vi, models[placed[i].model_index].faces)
        points_i = np.concatenate([vi, trimesh.sample.sample_surface(mesh_i, 2000, seed=i)[0]])
        for j, hull_j in enumerate(hulls):
            if i != j:
                assert not np.any(hull_j.find_simplex(points_i) >= 0), (i, j)
    # A cluster: every object is close to another one, and some touch (footprints within 2 gaps).
    footprints = [p.footprint_xy for p in placed]
    distances = np.array([[_footprint_distance(a, b) if a is not b else np.inf for b in footprints] for a in footprints])
    assert distances.min() >= PlacementConfig().contact_gap_m * 0.999
    assert np.sum(distances.min(1) <= 2 * PlacementConfig().contact_gap_m + 1e-3) >= len(placed) // 2
    assert distances.min(1).max() <= PlacementConfig().max_extra_gap_m + 0.01


def test_no_collision_with_fcl(models, rest_poses):
    pytest.importorskip("fcl")
    placed = place_objects(models, list(range(len(models))) * 2, np.random.default_rng(7), table_size_m=TABLE_M, rest_poses=rest_poses)
    manager = trimesh.collision.CollisionManager()
    for k, p in enumerate(placed):
        model = models[p.model_index]
        manager.add_object(str(k), trimesh.Trimesh(model.vertices, model.faces, process=True), transform=p.T_world_object)
    assert not manager.in_collision_internal()


def test_rest_pose_probabilities(models, rest_poses):
    for model, poses in zip(models, rest_poses):
        assert poses.probabilities.sum() == pytest.approx(1.0)
        assert len(poses.transforms) == len(poses.probabilities) >= 1
    box = rest_poses[SHAPES.index("box")]
    assert len(box.transforms) == 6  # a box rests on any of its faces


def test_deterministic(models, rest_poses):
    a = place_objects(models, [0, 1, 2], np.random.default_rng(3), table_size_m=TABLE_M, rest_poses=rest_poses)
    b = place_objects(models, [0, 1, 2], np.random.default_rng(3), table_size_m=TABLE_M, rest_poses=rest_poses)
    assert all(np.array_equal(x.T_world_object, y.T_world_object) for x, y in zip(a, b))


def test_too_many_objects_raise(models, rest_poses):
    with pytest.raises(PlacementError, match="could not place"):
        place_objects(models, [1] * 30, np.random.default_rng(0), table_size_m=(0.3, 0.3), rest_poses=rest_poses,
                      config=PlacementConfig(max_attempts=5))


def test_separating_axis_with_gap():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    assert not polygons_separated(square, square + [0.5, 0.5])
    assert polygons_separated(square, square + [1.2, 0.0], gap_m=0.1)
    assert not polygons_separated(square, square + [1.05, 0.0], gap_m=0.1)
    triangle = np.array([[2.0, 2.0], [3.0, 2.0], [2.0, 3.0]])
    assert polygons_separated(square, triangle - 1.5, gap_m=0.0) is False
    assert polygons_separated(square, triangle - 0.9, gap_m=0.0)
    assert polygons_separated(square, triangle, gap_m=0.5)
