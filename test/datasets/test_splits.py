"""The one object split: disjoint, and read by the code that trains and calibrates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.datasets.bop import write_bop_models
from pose_node.datasets.splits import (
    PROCEDURAL_FIRST_IDS, PROCEDURAL_SEEDS, TEST_YCB_IDS, VALIDATION_YCB_IDS, check_training_objects, not_for_training,
    split_of_ycb_id, ycb_ids_in,
)
from pose_node.onboarding.procedural import make_procedural_object


def _fake_ycb_dir(root: Path, ids: list[int]) -> Path:
    """A BOP models folder whose obj_ids are ``ids`` (small procedural meshes stand in for YCB)."""
    models = [make_procedural_object(i, seed=i, target_faces=200) for i in ids]
    write_bop_models(root, models)
    return root


def test_splits_are_disjoint_and_cover_every_id():
    assert not set(TEST_YCB_IDS) & set(VALIDATION_YCB_IDS)
    assert {split_of_ycb_id(i) for i in TEST_YCB_IDS} == {"test"}
    assert {split_of_ycb_id(i) for i in VALIDATION_YCB_IDS} == {"validation"}
    assert split_of_ycb_id(1) == "train" and split_of_ycb_id(88) == "train"
    assert set(not_for_training()) == set(TEST_YCB_IDS) | set(VALIDATION_YCB_IDS)
    # The shipped correspondence network was trained without ycb_dev 2, 5, 8, 11: they stay test objects.
    assert {2, 5, 8, 11} <= set(TEST_YCB_IDS)
    assert len(set(PROCEDURAL_SEEDS.values())) == 3 and len(set(PROCEDURAL_FIRST_IDS.values())) == 3


def test_ycb_ids_in_reads_the_split_from_a_models_folder(tmp_path):
    models = _fake_ycb_dir(tmp_path, [1, 2, 14, 15, 60])
    assert ycb_ids_in(models, "test").object_ids == (2, 15)
    assert ycb_ids_in(models, "validation").object_ids == (14, 60)
    assert ycb_ids_in(models, "train").object_ids == (1,)
    with pytest.raises(InvalidInputError, match="split"):
        ycb_ids_in(models, "tuning")
    with pytest.raises(InvalidInputError, match="models_info"):
        ycb_ids_in(tmp_path / "nowhere", "test")


@pytest.mark.parametrize("object_id", [TEST_YCB_IDS[0], VALIDATION_YCB_IDS[0], 3000, 2000])
def test_check_training_objects_refuses_held_out_objects(object_id):
    with pytest.raises(InvalidInputError, match=str(object_id)):
        check_training_objects([1, object_id])
    check_training_objects([1, 16, 1000])  # training YCB and training procedural ids pass


def test_training_never_loads_test_or_validation_objects(tmp_path):
    from pose_node.training.correspondence import DEFAULT_HOLDOUT_BOP_IDS, PROCEDURAL_TRAIN_SEED, training_objects

    models = _fake_ycb_dir(tmp_path, [1, 2, 5, 14, 22, 30])
    loaded = training_objects(2, models, DEFAULT_HOLDOUT_BOP_IDS)
    ycb_ids = sorted(m.object_id for m in loaded if m.object_id < PROCEDURAL_FIRST_IDS["train"])
    assert ycb_ids == [1, 30]
    procedural = [m for m in loaded if m.object_id >= PROCEDURAL_FIRST_IDS["train"]]
    assert [m.source_path.split("seed=")[1] for m in procedural] == [str(PROCEDURAL_TRAIN_SEED), str(PROCEDURAL_TRAIN_SEED + 1)]


def test_in_domain_calibration_objects_are_never_test_objects(tmp_path):
    """pose_refinement_bench --calibrate copies the training-split objects of --ycb-models only."""
    from pose_node.benchmark.correspondence import holdout_models_dir

    models = _fake_ycb_dir(tmp_path / "ycb", [1, 2, 3, 11, 14])
    train_ids = ycb_ids_in(models, "train").object_ids
    copied = holdout_models_dir(models, tmp_path / "out", train_ids, folder="val")
    assert sorted(int(k) for k in json.loads((copied / "models_info.json").read_text())) == [1, 3]


def test_every_object_id_has_its_split():
    from pose_node.datasets.splits import split_of_object_id

    assert split_of_object_id(2) == "test" and split_of_object_id(14) == "validation" and split_of_object_id(1) == "train"
    for split, first in PROCEDURAL_FIRST_IDS.items():
        assert split_of_object_id(first) == split and split_of_object_id(first + 999) == split
    assert split_of_object_id(5000) is None  # a user's own object: no split governs it


def test_out_of_domain_calibration_refuses_test_split_objects(tmp_path):
    """pose_refinement_bench --calibrate-dataset refuses a set with test-split objects before any evaluation."""
    from pose_node.datasets.splits import check_no_test_objects, check_not_test_set

    def check_calibration_set(name, path):  # as pose_refinement_bench --calibrate-dataset calls it
        check_not_test_set(path, f"calibrate on {name}")

    check_no_test_objects([1, 14, PROCEDURAL_FIRST_IDS["validation"]], "calibrate")  # train + validation: fine
    with pytest.raises(InvalidInputError, match=r"test-split objects \[2, 3000\]"):
        check_no_test_objects([1, 2, PROCEDURAL_FIRST_IDS["test"]], "calibrate")
    dataset = tmp_path / "bop_set"
    _fake_ycb_dir(dataset / "models", [14, 15])  # 15 (fork) is a test object
    with pytest.raises(InvalidInputError, match=r"calibrate on ood_val.*\[15\]"):
        check_calibration_set("ood_val", dataset)
    # A pose_ood_set output is judged by its ood_set.json: split and objects.
    ood = tmp_path / "ood"
    ood.mkdir()
    (ood / "ood_set.json").write_text(json.dumps({"split": "validation", "objects": [{"obj_id": 14}, {"obj_id": 2000}]}))
    check_calibration_set("ood_val", ood)
    (ood / "ood_set.json").write_text(json.dumps({"split": "validation", "objects": [{"obj_id": 3001}]}))
    with pytest.raises(InvalidInputError, match=r"\[3001\]"):
        check_calibration_set("ood_val", ood)
    (ood / "ood_set.json").write_text(json.dumps({"split": "test", "objects": []}))
    with pytest.raises(InvalidInputError, match="test split"):
        check_calibration_set("ood_test", ood)
