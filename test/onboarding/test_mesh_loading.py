from pathlib import Path

import numpy as np
import pytest
import trimesh

from pose_node.core import MeshLoadError
from pose_node.onboarding.mesh_loading import load_bop_models, load_object_model, model_diameter_m, symmetry_transforms
from pose_node.onboarding.procedural import make_procedural_object

YCB_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "ycb_dev" / "models"


def _box_file(tmp_path, extents, suffix):
    path = tmp_path / f"box{suffix}"
    trimesh.creation.box(extents=extents).export(path)
    return path


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb", ".stl"])
def test_units_are_converted_to_metres(tmp_path, suffix):
    path = _box_file(tmp_path, [30.0, 40.0, 120.0], suffix)  # millimetres
    model = load_object_model(path, units="mm", object_id=3)
    np.testing.assert_allclose(model.vertices.max(0) - model.vertices.min(0), [0.03, 0.04, 0.12], atol=1e-6)
    assert model.diameter_m == pytest.approx(np.sqrt(0.03**2 + 0.04**2 + 0.12**2), rel=1e-5)
    assert model.object_id == 3 and model.name == "box" and model.source_units == "mm"
    assert np.allclose(np.linalg.norm(model.normals, axis=1), 1.0, atol=1e-4)


def test_wrong_units_raise_with_hint(tmp_path):
    path = _box_file(tmp_path, [30.0, 40.0, 120.0], ".ply")
    with pytest.raises(MeshLoadError, match=r"plausible: .*'mm'"):
        load_object_model(path, units="m", object_id=1)
    with pytest.raises(MeshLoadError, match="unknown units"):
        load_object_model(path, units="furlong", object_id=1)


def test_missing_empty_and_broken_files(tmp_path):
    with pytest.raises(MeshLoadError, match="not found"):
        load_object_model(tmp_path / "nope.ply", units="m", object_id=1)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    with pytest.raises(MeshLoadError, match="empty|no triangle mesh|expected a triangle mesh"):
        load_object_model(empty, units="m", object_id=1)
    broken = tmp_path / "broken.ply"
    broken.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00\x01")
    with pytest.raises(MeshLoadError, match="broken.ply"):
        load_object_model(broken, units="m", object_id=1)
    out_of_range = tmp_path / "bad_faces.obj"
    out_of_range.write_text("v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nf 1 2 9\n")
    with pytest.raises(MeshLoadError, match="broken|out of range|parse"):
        load_object_model(out_of_range, units="m", object_id=1)


def test_diameter_matches_brute_force():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3))
    brute = max(np.linalg.norm(p - q) for p in points for q in points)
    assert model_diameter_m(points) == pytest.approx(brute)


def test_symmetry_transforms_discrete_and_continuous():
    info = {"symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 10.0, 0, 0, 0, 1]]}
    T = symmetry_transforms(info)
    assert T.shape == (2, 4, 4)
    np.testing.assert_allclose(T[0], np.eye(4))
    assert T[1, 2, 3] == pytest.approx(0.010)  # mm -> m
    cont = symmetry_transforms({"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}, max_step_fraction=0.1)
    assert cont.shape == (32, 4, 4)  # identity + ceil(pi / 0.1) - 1 rotations
    angles = np.arctan2(cont[:, 1, 0], cont[:, 0, 0])
    assert len(np.unique(np.round(angles, 6))) == 32


@pytest.mark.skipif(not YCB_DEV.is_dir(), reason="shared/data/ycb_dev not present (only in the dev/CI checkout)")
def test_bop_ycb_models_load_with_textures():
    models = load_bop_models(YCB_DEV, object_ids=[1, 12])
    cracker, brick = models
    assert cracker.diameter_m == pytest.approx(0.269505, abs=1e-4)  # models_info.json: 269.504984 mm
    assert cracker.texture.shape == (1024, 1024, 3) and cracker.uv.shape == (len(cracker.vertices), 2)
    assert brick.symmetries.shape == (2, 4, 4)  # foam brick: 180 degrees about z


def test_procedural_objects_are_deterministic_and_textured():
    a = make_procedural_object(1, seed=5)
    b = make_procedural_object(1, seed=5)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.texture, b.texture)
    assert 0.04 * 0.99 <= a.diameter_m <= 0.2 * np.sqrt(3) * 1.01
    assert a.uv.min() >= 0.0 and a.uv.max() <= 1.0
    assert abs(a.vertices[:, 2].min()) < 1e-6  # base on z = 0
    big = make_procedural_object(2, seed=0, target_faces=16000, shape="ellipsoid")
    assert 12000 <= len(big.faces) <= 20000
