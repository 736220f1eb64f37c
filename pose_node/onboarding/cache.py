"""On-disk cache of onboarded templates, so a second start skips rendering and descriptors.

One ``<key>.npz`` per object in the cache directory. The key (:func:`onboarding_cache_key`) is a
SHA-256 over everything the templates depend on: the mesh content in metres (vertices, faces,
normals, uv, vertex colours, texture pixels), the backbone's ``cache_key`` (weights and input
options), every :class:`TemplateConfig` field and :data:`CACHE_FORMAT_VERSION`. Object ids and
names are not in the key (the same mesh under another id reuses the file; the id is set on load).
Renderer settings other than the light (which is in the config) are not in the key: only
``RenderSettings.untextured_gray`` changes templates, of meshes without texture or colours.

Files are written atomically (temporary file in the same directory, fsync, rename), so a reader
never sees half a file. A file that cannot be read or does not match its key is reported with a
warning and rebuilt; a cache directory that cannot be written only costs a warning.

Cache directory: the ``cache_dir`` argument, else ``$POSE_NODE_CACHE/onboarding``, else
``~/.cache/pose_node/onboarding``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel
from pose_node.features.backbones import Backbone
from pose_node.onboarding.templates import ObjectTemplates, TemplateConfig, onboard_object
from pose_node.render.renderer import Renderer

logger = logging.getLogger(__name__)

#: Bump when the file layout or the meaning of a stored array changes.
CACHE_FORMAT_VERSION = 1
CACHE_ENV_VAR = "POSE_NODE_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/pose_node")

_ARRAYS = ("rgb", "depth", "xyz", "mask", "K_template", "T_camera_object", "sphere_center_obj_m",
           "surface_points_obj_m", "surface_normals_obj", "descriptors")

RendererFactory = Callable[[int, int], Renderer]


class CorruptCacheFileError(InvalidInputError):
    """A cache file is unreadable, incomplete or does not match the key it is stored under."""


def default_cache_dir() -> Path:
    """``$POSE_NODE_CACHE/onboarding`` if the variable is set and non-empty, else
    ``~/.cache/pose_node/onboarding``."""
    root = os.environ.get(CACHE_ENV_VAR) or str(DEFAULT_CACHE_ROOT)
    return Path(root).expanduser() / "onboarding"


def mesh_content_hash(model: ObjectModel) -> str:
    """Hex SHA-256 of what a render of ``model`` depends on (geometry in metres and appearance)."""
    digest = hashlib.sha256()
    for name in ("vertices", "faces", "normals", "uv", "vertex_colors", "texture"):
        value = getattr(model, name)
        if value is None:
            digest.update(f"{name}:none;".encode())
            continue
        array = np.ascontiguousarray(value)
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def config_json(config: TemplateConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def onboarding_cache_key(model: ObjectModel, backbone_cache_key: str, config: TemplateConfig) -> str:
    """Hex SHA-256 over the mesh content, the backbone key, the config and the format version."""
    payload = json.dumps(
        {"format": CACHE_FORMAT_VERSION, "mesh": mesh_content_hash(model), "backbone": backbone_cache_key,
         "config": json.loads(config_json(config))},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"{key}.npz"


def save_templates(templates: ObjectTemplates, path: str | Path, key: str, *, object_name: str = "") -> None:
    """Write ``templates`` to ``path`` atomically (temporary file + fsync + rename).

    Raises:
        InvalidInputError: the templates have no descriptors.
        OSError: the directory cannot be created or written.
    """
    if templates.descriptors is None:
        raise InvalidInputError("save_templates: templates without descriptors are not cached")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CACHE_FORMAT_VERSION, "key": key, "object_id": templates.object_id, "object_name": object_name,
        "config": json.loads(config_json(templates.config)), "backbone_cache_key": templates.backbone_cache_key,
        "sphere_radius_m": templates.sphere_radius_m, "build_times_s": templates.build_times_s,
    }
    arrays = {name: getattr(templates, name) for name in _ARRAYS}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem[:16]}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the cache may be shared with other users' nodes
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# What reading a damaged or foreign .npz can raise (truncation, CRC mismatch, bad zip, missing
# member, a plain .npy instead of an archive, pickled objects refused).
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, zlib.error)


def load_templates(path: str | Path, key: str) -> ObjectTemplates:
    """Read templates written by :func:`save_templates` under ``key``.

    Raises:
        FileNotFoundError: no file.
        CorruptCacheFileError: unreadable, incomplete, another format version or key, or arrays
            that fail :class:`ObjectTemplates` validation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            arrays = {name: data[name] for name in _ARRAYS}
    except _READ_ERRORS as exc:
        raise CorruptCacheFileError(f"{path}: unreadable cache file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT_VERSION or meta.get("key") != key:
        raise CorruptCacheFileError(
            f"{path}: format {meta.get('format') if isinstance(meta, dict) else '?'} / key mismatch "
            f"(expected format {CACHE_FORMAT_VERSION}, key {key[:16]}...)"
        )
    try:
        config = meta["config"]
        config = TemplateConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        return ObjectTemplates(
            object_id=int(meta["object_id"]), config=config, sphere_radius_m=float(meta["sphere_radius_m"]),
            backbone_cache_key=str(meta["backbone_cache_key"]), build_times_s=dict(meta.get("build_times_s", {})),
            **arrays,
        )
    except (KeyError, TypeError, ValueError) as exc:  # InvalidInputError is a ValueError
        raise CorruptCacheFileError(f"{path}: inconsistent cache file ({type(exc).__name__}: {exc})") from exc


def load_or_onboard(
    model: ObjectModel,
    renderer_factory: RendererFactory,
    backbone: Backbone,
    config: TemplateConfig = TemplateConfig(),
    cache_dir: str | Path | None = None,
    *,
    batch_size: int = 32,
) -> tuple[ObjectTemplates, bool]:
    """The templates of ``model`` from the cache, or onboarded now and cached.

    Args:
        model: the object.
        renderer_factory: ``factory(S, S) -> Renderer``, called only on a cache miss (so a warm
            start creates no GL context). The renderer stays the factory's: pass a
            :class:`RendererPool` to share one renderer across objects and release it once.
        backbone: computes the descriptors; its ``cache_key`` is part of the key.
        config: template settings.
        cache_dir: None: :func:`default_cache_dir`.
        batch_size: templates per backbone call.
    Returns:
        (templates, from_cache). ``templates.object_id`` is ``model.object_id`` either way.
    Raises:
        InvalidInputError, StageUnavailableError: onboarding failed (bad model or no renderer).
        A damaged cache file or an unwritable cache directory only logs a warning.
    """
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    key = onboarding_cache_key(model, backbone.cache_key, config)
    path = cache_path(directory, key)
    try:
        templates = load_templates(path, key)
    except FileNotFoundError:
        logger.info("object %s: no cached templates (%s); onboarding", model.name, path.name)
    except CorruptCacheFileError as exc:
        logger.warning("object %s: ignoring damaged onboarding cache file, rebuilding it: %s", model.name, exc)
    else:
        logger.info("object %s: %d templates from cache %s", model.name, templates.num_templates, path)
        return dataclasses.replace(templates, object_id=model.object_id), True

    renderer = renderer_factory(config.template_size_px, config.template_size_px)
    templates = onboard_object(model, renderer, backbone, config, batch_size=batch_size)
    try:
        save_templates(templates, path, key, object_name=model.name)
    except OSError as exc:
        logger.warning("object %s: could not write the onboarding cache %s (%s); the next start onboards again",
                       model.name, path, exc)
    else:
        logger.info("object %s: cached templates in %s", model.name, path)
    return templates, False


class RendererPool:
    """A renderer factory that keeps one :class:`Renderer` per size and releases them together.

    Usage::

        with RendererPool() as pool:
            for model in models:
                templates, from_cache = load_or_onboard(model, pool, backbone, config)
    """

    def __init__(self, **renderer_kwargs) -> None:
        self._renderer_kwargs = renderer_kwargs
        self._renderers: dict[tuple[int, int], Renderer] = {}
        self.created = 0  # renderers made so far (0 after a fully cached start)

    def __call__(self, width: int, height: int) -> Renderer:
        if (width, height) not in self._renderers:
            self._renderers[(width, height)] = Renderer(width, height, **self._renderer_kwargs)
            self.created += 1
        return self._renderers[(width, height)]

    def release(self) -> None:
        for renderer in self._renderers.values():
            renderer.release()
        self._renderers.clear()

    def __enter__(self) -> RendererPool:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
