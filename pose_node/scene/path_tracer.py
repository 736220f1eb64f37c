"""Path tracing of :class:`~pose_node.scene.photoreal.PhotorealScene` views with Mitsuba 3, and their cache.

Mitsuba (``mitsuba==3.9.1``, CPU ``scalar_rgb`` variant) is imported on first render only, so the
node and the rasterized generator never load it. Scenes are built from numpy arrays in memory
(``mi.Mesh`` buffers, ``mi.Bitmap`` textures); nothing goes through files.

Camera convention. Mitsuba's perspective camera looks along +z with +x left and +y up; an OpenCV
optical frame has x right, y down, z forward, so the sensor's ``to_world`` is ``T_world_camera @
diag(-1, -1, 1, 1)``. Mitsuba pixel ``i`` covers ``[i, i + 1)`` (centre ``i + 0.5``) while OpenCV
and :mod:`pose_node.render` put pixel centres at integers, so ``u_mitsuba = u_opencv + 0.5``:
``fov`` (along x) comes from ``fx`` and the principal point offsets are
``((W - 1) / 2 - cx) / W`` and ``((H - 1) / 2 - cy) / H``
(both signs checked by ``test/scene/test_photoreal.py``). Mitsuba pixels are square (fy = fx):
when ``fy != fx`` the whole scene is stretched along the camera's y axis by ``fy / fx``
(:func:`anisotropy_warp`, a <= 1-2 % stretch for real cameras), which puts every point exactly
where ``K`` projects it, keeps depths and occlusions, and needs no resampling of the image; the
only approximation is that the lighting sees the slightly stretched scene.

Each view's linear image is cached on disk under a SHA-256 of everything that determines it
(geometry, poses, materials, lights, camera, quality, seed, Mitsuba version), stored as float16;
fresh renders go through the same float16 rounding, so a cache hit and a miss give identical bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.geometry import invert_rigid
from pose_node.core.types import Camera, ObjectModel
from pose_node.onboarding.cache import mesh_content_hash
from pose_node.scene.photoreal import LightSetup, PhotorealScene, PhotorealShape, RenderQuality, SurfaceMaterial
from pose_node.scene.sensor_model import luminance, srgb_decode

logger = logging.getLogger(__name__)

MITSUBA_VARIANT = "scalar_rgb"
#: Bump when the cached arrays or the key's meaning change.
RENDER_CACHE_VERSION = 2


def _array_digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def view_cache_key(scene: PhotorealScene, camera: Camera, quality: RenderQuality, seed: int, mitsuba_version: str,
                   mesh_hashes: dict[int, tuple[ObjectModel, str]] | None = None) -> str:
    """Hex SHA-256 over everything that determines a view's linear render.

    Args:
        mesh_hashes: memo of :func:`mesh_content_hash` by ``id(model)`` (filled in; hashing large
            textures per view would be slow). It holds the model too, so an id is never reused.
    """
    memo = {} if mesh_hashes is None else mesh_hashes
    shapes = []
    for shape in scene.shapes:
        if id(shape.model) not in memo:
            memo[id(shape.model)] = (shape.model, mesh_content_hash(shape.model))
        shapes.append({"mesh": memo[id(shape.model)][1], "T": np.round(shape.T_world_object, 12).tolist(),
                       "material": asdict(shape.material), "label": shape.label})
    lights = scene.lights
    payload = {
        "version": RENDER_CACHE_VERSION, "mitsuba": mitsuba_version, "variant": MITSUBA_VARIANT, "quality": asdict(quality),
        "seed": int(seed), "shapes": shapes,
        "lights": {"environment": _array_digest(lights.environment), "yaw": lights.environment_yaw_deg,
                   "local": [asdict(light) for light in lights.lights]},
        "camera": {"K": np.round(camera.K, 12).tolist(), "size": [camera.width, camera.height],
                   "T_world_camera": np.round(camera.T_world_camera, 12).tolist()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class RenderCache:
    """One compressed ``<key>.npz`` per view (``linear`` float16 (H, W, 3), ``labels`` int16 (H, W),
    ``albedo`` float16 (H, W)); atomic writes (a killed run leaves no partial entry)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        path = self.directory / f"{key}.npz"
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path) as data:
                arrays = data["linear"], data["labels"], data["albedo"]
        except (OSError, ValueError, KeyError) as exc:  # a truncated or foreign file: render again
            logger.warning("render cache: ignoring unreadable %s (%s)", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return arrays

    def store(self, key: str, linear: np.ndarray, labels: np.ndarray, albedo: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, linear=linear, labels=labels.astype(np.int16), albedo=albedo)
            os.replace(tmp, self.directory / f"{key}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------------------------
# Mitsuba
# ---------------------------------------------------------------------------------------------


def _mitsuba():
    try:
        import mitsuba as mi
    except ImportError as exc:
        raise StageUnavailableError("photoreal rendering needs mitsuba (pip install mitsuba==3.9.1)") from exc
    if mi.variant() != MITSUBA_VARIANT:
        mi.set_variant(MITSUBA_VARIANT)
    return mi


#: OpenCV optical frame (x right, y down) -> Mitsuba camera frame (x left, y up); z is shared.
OPENCV_TO_MITSUBA_CAMERA = np.diag([-1.0, -1.0, 1.0, 1.0])


def anisotropy_warp(camera: Camera) -> np.ndarray:
    """(4, 4) world-space stretch that lets a square-pixel camera of focal fx render a camera with fy != fx.

    ``W = T_world_camera @ diag(1, fy / fx, 1, 1) @ T_camera_world``: a point at camera
    coordinates (x, y, z) moves to (x, y fy / fx, z) and projects with focal fx to row
    ``cy + fy y / z``, exactly where ``K`` puts it; depths and occlusions are unchanged. Identity
    when fx == fy.
    """
    fx, fy = camera.K[0, 0], camera.K[1, 1]
    if fx == fy:
        return np.eye(4)
    T = camera.T_world_camera
    return T @ np.diag([1.0, fy / fx, 1.0, 1.0]) @ invert_rigid(T)


def mitsuba_sensor_dict(camera: Camera, spp: int, *, jitter: bool = True) -> dict:
    """A Mitsuba ``perspective`` sensor matching ``camera`` (module docstring), square pixels of focal fx.

    Args:
        camera: OpenCV camera (K pixels, pixel centres at integers; ``T_world_camera`` metres).
            fy is taken into account by :func:`anisotropy_warp` of the scene, not here.
        spp: samples per pixel. jitter: False puts the samples at stratum centres (spp must be a
            power of 4; with spp = 1: exactly the pixel centre, as a rasterizer samples).
    """
    W, H = camera.width, camera.height
    K = camera.K
    return {
        "type": "perspective",
        "fov_axis": "x",
        "fov": float(np.degrees(2.0 * np.arctan(W / (2.0 * K[0, 0])))),
        "principal_point_offset_x": float(((W - 1) / 2.0 - K[0, 2]) / W),
        "principal_point_offset_y": float(((H - 1) / 2.0 - K[1, 2]) / H),
        "near_clip": 0.01,
        "far_clip": 100.0,
        "to_world": _mitsuba().ScalarTransform4f(camera.T_world_camera @ OPENCV_TO_MITSUBA_CAMERA),
        "film": {"type": "hdrfilm", "width": W, "height": H, "rfilter": {"type": "box"}, "pixel_format": "rgb"},
        # Pixel-centre sampling: a 1-sample stratified sampler without jitter; otherwise independent samples.
        "sampler": ({"type": "independent", "sample_count": int(spp)} if jitter else
                    {"type": "stratified", "sample_count": int(spp), "jitter": False}),
    }


def _base_colour(mi, model: ObjectModel, material: SurfaceMaterial) -> tuple[dict, np.ndarray | None]:
    """The ``base_color`` texture dict, and the (N, 3) linear vertex colours it reads (or None)."""
    if model.texture is not None and model.uv is not None:
        # Mitsuba's bitmap puts v = 0 at the first (top) image row; ObjectModel.uv has v = 0 at the bottom.
        linear = srgb_decode(np.asarray(model.texture)[::-1] / 255.0) * material.brightness
        return {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(linear, np.float32)), "raw": True}, None
    if model.vertex_colors is not None:
        colours = srgb_decode(np.asarray(model.vertex_colors) / 255.0) * material.brightness
        return {"type": "mesh_attribute", "name": "vertex_color"}, np.ascontiguousarray(colours, np.float32)
    return {"type": "rgb", "value": [c * material.brightness for c in material.colour]}, None


class _MitsubaShape:
    """A ``mi.Mesh`` of one :class:`PhotorealShape` whose vertices can be re-posed by a world warp."""

    def __init__(self, mi, shape: PhotorealShape, name: str) -> None:
        model, m = shape.model, shape.material
        textured = model.texture is not None and model.uv is not None
        base_color, vertex_colours = _base_colour(mi, model, m)
        principled = {"type": "principled", "base_color": base_color, "roughness": m.roughness, "specular": m.specular,
                      "metallic": m.metallic}
        props = mi.Properties()
        # Two-sided: scanned meshes often have inconsistent winding; closed meshes never show their inside.
        props["bsdf"] = mi.load_dict({"type": "twosided", "material": principled})
        self.mesh = mi.Mesh(name, len(model.vertices), len(model.faces), props=props, has_vertex_normals=True,
                            has_vertex_texcoords=textured)
        self.label = shape.label
        T = np.asarray(shape.T_world_object, np.float64)
        # Vertices go in world coordinates: a Mesh built from Python has no to_world of its own.
        self._p_world = np.asarray(model.vertices, np.float64) @ T[:3, :3].T + T[:3, 3]
        self._n_world = np.asarray(model.normals, np.float64) @ T[:3, :3].T
        params = mi.traverse(self.mesh)
        params["faces"] = np.ascontiguousarray(model.faces, np.uint32).ravel()
        if textured:
            params["vertex_texcoords"] = np.ascontiguousarray(model.uv, np.float32).ravel()
        params.update()
        if vertex_colours is not None:
            self.mesh.add_attribute("vertex_color", 3, vertex_colours.ravel())
        self._warp = None
        self.set_warp(mi, np.eye(4))

    def set_warp(self, mi, warp: np.ndarray) -> None:
        """Place the vertices at ``warp @ p_world`` (normals by the inverse transpose)."""
        if self._warp is not None and np.array_equal(warp, self._warp):
            return
        A = warp[:3, :3]
        normals = self._n_world @ np.linalg.inv(A)  # rows: (A^-T n)^T
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        params = mi.traverse(self.mesh)
        params["vertex_positions"] = np.ascontiguousarray(self._p_world @ A.T + warp[:3, 3], np.float32).ravel()
        params["vertex_normals"] = np.ascontiguousarray(normals, np.float32).ravel()
        params.update()
        self._warp = warp.copy()


def _emitter_dicts(mi, lights: LightSetup, warp: np.ndarray) -> dict:
    """Mitsuba emitters of ``lights``, local lights moved by ``warp`` (see :func:`anisotropy_warp`)."""
    # Lat-long maps are +y up in Mitsuba: rotate local +y onto world +z, then about z.
    yaw = np.deg2rad(lights.environment_yaw_deg)
    Rz = np.array([[np.cos(yaw), -np.sin(yaw), 0, 0], [np.sin(yaw), np.cos(yaw), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    y_up_to_z_up = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    out = {"environment": {"type": "envmap", "bitmap": mi.Bitmap(np.ascontiguousarray(lights.environment, np.float32)),
                           "to_world": mi.ScalarTransform4f(Rz @ y_up_to_z_up)}}
    for i, light in enumerate(lights.lights):
        rgb = {"type": "rgb", "value": list(light.rgb)}
        position = warp[:3, :3] @ np.asarray(light.position_m, float) + warp[:3, 3]
        target = warp[:3, :3] @ np.asarray(light.target_m, float) + warp[:3, 3]
        if light.kind == "point":
            out[f"light_{i}"] = {"type": "point", "position": position.tolist(), "intensity": rgb}
            continue
        direction = target - position
        up = [0.0, 0.0, 1.0] if np.linalg.norm(np.cross(direction, [0.0, 0.0, 1.0])) > 1e-6 * np.linalg.norm(direction) else [1.0, 0.0, 0.0]
        look = np.asarray(mi.ScalarTransform4f().look_at(origin=position.tolist(), target=target.tolist(), up=up).matrix)
        if light.kind == "spot":
            out[f"light_{i}"] = {"type": "spot", "to_world": mi.ScalarTransform4f(look), "intensity": rgb,
                                 "cutoff_angle": light.cutoff_deg, "beam_width": 0.75 * light.cutoff_deg}
        elif light.kind == "area":
            # A rectangle is [-1, 1]^2 in its xy plane, emitting along +z: look_at points +z at the target.
            scale = np.diag([light.size_m[0] / 2.0, light.size_m[1] / 2.0, 1.0, 1.0])
            out[f"light_{i}"] = {"type": "rectangle", "to_world": mi.ScalarTransform4f(look @ scale),
                                 "emitter": {"type": "area", "radiance": rgb}}
        else:
            raise InvalidInputError(f"Light.kind: expected 'area', 'point' or 'spot', got {light.kind!r}")
    return out


@dataclass(frozen=True)
class PhotorealRender:
    """A path-traced view.

    Attributes:
        linear: (H, W, 3) float32 linear radiance (float16 precision).
        labels: (H, W) int32 label of the shape seen through each pixel centre (0 = none).
        albedo: (H, W) float32 diffuse albedo (luminance) at each pixel centre (float16 precision).
        cached: the render came from the cache.
        seconds: wall time of the render (0 for a cache hit).
    """

    linear: np.ndarray
    labels: np.ndarray
    albedo: np.ndarray
    cached: bool
    seconds: float


class PathTracer:
    """Renders views of :class:`PhotorealScene` s with Mitsuba, through the on-disk cache.

    Mitsuba meshes and textures of a scene are built once and reused while the same shapes are
    rendered (frames and views of a static scene); only their vertices move per camera when fx != fy.
    """

    def __init__(self, quality: RenderQuality, cache_dir: Path | None) -> None:
        self.quality = quality
        self.cache = None if cache_dir is None else RenderCache(cache_dir)
        self._mesh_hashes: dict[int, tuple[ObjectModel, str]] = {}
        self._shapes_key: tuple | None = None
        self._shapes_source: tuple[PhotorealShape, ...] = ()  # keeps the models of _shapes_key (their ids) alive
        self._shapes: dict[str, _MitsubaShape] = {}

    def _scene_shapes(self, mi, shapes: tuple[PhotorealShape, ...]) -> dict[str, _MitsubaShape]:
        key = tuple((id(s.model), s.label, s.material, np.asarray(s.T_world_object).tobytes()) for s in shapes)
        if key != self._shapes_key:
            self._shapes = {f"shape_{i}": _MitsubaShape(mi, shape, f"shape_{i}") for i, shape in enumerate(shapes)}
            self._shapes_key = key
            self._shapes_source = shapes
        return self._shapes

    def render(self, scene: PhotorealScene, camera: Camera, seed: int) -> PhotorealRender:
        """Path-trace one view (or load it from the cache).

        Args:
            scene: shapes and lights. camera: OpenCV camera (no skew). seed: Mitsuba sample seed.
        Raises:
            InvalidInputError: the camera has skew.
            StageUnavailableError: mitsuba is not installed.
        """
        mi = _mitsuba()
        if abs(camera.K[0, 1]) > 1e-12:
            raise InvalidInputError(f"photoreal: cameras with skew are not supported, got K[0, 1] = {camera.K[0, 1]}")
        current = {id(shape.model) for shape in scene.shapes}  # forget earlier scenes' models (memory)
        self._mesh_hashes = {k: v for k, v in self._mesh_hashes.items() if k in current}
        key = view_cache_key(scene, camera, self.quality, seed, mi.__version__, self._mesh_hashes)
        if self.cache is not None:
            hit = self.cache.load(key)
            if hit is not None:
                return PhotorealRender(hit[0].astype(np.float32), hit[1].astype(np.int32), hit[2].astype(np.float32), True, 0.0)
        started = time.perf_counter()
        shapes = self._scene_shapes(mi, scene.shapes)
        warp = anisotropy_warp(camera)
        for shape in shapes.values():
            shape.set_warp(mi, warp)
        scene_dict = {"type": "scene", **{name: shape.mesh for name, shape in shapes.items()},
                      **_emitter_dicts(mi, scene.lights, warp)}
        beauty = mi.load_dict({**scene_dict, "sensor": mitsuba_sensor_dict(camera, self.quality.spp),
                               "integrator": {"type": "path", "max_depth": self.quality.max_depth}})
        linear = np.array(mi.render(beauty, seed=int(seed)), dtype=np.float32)
        aov = mi.load_dict({**scene_dict, "sensor": mitsuba_sensor_dict(camera, 1, jitter=False),
                            "integrator": {"type": "aov", "aovs": "index:shape_index,albedo:albedo"}})
        aov_image = np.array(mi.render(aov), dtype=np.float32)
        index = np.rint(aov_image[..., 0]).astype(np.int64)
        albedo = luminance(aov_image[..., 1:4]).astype(np.float16)
        # shape_index is the position in scene.shapes() + 1 (0 = no hit); map it to the rasterizer's labels.
        lookup = np.zeros(len(aov.shapes()) + 1, np.int32)
        for i, s in enumerate(aov.shapes()):
            lookup[i + 1] = shapes[s.id()].label if s.id() in shapes else 0
        labels = lookup[np.clip(index, 0, len(lookup) - 1)]
        linear = linear.astype(np.float16)
        seconds = time.perf_counter() - started
        logger.debug("path-traced %dx%d at %d spp in %.1f s", camera.width, camera.height, self.quality.spp, seconds)
        if self.cache is not None:
            self.cache.store(key, linear, labels, albedo)
        return PhotorealRender(linear.astype(np.float32), labels, albedo.astype(np.float32), False, seconds)
