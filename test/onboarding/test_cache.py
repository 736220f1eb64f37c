"""Onboarding cache: keys, warm starts with identical arrays, damaged files, the pose_onboard CLI."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from pose_node.core.errors import StageUnavailableError
from pose_node.features import BackboneConfig, create_backbone
from pose_node.onboarding import cli
from pose_node.onboarding.cache import (
    CACHE_ENV_VAR,
    CorruptCacheFileError,
    RendererPool,
    cache_path,
    default_cache_dir,
    load_or_onboard,
    load_templates,
    onboarding_cache_key,
)
from pose_node.onboarding.procedural import make_procedural_object
from pose_node.onboarding.templates import TemplateConfig

CONFIG = TemplateConfig(template_size_px=32, num_surface_points=128)
ARRAYS = ("rgb", "depth", "xyz", "mask", "K_template", "T_camera_object", "sphere_center_obj_m",
          "surface_points_obj_m", "surface_normals_obj", "descriptors")


@pytest.fixture(scope="module")
def pool():
    with RendererPool() as pool:
        try:
            pool(CONFIG.template_size_px, CONFIG.template_size_px).gl_renderer
        except StageUnavailableError as exc:
            pytest.skip(f"headless OpenGL unavailable: {exc}")
        yield pool


class CountingFactory:
    """A renderer factory that records how often onboarding asked for a renderer."""

    def __init__(self, pool: RendererPool) -> None:
        self.pool = pool
        self.calls = 0

    def __call__(self, width: int, height: int):
        self.calls += 1
        return self.pool(width, height)


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(BackboneConfig())


@pytest.fixture(scope="module")
def model():
    return make_procedural_object(3, seed=21, target_faces=800, shape="box")


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory, model, pool, backbone):
    """A cache directory holding ``model``'s templates; (dir, templates built, build seconds)."""
    cache_dir = tmp_path_factory.mktemp("onboarding")
    factory = CountingFactory(pool)
    started = time.perf_counter()
    templates, from_cache = load_or_onboard(model, factory, backbone, CONFIG, cache_dir)
    elapsed = time.perf_counter() - started
    assert not from_cache and factory.calls == 1
    return cache_dir, templates, elapsed


def _assert_same_templates(a, b):
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.config == b.config and a.backbone_cache_key == b.backbone_cache_key
    assert a.sphere_radius_m == b.sphere_radius_m and a.object_id == b.object_id


def test_second_start_comes_from_the_cache(warm_cache, model, pool, backbone):
    cache_dir, built, build_s = warm_cache
    key = onboarding_cache_key(model, backbone.cache_key, CONFIG)
    assert cache_path(cache_dir, key).is_file()
    assert [p.name for p in cache_dir.iterdir()] == [f"{key}.npz"]  # no temporary file left
    factory = CountingFactory(pool)
    started = time.perf_counter()
    loaded, from_cache = load_or_onboard(model, factory, backbone, CONFIG, cache_dir)
    load_s = time.perf_counter() - started
    assert from_cache and factory.calls == 0  # a warm start needs no renderer
    _assert_same_templates(loaded, built)
    assert load_s < 0.25 * build_s, (load_s, build_s)
    assert loaded.build_times_s.keys() == {"render", "surface", "descriptors"}


def test_same_mesh_under_another_id_reuses_the_file(warm_cache, model, pool, backbone):
    cache_dir, built, _ = warm_cache
    renamed = dataclasses.replace(model, object_id=42, name="renamed")
    loaded, from_cache = load_or_onboard(renamed, CountingFactory(pool), backbone, CONFIG, cache_dir)
    assert from_cache and loaded.object_id == 42
    np.testing.assert_array_equal(loaded.descriptors, built.descriptors)


def test_key_depends_on_mesh_backbone_and_settings(model, backbone):
    key = onboarding_cache_key(model, backbone.cache_key, CONFIG)
    assert len(key) == 64 and key == onboarding_cache_key(model, backbone.cache_key, CONFIG)
    assert key == onboarding_cache_key(dataclasses.replace(model, object_id=9, name="x"), backbone.cache_key, CONFIG)

    moved = model.vertices.copy()
    moved[0, 0] += 1e-6
    texture = model.texture.copy()
    texture[0, 0, 0] ^= 1
    changed_models = [
        dataclasses.replace(model, vertices=moved),
        dataclasses.replace(model, faces=model.faces[:, [0, 2, 1]].copy()),
        dataclasses.replace(model, texture=texture),
        dataclasses.replace(model, uv=model.uv * 0.5),
        dataclasses.replace(model, texture=None, uv=None),
    ]
    keys = {key}
    for changed in changed_models:
        keys.add(onboarding_cache_key(changed, backbone.cache_key, CONFIG))
    keys.add(onboarding_cache_key(model, backbone.cache_key.replace("efficientnet_lite0", "dinov2_vits14"), CONFIG))
    for field, value in [("num_viewpoints", 162), ("in_plane_rotations", 2), ("template_size_px", 64),
                         ("distance_diameters", 2.5), ("crop_margin_fraction", 0.1), ("light_dir_cam", (0, 1, 1)),
                         ("background_rgb", (255, 255, 255)), ("num_surface_points", 64)]:
        keys.add(onboarding_cache_key(model, backbone.cache_key, dataclasses.replace(CONFIG, **{field: value})))
    assert len(keys) == 1 + len(changed_models) + 1 + 8
    # Equal settings written differently are the same key.
    assert key == onboarding_cache_key(model, backbone.cache_key, dataclasses.replace(CONFIG, light_dir_cam=(0, 0, 1)))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all" * 100)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a compressed member: CRC or inflate error
    path.write_bytes(bytes(data))


def _drop_member(path: Path) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "descriptors"}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _plain_npy(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


@pytest.mark.parametrize("damage", [_truncate, _garbage, _flip_byte, _drop_member, _plain_npy])
def test_damaged_files_are_detected(tmp_path, model, backbone, warm_cache, damage):
    cache_dir, _, _ = warm_cache
    key = onboarding_cache_key(model, backbone.cache_key, CONFIG)
    path = cache_path(tmp_path, key)
    path.write_bytes(cache_path(cache_dir, key).read_bytes())
    load_templates(path, key)  # the intact copy reads
    damage(path)
    with pytest.raises(CorruptCacheFileError, match=path.name):
        load_templates(path, key)


def test_damaged_file_is_rebuilt_with_a_warning(tmp_path, model, pool, backbone, warm_cache, caplog):
    cache_dir, built, _ = warm_cache
    key = onboarding_cache_key(model, backbone.cache_key, CONFIG)
    path = cache_path(tmp_path, key)
    path.write_bytes(cache_path(cache_dir, key).read_bytes())
    _truncate(path)
    factory = CountingFactory(pool)
    with caplog.at_level(logging.WARNING, logger="pose_node.onboarding.cache"):
        rebuilt, from_cache = load_or_onboard(model, factory, backbone, CONFIG, tmp_path)
    assert not from_cache and factory.calls == 1
    assert any("damaged" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    _assert_same_templates(load_templates(path, key), rebuilt)  # the file is whole again
    np.testing.assert_allclose(rebuilt.descriptors, built.descriptors, atol=1e-5)
    again, from_cache = load_or_onboard(model, factory, backbone, CONFIG, tmp_path)
    assert from_cache and factory.calls == 1


def test_file_under_another_key_is_not_trusted(tmp_path, model, backbone, warm_cache):
    cache_dir, _, _ = warm_cache
    source = cache_path(cache_dir, onboarding_cache_key(model, backbone.cache_key, CONFIG))
    other_key = onboarding_cache_key(model, backbone.cache_key, dataclasses.replace(CONFIG, crop_margin_fraction=0.2))
    copied = cache_path(tmp_path, other_key)
    copied.write_bytes(source.read_bytes())  # e.g. a hand-copied or renamed file
    with pytest.raises(CorruptCacheFileError, match="key mismatch"):
        load_templates(copied, other_key)


def test_unwritable_cache_only_warns(tmp_path, model, pool, backbone, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="pose_node.onboarding.cache"):
        templates, from_cache = load_or_onboard(model, CountingFactory(pool), backbone, CONFIG, blocker)
    assert not from_cache and templates.descriptors is not None
    assert any("could not write" in r.getMessage() for r in caplog.records)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "onboarding"
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pose_node" / "onboarding"


def test_cli_reports_onboarding_then_cache(tmp_path, capsys):
    argv = ["--procedural", "1", "--procedural-faces", "500", "--template-size", "32", "--cache-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "onboarded: render" in first and "descriptors" in first
    assert cli.main(argv) == 0
    second = capsys.readouterr().out
    assert "from cache" in second and "onboarded" not in second
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "part.obj").write_text("v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nf 1 2 3\n")
    assert cli.main(["--models", str(tmp_path), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "--units" in capsys.readouterr().err
    assert cli.main(["--models", str(tmp_path / "missing"), "--units", "m"]) == 2
    assert "not a directory" in capsys.readouterr().err
