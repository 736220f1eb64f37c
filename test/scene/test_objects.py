"""pose_scene with the node's own objects: its YAML file, or mesh files PATH:UNITS.

The written dataset is read back with the BOP reader and compared with the meshes as declared:
ids, names, sizes in metres, symmetries in millimetres consistent with the written PLY.
"""
import re
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml
from scipy.spatial import cKDTree

from pose_node.core.errors import InvalidInputError, MeshLoadError
from pose_node.datasets.bop import BopDataset
from pose_node.ros.node_config import ContinuousSymmetry, ObjectConfig, load_node_config
from pose_node.scene.cli import main as pose_scene
from pose_node.scene.generator import WorkcellConfig, generate_workcell, read_scene_world
from pose_node.scene.layout import LayoutConfig
from pose_node.scene.objects import bop_symmetries_mm, load_listed_objects, mesh_file_objects

TINY = ["--cameras", "2", "--frames-per-scene", "1", "--width", "64", "--height", "48", "--no-bag"]
CUBE_MM = 50.0
CUBE_CENTRE_MM = np.array([10.0, 0.0, 0.0])
BOX_EXTENTS_M = np.array([0.08, 0.04, 0.02])
BOX_CENTRE_M = np.array([0.01, 0.0, 0.0])


def _rz(deg: float, centre: np.ndarray) -> np.ndarray:
    """Rotation about the z axis through ``centre`` (4x4, translation in the centre's units)."""
    T = trimesh.transformations.rotation_matrix(np.radians(deg), [0, 0, 1])
    T[:3, 3] = centre - T[:3, :3] @ centre
    return np.round(T, 9)


def _write_meshes(folder: Path) -> None:
    """meshes/cube.ply: a 50 mm cube (file in mm) centred at (10, 0, 0) mm; meshes/box.obj: a
    80 x 40 x 20 mm box (file in m) centred at (0.01, 0, 0) m. Off-centre, so a symmetry's
    translation is not zero and its unit conversion is tested."""
    (folder / "meshes").mkdir(parents=True, exist_ok=True)
    cube = trimesh.creation.box(extents=[CUBE_MM] * 3)
    cube.apply_translation(CUBE_CENTRE_MM)
    cube.export(folder / "meshes" / "cube.ply")
    box = trimesh.creation.box(extents=BOX_EXTENTS_M)
    box.apply_translation(BOX_CENTRE_M)
    box.export(folder / "meshes" / "box.obj")


def _objects_entries() -> list[dict]:
    return [
        {"id": 3, "name": "cube", "mesh": "../meshes/cube.ply", "units": "mm",
         "symmetries_discrete": [_rz(90, CUBE_CENTRE_MM).reshape(-1).tolist()]},
        {"id": 7, "name": "box", "mesh": "../meshes/box.obj", "units": "m",
         "symmetries_discrete": [_rz(180, BOX_CENTRE_M).reshape(-1).tolist()]},
    ]


def _write_node_config(path: Path) -> Path:
    """The node's whole configuration file (cameras, pipeline) with the two objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cameras = {f"cam{i}": {"color_topic": f"/cam{i}/color/image_raw", "camera_info_topic": f"/cam{i}/color/camera_info"}
               for i in range(2)}
    path.write_text(yaml.safe_dump({"world_frame": "world", "cameras": cameras, "objects": _objects_entries(),
                                    "pipeline": {"mode": "rgb"}}))
    return path


@pytest.fixture(scope="module")
def yaml_dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cell")
    _write_meshes(root)
    config_path = _write_node_config(root / "config" / "pose_node.yaml")
    out = generate_workcell(WorkcellConfig(
        out_dir=root / "out", objects=str(config_path), frames_per_scene=1, write_bag=False, seed=3,
        layout=LayoutConfig(num_cameras=2, width_px=64, height_px=48)))
    return out, config_path


def _extents_m(model) -> np.ndarray:
    return np.ptp(np.asarray(model.vertices, float), axis=0)


def test_yaml_objects_keep_ids_names_and_sizes(yaml_dataset):
    out, config_path = yaml_dataset
    ds = BopDataset(out)
    models = {m.object_id: m for m in ds.models()}
    assert sorted(models) == [3, 7]
    np.testing.assert_allclose(_extents_m(models[3]), [CUBE_MM / 1000] * 3, atol=1e-6)  # mm file -> 0.05 m
    np.testing.assert_allclose(_extents_m(models[7]), BOX_EXTENTS_M, atol=1e-6)  # m file -> the same metres
    world = read_scene_world(out / "scene_world.json")
    assert [(o["obj_id"], o["name"]) for o in world["objects"]] == [(3, "cube"), (7, "box")]
    # A node configured with the same file knows the objects under the same ids and names, so its
    # TF frames <name>_<k> match the ground truth.
    node_objects = load_node_config(config_path).objects
    assert [(o.object_id, o.name) for o in node_objects] == [(3, "cube"), (7, "box")]
    names = {o["obj_id"]: o["name"] for o in world["objects"]}
    instances = world["scenes"][0]["instances"]
    assert {i["obj_id"] for i in instances} == {3, 7}
    assert all(i["name"] == names[i["obj_id"]] for i in instances)
    gt_ids = {g.obj_id for im_id in ds.image_ids(0) for g in ds.gts(0, im_id)}
    assert gt_ids == {3, 7}


def test_yaml_symmetries_are_written_in_millimetres(yaml_dataset):
    """Each written symmetry (models_info, mm) maps the written PLY (mm) onto itself."""
    out, _ = yaml_dataset
    ds = BopDataset(out)
    info = ds.models_info()
    np.testing.assert_allclose(np.reshape(info[7]["symmetries_discrete"][0], (4, 4))[:3, 3], [20.0, 0.0, 0.0], atol=1e-6)
    for model in ds.models():
        v_mm = np.asarray(model.vertices, float) * 1000
        (T,) = np.reshape(info[model.object_id]["symmetries_discrete"], (-1, 4, 4))
        moved = v_mm @ T[:3, :3].T + T[:3, 3]
        distance_mm, _ = cKDTree(v_mm).query(moved)
        assert distance_mm.max() < 1e-3, model.name


def test_objects_only_file_equals_whole_node_file(tmp_path, yaml_dataset):
    _, config_path = yaml_dataset
    only = config_path.parent / "objects_only.yml"
    only.write_text(yaml.safe_dump({"objects": _objects_entries()}))
    (a, sym_a), (b, sym_b) = load_listed_objects([str(config_path)]), load_listed_objects([str(only)])
    assert [(m.object_id, m.name, m.source_path) for m in a] == [(m.object_id, m.name, m.source_path) for m in b]
    assert sym_a == sym_b and sorted(sym_a) == [3, 7]


def test_mesh_files_get_ids_in_order_and_names_from_stems(tmp_path, monkeypatch):
    _write_meshes(tmp_path)
    trimesh.creation.box(extents=BOX_EXTENTS_M * 100).export(tmp_path / "meshes" / "bracket.obj")  # in cm
    monkeypatch.chdir(tmp_path)  # relative PATHs resolve against the working directory
    out = tmp_path / "out"
    assert pose_scene(["--out", str(out), "--objects", "meshes/bracket.obj:cm", "meshes/cube.ply:mm"] + TINY) == 0
    world = read_scene_world(out / "scene_world.json")
    assert [(o["obj_id"], o["name"]) for o in world["objects"]] == [(1, "bracket"), (2, "cube")]
    assert world["objects"][0]["source"] == str((tmp_path / "meshes" / "bracket.obj").resolve())
    models = {m.object_id: m for m in BopDataset(out).models()}
    np.testing.assert_allclose(_extents_m(models[1]), BOX_EXTENTS_M, atol=1e-6)
    np.testing.assert_allclose(_extents_m(models[2]), [CUBE_MM / 1000] * 3, atol=1e-6)


def test_mesh_spec_parsing_uses_the_node_rules(tmp_path):
    _write_meshes(tmp_path)
    objects = mesh_file_objects(["meshes/cube.ply:mm", "meshes/box.obj:m"], base_dir=tmp_path)
    assert [(o.object_id, o.name, o.units, o.mesh_path) for o in objects] == [
        (1, "cube", "mm", tmp_path / "meshes" / "cube.ply"), (2, "box", "m", tmp_path / "meshes" / "box.obj")]
    with pytest.raises(InvalidInputError, match=r"already used"):
        mesh_file_objects(["meshes/cube.ply:mm", "meshes/cube.ply:cm"], base_dir=tmp_path)
    (tmp_path / "meshes" / "my-cube.ply").write_bytes((tmp_path / "meshes" / "cube.ply").read_bytes())
    with pytest.raises(InvalidInputError, match=r"--objects\[0\]\.name: .*'my-cube'"):
        mesh_file_objects(["meshes/my-cube.ply:mm"], base_dir=tmp_path)


def test_symmetries_scale_from_mesh_units_to_millimetres():
    T = np.eye(4)
    T[:3, 3] = [1.0, 2.0, 3.0]
    obj = ObjectConfig(object_id=1, name="a", source="mesh", mesh_path=Path("a.ply"), units="cm",
                       symmetries_discrete=(tuple(T.reshape(-1)),),
                       symmetries_continuous=(ContinuousSymmetry(axis=(0.0, 0.0, 1.0), offset=(0.5, 0.0, -1.0)),))
    entry = bop_symmetries_mm(obj)
    assert np.reshape(entry["symmetries_discrete"][0], (4, 4))[:3, 3].tolist() == [10.0, 20.0, 30.0]
    assert entry["symmetries_continuous"] == [{"axis": [0.0, 0.0, 1.0], "offset": [5.0, 0.0, -10.0]}]
    assert obj.symmetries_discrete[0][3] == 1.0  # the configuration is left as it was


@pytest.fixture
def bad_sources(tmp_path) -> Path:
    _write_meshes(tmp_path)
    (tmp_path / "broken.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n2\n")
    (tmp_path / "no_objects.yaml").write_text("world_frame: world\n")
    (tmp_path / "unclosed.yaml").write_text("objects: [{id: 1, mesh: meshes/cube.ply, units: mm}\n")
    (tmp_path / "missing_mesh.yaml").write_text("objects:\n  - {id: 1, name: a, mesh: nowhere.ply, units: mm}\n")
    return tmp_path


@pytest.mark.parametrize("sources, error, message", [
    (["missing.ply:mm"], InvalidInputError, r"file not found: {d}/missing\.ply"),
    (["missing_mesh.yaml"], InvalidInputError, r"{d}/missing_mesh\.yaml: objects\[0\]\.mesh: file not found: {d}/nowhere\.ply"),
    (["absent.yaml"], InvalidInputError, r"{d}/absent\.yaml: cannot read it"),
    (["meshes/cube.ply:ft"], InvalidInputError, r"meshes/cube\.ply:ft: unknown units 'ft'; expected one of m, cm, mm"),
    (["meshes/cube.ply"], InvalidInputError, r"meshes/cube\.ply: mesh file without units .* one of m, cm, mm"),
    (["no_objects.yaml"], InvalidInputError, r"{d}/no_objects\.yaml: no objects: list"),
    (["unclosed.yaml"], InvalidInputError, r"{d}/unclosed\.yaml: not valid YAML at line 2, column 1: expected ','"),
    (["broken.ply:mm"], MeshLoadError, r"broken\.ply: could not parse mesh"),
    (["meshes/cube.ply:m"], MeshLoadError, r"cube\.ply: diameter .* check the declared units \(plausible: \['cm', 'mm'\]\)"),
])
def test_bad_sources_fail_with_one_line_naming_the_path(bad_sources, monkeypatch, capsys, sources, error, message):
    monkeypatch.chdir(bad_sources)
    pattern = message.format(d=re.escape(str(bad_sources.resolve())))
    config = WorkcellConfig(out_dir=bad_sources / "out", objects=tuple(sources), write_bag=False)
    with pytest.raises(error, match=pattern):
        generate_workcell(config)
    assert pose_scene(["--out", str(bad_sources / "out_cli"), "--objects", *sources] + TINY) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pose_scene: error: ")
    assert re.search(pattern, err), err
