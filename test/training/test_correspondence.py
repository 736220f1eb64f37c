"""pose_train's choice of training objects: the split decides, never a validation or test object."""

import json

from pose_node.datasets.splits import TEST_YCB_IDS, VALIDATION_YCB_IDS, default_ycb_models_dirs, split_of_object_id
from pose_node.training import correspondence
from pose_node.training.correspondence import training_bop_objects


def fake_models_dir(tmp_path, name, ids):
    d = tmp_path / name / "models"
    d.mkdir(parents=True)
    (d / "models_info.json").write_text(json.dumps({str(i): {"diameter": 100.0} for i in ids}))
    return d


def test_training_objects_come_from_the_train_split_only(tmp_path):
    dev = fake_models_dir(tmp_path, "ycb_dev", range(1, 13))
    train = fake_models_dir(tmp_path, "ycb_train", list(range(13, 29)) + list(range(50, 89)))
    selected = training_bop_objects([dev, train, tmp_path / "missing"], holdout=(3,))
    assert [s.models_dir for s in selected] == [dev, train]
    ids = [i for s in selected for i in s.object_ids]
    assert not set(ids) & (set(TEST_YCB_IDS) | set(VALIDATION_YCB_IDS))
    assert all(split_of_object_id(i) == "train" for i in ids)
    assert 3 not in ids
    assert selected[0].object_ids == (1, 4, 6, 7, 9, 10, 12)
    # Textured (13-28) and geometry-only (50-88) training objects are both used.
    assert {13, 16, 28, 50, 88} <= set(selected[1].object_ids)


def test_pose_train_defaults_follow_the_split(monkeypatch, tmp_path):
    captured = {}
    monkeypatch.setattr(correspondence, "train", lambda *args, **kw: captured.update(args=args))
    correspondence.main(["--out", str(tmp_path / "x.pt")])
    out, config, net_config, sample_config, bop_dirs, holdout = captured["args"][:6]
    assert bop_dirs == default_ycb_models_dirs()
    assert set(holdout) == set(TEST_YCB_IDS) | set(VALIDATION_YCB_IDS)
    assert sample_config.domain_randomization is not None
    correspondence.main(["--out", str(tmp_path / "x.pt"), "--appearance", "shipped-effl0", "--bop-models"])
    assert captured["args"][3].domain_randomization is None and captured["args"][4] == []


def test_ship_records_objects_by_split_and_moves_the_old_weights_metadata(tmp_path):
    import torch

    checkpoint = tmp_path / "run.pt"
    torch.save({"state_dict": {}, "optimizer": {"x": 1}, "step": 7, "train_config": {"num_procedural": 2},
                "log": {"wall_s": 12.0, "steps": [{"step": 7}], "training_object_ids": [1000, 1001, 1, 13, 50]}}, checkpoint)
    out = tmp_path / "models" / "net.pt"
    out.parent.mkdir()
    out.with_suffix(".json").write_text(json.dumps({"source_checkpoint": "old.pt", "evaluation": {"rows": []},
                                                    "hardware": "old cpu", "covariance_scale": {"rgb": 2.0}}))
    correspondence.ship(checkpoint, out, {"hardware": "new cpu"})
    meta = json.loads(out.with_suffix(".json").read_text())
    assert "optimizer" not in torch.load(out, weights_only=False)
    assert meta["training_objects"]["ids_by_split"] == {"train": [1000, 1001, 1, 13, 50]}
    assert meta["training_objects"]["ycb_ids"] == [1, 13, 50]
    assert meta["previous_weights"]["evaluation"] == {"rows": []} and meta["previous_weights"]["source_checkpoint"] == "old.pt"
    assert "evaluation" not in meta and meta["hardware"] == "new cpu" and meta["steps"] == 7
    assert meta["covariance_scale"] == {"rgb": 2.0} and "covariance_scale_note" in meta
