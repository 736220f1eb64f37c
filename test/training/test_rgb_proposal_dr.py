"""Domain-randomized training images of the RGB proposal head (:mod:`pose_node.training.rgb_proposal_dr`):
the split rule (never a validation or test object), seeded camera effects, what counts as foreground,
and the trainer's use of the generated set and of BOP folders."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.datasets.splits import TEST_YCB_IDS, check_not_test_set, default_ycb_models_dirs, split_of_object_id
from pose_node.onboarding.procedural import make_procedural_objects
from pose_node.scene.clutter import ClutterConfig
from pose_node.training import rgb_proposal_dr as dr
from pose_node.training import rgb_proposals as trainer

# Small images and few views keep each render well under a second.
SMALL = dr.DrWorkcellConfig(num_workcells=1, scenes_per_workcell=1, num_cameras=2, width_px=192, height_px=144,
                                     objects_range=(3, 4), ycb_share=0.0, ycb_models_dirs=(), table_texture_px=64)
REAL_YCB_DIRS = tuple(str(d) for d in default_ycb_models_dirs(Path(__file__).resolve().parents[2]))
if not REAL_YCB_DIRS:  # a worktree beside the main checkout: the data sits next to the main checkout
    REAL_YCB_DIRS = tuple(str(p) for p in (Path("/work/shared/data/ycb_dev/models"), Path("/work/shared/data/ycb_train/models"))
                          if (p / "models_info.json").is_file())


def _fake_models_dir(tmp_path: Path, ids) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "models_info.json").write_text(json.dumps({str(i): {"diameter": 100.0} for i in ids}))
    return folder


# --------------------------------------------------------------------------------------------
# Split rule
# --------------------------------------------------------------------------------------------


def test_sources_hold_only_training_ids(tmp_path):
    folder = _fake_models_dir(tmp_path, [1, 2, 14, 15, 16, 50, 52, 58, 70])
    sources = dr.training_ycb_sources(replace(SMALL, ycb_models_dirs=(str(folder),)))
    assert sources == [(folder, (1, 16, 50, 70))]


def test_object_draw_never_requests_held_out_ids(tmp_path, monkeypatch):
    """Over many workcells, the loader is only ever asked for training-split ids."""
    import pose_node.onboarding.mesh_loading as mesh_loading

    every_id = sorted(set(range(1, 29)) | set(range(50, 89)))
    folder = _fake_models_dir(tmp_path, every_id)
    requested: list[int] = []

    def fake_load(models_dir, *, object_ids=None, names=None):
        requested.extend(object_ids)
        return [replace(m, object_id=i) for m, i in zip(make_procedural_objects(len(object_ids), 1), object_ids)]

    monkeypatch.setattr(mesh_loading, "load_bop_models", fake_load)
    config = replace(SMALL, ycb_share=1.0, objects_range=(3, 8), ycb_models_dirs=(str(folder),))
    sources = dr.training_ycb_sources(config)
    for index in range(40):
        dr._load_objects(config, index, np.random.default_rng(index), sources)
    assert len(set(requested)) > 20  # the draw does cover the folder
    assert {split_of_object_id(i) for i in requested} == {"train"}


def test_procedural_objects_use_the_training_seed_block():
    models = dr._load_objects(SMALL, 7, np.random.default_rng(0), [])
    assert {split_of_object_id(m.object_id) for m in models} == {"train"}


@pytest.mark.skipif(not REAL_YCB_DIRS, reason="YCB model folders missing")
def test_real_meshes_workcell_has_only_training_objects():
    config = replace(SMALL, ycb_share=1.0, ycb_models_dirs=REAL_YCB_DIRS)
    images = dr.generate_workcell_images(config, 3)
    ids = {i for image in images for i in image.object_ids if i != 0}
    assert ids and all(i < 1000 for i in ids)
    assert {split_of_object_id(i) for i in ids} == {"train"}


# --------------------------------------------------------------------------------------------
# Camera effects, labels, foreground
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_and_dr():
    plain_config = replace(SMALL, camera=None)
    return (dr.generate_workcell_images(plain_config, 0), dr.generate_workcell_images(SMALL, 0),
            dr.generate_workcell_images(SMALL, 0))


def test_camera_effects_change_pixels_not_labels(plain_and_dr):
    plain, randomized, _ = plain_and_dr
    assert len(plain) == len(randomized) == SMALL.num_cameras
    for a, b in zip(plain, randomized):
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.object_ids == b.object_ids
        assert (a.labels > 0).any() and (a.labels == 0).any()
        diff = np.abs(a.rgb.astype(np.int16) - b.rgb.astype(np.int16))
        # Exposure, white balance, noise, blur and JPEG move most pixels by several levels.
        assert diff.mean() > 5.0 and (diff > 3).mean() > 0.5


def test_camera_effects_are_seeded(plain_and_dr):
    _, first, again = plain_and_dr
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.rgb, b.rgb)
    other = dr.generate_workcell_images(replace(SMALL, first_seed=SMALL.first_seed + 1), 0)
    assert not np.array_equal(other[0].rgb, first[0].rgb)


def test_finish_image_plain_and_strong_camera():
    rng_image = np.full((48, 64, 3), 128, np.uint8)
    plain = dr.finish_image(rng_image, replace(SMALL, camera=None, plain_noise_sigma=0.0), np.random.default_rng(0))
    np.testing.assert_array_equal(plain, rng_image)
    a = dr.finish_image(rng_image, SMALL, np.random.default_rng(1))
    b = dr.finish_image(rng_image, SMALL, np.random.default_rng(1))
    assert a.shape == rng_image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.6])
def test_light_pool_gain_range(strength):
    gain = dr.light_pool_gain(np.random.default_rng(0), 30, 40, strength)
    assert gain.shape == (30, 40)
    assert gain.min() >= 1.0 - strength - 1e-5 and gain.max() <= 1.0 + 2.0 * strength + 1e-5


def test_distractors_are_foreground_only_when_configured():
    config = replace(SMALL, clutter=ClutterConfig(num_distractors=(4, 4)), room_probability=1.0)
    with_distractors = dr.generate_workcell_images(config, 2)
    without = dr.generate_workcell_images(replace(config, distractors_are_foreground=False), 2)
    n_objects = sum(1 for i in without[0].object_ids)
    assert 0 not in without[0].object_ids
    assert with_distractors[0].object_ids[:n_objects] == without[0].object_ids
    assert with_distractors[0].object_ids.count(0) >= 1  # some of the four found a free spot
    for a, b in zip(with_distractors, without):
        # Objects keep their labels; distractor pixels are background only without the option.
        np.testing.assert_array_equal(np.where(a.labels <= n_objects, a.labels, 0), b.labels)
        assert (a.labels > 0).sum() >= (b.labels > 0).sum()


@pytest.mark.parametrize("name, value", [("num_workcells", 0), ("ycb_share", 1.5), ("objects_range", (0, 3)),
                                         ("light_pool_strength_range", (0.2, 1.0)), ("room_probability", -0.1)])
def test_bad_config_raises_naming_the_field(name, value):
    with pytest.raises(InvalidInputError, match=name):
        replace(SMALL, **{name: value})


# --------------------------------------------------------------------------------------------
# The trainer on generated sets and BOP folders
# --------------------------------------------------------------------------------------------


def test_generated_set_round_trips_into_training_targets(tmp_path):
    config = replace(SMALL, num_workcells=2)
    root = dr.generate_dr_split(config, tmp_path)
    assert dr.is_dr_split(root) and dr.generate_dr_split(config, tmp_path) == root  # cached
    samples = list(trainer.iter_split(root))
    assert len(samples) == 2 * SMALL.num_cameras
    direct = dr.generate_workcell_images(config, 0)
    for sample, image in zip(samples, direct):
        np.testing.assert_array_equal(sample.rgb, image.rgb)
        assert len(sample.masks_visib) == image.labels.max()
        np.testing.assert_array_equal(np.any(sample.masks_visib, 0), image.labels > 0)
        fg, _ = trainer.stride_targets(sample.masks_visib, SMALL.height_px, SMALL.width_px, 4)
        assert fg.sum() == pytest.approx((image.labels > 0).sum() / 16, rel=1e-4)


def test_threshold_selection_set_refuses_the_test_split(tmp_path):
    def check_selection_set(folder):  # as pose_train_rgb_proposals --select-on calls it
        check_not_test_set(folder, f"select thresholds on {folder}")

    models = _fake_models_dir(tmp_path, [14, 2000])
    check_selection_set(tmp_path)  # validation objects: allowed
    (tmp_path / "ood_set.json").write_text(json.dumps({"split": "test"}))
    with pytest.raises(InvalidInputError, match="test split"):
        check_selection_set(tmp_path)
    (tmp_path / "ood_set.json").unlink()
    (models / "models_info.json").write_text(json.dumps({"14": {}, str(TEST_YCB_IDS[0]): {}}))
    with pytest.raises(InvalidInputError, match=str(TEST_YCB_IDS[0])):
        check_selection_set(tmp_path)


def test_cli_options_for_eval_folders(tmp_path):
    (tmp_path / "test").mkdir()
    args = trainer._parse(["--train-data", "dr", "--eval-bop", f"ood_val={tmp_path}", "--select-on", "ood_val"])
    assert args.eval_bop == {"ood_val": tmp_path} and args.train_data == "dr"
    assert trainer._parse([]).train_data == "plain"  # the original head's command is unchanged
    for bad in (["--eval-bop", "val=" + str(tmp_path)], ["--eval-bop", str(tmp_path)], ["--select-on", "ood_val"]):
        with pytest.raises(SystemExit):
            trainer._parse(bad)


@pytest.mark.parametrize("name", sorted(trainer.DR_ABLATIONS))
def test_each_ablation_is_a_valid_config_that_differs(name):
    assert trainer._parse(["--train-data", "dr", "--dr-ablate", name]).dr_ablate == [name]
    full = dr.DrWorkcellConfig()
    ablated = replace(full, **trainer.DR_ABLATIONS[name])
    assert ablated != full and ablated.key() != full.key()
