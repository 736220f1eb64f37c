"""pose_ood_set: only the split's objects, 3-7 per scene, and a record of where they came from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pose_node.core.errors import PoseNodeError
from pose_node.datasets.bop import write_bop_models
from pose_node.datasets.splits import PROCEDURAL_FIRST_IDS, split_of_ycb_id
from pose_node.onboarding.procedural import make_procedural_object
from pose_node.scene.ood_set import OodSetConfig, build_object_pool, build_ood_set


def _fake_ycb_dir(root: Path, ids: list[int]) -> Path:
    write_bop_models(root, [make_procedural_object(i, seed=i, target_faces=300) for i in ids])
    return root


def test_pool_holds_only_the_splits_objects(tmp_path):
    ycb = _fake_ycb_dir(tmp_path / "ycb", [1, 2, 5, 14, 18, 52])
    test_pool = build_object_pool(tmp_path / "test", "test", 2, (ycb,))
    val_pool = build_object_pool(tmp_path / "val", "validation", 2, (ycb,))
    test_ids = [r["obj_id"] for r in test_pool]
    val_ids = [r["obj_id"] for r in val_pool]
    assert test_ids == [2, 5, 52, PROCEDURAL_FIRST_IDS["test"], PROCEDURAL_FIRST_IDS["test"] + 1]
    assert val_ids == [14, 18, PROCEDURAL_FIRST_IDS["validation"], PROCEDURAL_FIRST_IDS["validation"] + 1]
    info = json.loads((tmp_path / "test" / "models_info.json").read_text())
    assert sorted(int(k) for k in info) == test_ids
    assert (tmp_path / "test" / "obj_000052.ply").read_bytes() == (ycb / "obj_000052.ply").read_bytes()
    # Procedural objects of two splits never share a shape seed.
    sources = {r["source"] for r in test_pool if r["obj_id"] >= 1000} & {r["source"] for r in val_pool if r["obj_id"] >= 1000}
    assert not sources


def test_rasterized_set_uses_test_objects_in_scenes_of_3_to_7(tmp_path):
    ycb = _fake_ycb_dir(tmp_path / "ycb", [1, 2, 5, 11, 14, 15])
    out = build_ood_set(OodSetConfig(out_dir=tmp_path / "set", num_scenes=3, num_cameras=2, ycb_models_dirs=(ycb,),
                                     num_procedural=2, photoreal=False, duplicate_probability=1.0))
    world = json.loads((out / "scene_world.json").read_text())
    assert len(world["cameras"]) == 2 and len(world["scenes"]) == 3
    for scene in world["scenes"]:
        ids = [i["obj_id"] for i in scene["instances"]]
        assert 3 <= len(set(ids)) <= 6  # the pool has 6 objects (4 test YCB + 2 procedural)
        assert len(ids) == len(set(ids)) + 1  # duplicate_probability 1: one object twice
        assert all(i >= 1000 or split_of_ycb_id(i) == "test" for i in ids)
    manifest = json.loads((out / "ood_set.json").read_text())
    assert manifest["split"] == "test" and not manifest["procedural_only"] and not manifest["photoreal"]
    assert (out / "test_targets_multiview.json").is_file()


def test_without_ycb_folders_the_set_is_procedural_and_says_so(tmp_path):
    out = build_ood_set(OodSetConfig(out_dir=tmp_path / "set", num_scenes=1, num_cameras=1, num_procedural=3,
                                     photoreal=False))
    manifest = json.loads((out / "ood_set.json").read_text())
    assert manifest["procedural_only"] and len(manifest["objects"]) == 3


def test_no_objects_is_a_clear_error(tmp_path):
    with pytest.raises(PoseNodeError, match="no objects"):
        build_ood_set(OodSetConfig(out_dir=tmp_path / "set", num_procedural=0, photoreal=False))
