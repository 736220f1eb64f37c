"""Room and distractors of photoreal workcells."""
import numpy as np
import pytest
import trimesh

from pose_node.core.errors import InvalidInputError
from pose_node.onboarding.procedural import make_procedural_objects
from pose_node.scene.clutter import (
    ClutterConfig, ClutterItem, clutter_mesh, clutter_model, place_distractors, sample_room,
)
from pose_node.scene.placement import compute_rest_poses, place_objects

TABLE_M = (1.2, 0.9)


@pytest.fixture(scope="module")
def arrangement():
    models = make_procedural_objects(4, 2)
    rest = [compute_rest_poses(m) for m in models]
    placed = place_objects(models, [0, 1, 2, 3], np.random.default_rng(2), table_size_m=TABLE_M, rest_poses=rest)
    return models, placed


@pytest.mark.parametrize("seed", range(3))
def test_distractors_rest_on_the_table_without_intersections(arrangement, seed):
    pytest.importorskip("fcl")
    models, placed = arrangement
    config = ClutterConfig(num_distractors=(6, 6))
    items = place_distractors(np.random.default_rng(seed), placed, TABLE_M, config)
    assert len(items) >= 4 and all(item.role == "distractor" for item in items)
    manager = trimesh.collision.CollisionManager()
    for k, p in enumerate(placed):
        manager.add_object(f"object_{k}", trimesh.Trimesh(models[p.model_index].vertices, models[p.model_index].faces),
                           transform=p.T_world_object)
    for k, item in enumerate(items):
        mesh = clutter_mesh(item.kind, item.size_m)
        world = trimesh.transform_points(mesh.vertices, item.T_world_object)
        assert world[:, 2].min() == pytest.approx(0.0, abs=1e-9)  # resting on the table top
        assert np.all(np.abs(world[:, :2]) <= np.asarray(TABLE_M) / 2)
        manager.add_object(f"distractor_{k}", mesh, transform=item.T_world_object)
    assert not manager.in_collision_internal()


def test_room_surrounds_the_table():
    config = ClutterConfig()
    items = sample_room(np.random.default_rng(0), TABLE_M, 0.04, config)
    walls = [i for i in items if i.role == "wall"]
    legs = [i for i in items if i.role == "leg"]
    assert len(walls) == 4 and len(legs) == 4 and sum(i.role == "floor" for i in items) == 1
    for wall in walls:
        normal = wall.T_world_object[:3, 2]
        centre = wall.T_world_object[:3, 3]
        assert normal @ -centre > 0  # faces the table
        assert config.room_half_size_m[0] <= np.linalg.norm(centre[:2]) <= config.room_half_size_m[1]
    for leg in legs:  # from the floor to the underside of the table
        z = trimesh.transform_points(clutter_mesh(leg.kind, leg.size_m).vertices, leg.T_world_object)[:, 2]
        assert z.min() == pytest.approx(config.floor_z_m) and z.max() == pytest.approx(-0.04)


def test_clutter_models_round_trip_and_texture_mapping():
    item = ClutterItem("wall", (2.0, 1.0, 0.0), np.eye(4), "wall")
    assert ClutterItem.from_json(item.to_json()).to_json() == item.to_json()
    texture = np.zeros((100, 100, 3), np.uint8)
    model = clutter_model(item, texture, texel_m=0.01)  # one tile per metre
    assert model.object_id == 0 and np.array_equal(model.texture, texture)
    np.testing.assert_allclose(np.ptp(model.uv, 0), [2.0, 1.0])
    box = clutter_model(ClutterItem("box", (0.1, 0.2, 0.3), np.eye(4), "distractor"))
    assert box.uv is None and box.texture is None
    np.testing.assert_allclose(np.ptp(box.vertices, 0), [0.1, 0.2, 0.3], atol=1e-6)
    # Flat faces: every box vertex normal is an axis.
    assert np.allclose(np.sort(np.abs(box.normals), 1), [0, 0, 1], atol=1e-6)
    with pytest.raises(InvalidInputError, match="kind"):
        clutter_mesh("cone", (1, 1, 1))
    with pytest.raises(InvalidInputError, match="num_distractors"):
        ClutterConfig(num_distractors=(5, 2))
