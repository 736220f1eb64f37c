"""Headless OpenGL renderer: RGB, metric depth, object coordinates (XYZ) and instance masks.

OpenGL runs through EGL with moderngl (a standalone context, no display): Mesa llvmpipe on a CPU
machine, the GPU on a robot. numpy in, numpy out.

Conventions:
- Cameras are OpenCV pinhole cameras: optical frame x right, y down, z forward; ``K`` in pixels
  with pixel centres at integer coordinates. A point projecting with ``K`` to ``(u, v)`` lands in
  pixel ``(round(u), round(v))``: :func:`opengl_projection_from_K` maps it to window coordinates
  ``(u + 0.5, v + 0.5)`` (GL pixel centres sit at half-integers) and does not flip y, so
  framebuffer row ``r`` holds image row ``r`` and the readback needs no flip.
- ``depth`` is metric z along the optical axis (not NDC depth); ``xyz`` are object-frame
  coordinates in metres; ``instance`` is the index into the ``objects`` argument + 1, 0 = none.
- Texture coordinates follow OpenGL (v = 0 at the bottom row of the texture image).

Batching: the V views of one call are stacked in one tall framebuffer (view i in rows
``[i*H, (i+1)*H)``) and drawn with one instanced draw per object (instance = view, clip distances
keep each view inside its rows); every output is read back once per pass. Only the requested
outputs are rendered and read back: readback dominates on llvmpipe.
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import trimesh

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.types import ObjectModel
from pose_node.render.context import create_egl_context
from pose_node.render.shaders import (
    FRAGMENT_SHADER,
    INSTANCE_ATTRIBUTES,
    INSTANCE_FLOATS,
    INSTANCE_FORMAT,
    VERTEX_ATTRIBUTES,
    VERTEX_FORMAT,
    VERTEX_SHADER,
)

logger = logging.getLogger(__name__)

OUTPUT_NAMES: tuple[str, ...] = ("rgb", "depth", "xyz", "instance")

#: Instance ids are stored in an 8-bit channel (0 = background).
MAX_OBJECTS_PER_RENDER = 255

_GL_CLIP_DISTANCE0 = 0x3000


@dataclass(frozen=True)
class RenderSettings:
    """Lighting, clipping and batching of :class:`Renderer`.

    Attributes:
        ambient: ambient light intensity (1 = full albedo).
        diffuse: Lambert intensity of the directional light.
        light_dir_cam: direction the light *travels* in the camera frame (x right, y down, z
            forward); the default comes from above-right of the camera, towards the scene.
        background_rgb: colour of pixels without an object.
        near_m, far_m: clipping distances along z, metres.
        untextured_gray: albedo in [0, 1] of meshes with neither texture nor vertex colours.
        cull_back_faces: skip triangles facing away from the camera (up to 2x faster on small
            images, where triangle setup dominates). None: per object, only for meshes that are
            closed with consistent winding (the side facing outwards is found from the signed
            volume); True: for every object, assuming counter-clockwise outward faces; False: never.
        max_pixels_per_pass: framebuffer budget; larger batches render in several passes.
        egl_device_index: EGL device to render on (None: the first one, or the
            ``GLCONTEXT_DEVICE_INDEX`` environment variable).
    """

    ambient: float = 0.35
    diffuse: float = 0.65
    light_dir_cam: tuple[float, float, float] = (-0.3, 0.5, 1.0)
    background_rgb: tuple[int, int, int] = (0, 0, 0)
    near_m: float = 0.01
    far_m: float = 10.0
    untextured_gray: float = 0.7
    cull_back_faces: bool | None = None
    max_pixels_per_pass: int = 1 << 22
    egl_device_index: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.near_m < self.far_m:
            raise InvalidInputError(f"RenderSettings: need 0 < near_m < far_m, got near_m={self.near_m}, far_m={self.far_m}")
        if len(self.light_dir_cam) != 3 or np.linalg.norm(self.light_dir_cam) < 1e-9:
            raise InvalidInputError(f"RenderSettings.light_dir_cam: expected a non-zero 3-vector, got {self.light_dir_cam}")
        if len(self.background_rgb) != 3 or not all(0 <= int(c) <= 255 for c in self.background_rgb):
            raise InvalidInputError(f"RenderSettings.background_rgb: expected 3 values in 0..255, got {self.background_rgb}")
        if self.ambient < 0 or self.diffuse < 0 or not 0.0 <= self.untextured_gray <= 1.0:
            raise InvalidInputError(
                "RenderSettings: ambient and diffuse must be >= 0 and untextured_gray in [0, 1], got "
                f"ambient={self.ambient}, diffuse={self.diffuse}, untextured_gray={self.untextured_gray}"
            )
        if self.max_pixels_per_pass < 1:
            raise InvalidInputError(f"RenderSettings.max_pixels_per_pass: must be >= 1, got {self.max_pixels_per_pass}")


@dataclass(frozen=True)
class RenderOutput:
    """Rendered images of V views; an output that was not requested is None.

    Attributes:
        rgb: (V, H, W, 3) uint8.
        depth: (V, H, W) float32 metres along the optical z axis, 0 where no object.
        xyz: (V, H, W, 3) float32 object-frame coordinates (metres) of the visible surface, 0
            where no object.
        instance: (V, H, W) int32 index into the ``objects`` argument + 1, 0 = background.
    """

    rgb: np.ndarray | None = None
    depth: np.ndarray | None = None
    xyz: np.ndarray | None = None
    instance: np.ndarray | None = None


def opengl_projection_from_K(K: np.ndarray, width: int, height: int, near_m: float, far_m: float) -> np.ndarray:
    """GL projection of OpenCV camera-frame points, pixel-exact with ``K``.

    ``clip = P @ [x, y, z, 1]`` (camera frame, x right, y down, z forward) gives window
    coordinates ``(u + 0.5, v + 0.5)`` where ``(u, v)`` is the projection with ``K`` (pixel
    centres at integers in OpenCV, at half-integers in GL). y is not flipped: framebuffer row
    ``r`` (GL counts rows from the first one in memory) is image row ``r``. ``w_clip = z`` and
    NDC depth is -1 at ``near_m`` and +1 at ``far_m``.

    Args:
        K: (..., 3, 3) intrinsics, pixels (skew allowed).
        width, height: image size, pixels.
        near_m, far_m: clipping distances, metres.
    Returns:
        (..., 4, 4) float64.
    """
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros(K.shape[:-2] + (4, 4))
    P[..., 0, 0] = 2.0 * K[..., 0, 0] / width
    P[..., 0, 1] = 2.0 * K[..., 0, 1] / width
    P[..., 0, 2] = (2.0 * K[..., 0, 2] + 1.0) / width - 1.0
    P[..., 1, 1] = 2.0 * K[..., 1, 1] / height
    P[..., 1, 2] = (2.0 * K[..., 1, 2] + 1.0) / height - 1.0
    P[..., 2, 2] = (far_m + near_m) / (far_m - near_m)
    P[..., 2, 3] = -2.0 * far_m * near_m / (far_m - near_m)
    P[..., 3, 2] = 1.0
    return P


@dataclass
class _GpuObject:
    """GPU copies of one ObjectModel; VAOs per shader variant, built on first use."""

    name: str
    vbo: object
    ibo: object
    texture: object | None
    n_indices: int
    instance_buffer: object
    instance_capacity: int
    cull: str | None  # which side to cull ("back", "front") or None
    vaos: dict = field(default_factory=dict)


@dataclass
class _Targets:
    """A tall framebuffer for one combination of targets, reused between calls."""

    rows: int
    fbo: object                 # every attachment, for drawing
    color_fbo: object | None    # colour attachment only, to clear it to the background colour
    attachments: list = field(default_factory=list)


def _packed_vertices(model: ObjectModel, gray: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """Interleave the vertex attributes and merge identical vertices (fewer vertex shader runs).

    Returns (unique vertices as a structured array, (F*3,) uint32 indices, textured).
    """
    n = len(model.vertices)
    textured = model.texture is not None and model.uv is not None
    if model.texture is not None and model.uv is None:
        logger.warning("object %s has a texture but no uv coordinates; rendering it untextured", model.name)
    vertex = np.zeros(n, dtype=[("p", "<f4", 3), ("n", "<f4", 3), ("uv", "<f4", 2), ("c", "u1", 4)])
    vertex["p"] = model.vertices
    vertex["n"] = model.normals
    if textured:
        vertex["uv"] = model.uv
    if model.vertex_colors is not None:
        vertex["c"][:, :3] = model.vertex_colors
    else:
        vertex["c"][:, :3] = int(round(255 * gray))
    vertex["c"][:, 3] = 255
    unique, inverse = np.unique(vertex.view(np.dtype((np.void, vertex.dtype.itemsize))), return_inverse=True)
    indices = inverse.reshape(-1)[np.asarray(model.faces, dtype=np.int64).reshape(-1)].astype(np.uint32)
    return unique.view(vertex.dtype), indices, textured


def _cull_side(model: ObjectModel, cull_back_faces: bool | None) -> str | None:
    """Which faces of ``model`` may be culled: "back", "front" (inward winding) or None."""
    if cull_back_faces is not None:
        return "back" if cull_back_faces else None
    mesh = trimesh.Trimesh(model.vertices, model.faces, process=True)  # merges seams split for uv
    if not (mesh.is_watertight and mesh.is_winding_consistent) or abs(mesh.volume) < 1e-15:
        return None
    return "back" if mesh.volume > 0 else "front"


def _check_model(model: ObjectModel) -> None:
    n = len(model.vertices)
    for name, arr, cols in (("normals", model.normals, 3), ("uv", model.uv, 2), ("vertex_colors", model.vertex_colors, 3)):
        if arr is not None and (np.ndim(arr) != 2 or np.shape(arr) != (n, cols)):
            raise InvalidInputError(f"ObjectModel[{model.name}].{name}: expected shape ({n}, {cols}), got {np.shape(arr)}")
    if len(model.faces) == 0:
        raise InvalidInputError(f"ObjectModel[{model.name}].faces: the mesh has no faces")
    faces = np.asarray(model.faces)
    if faces.min() < 0 or faces.max() >= n:
        raise InvalidInputError(f"ObjectModel[{model.name}].faces: indices outside [0, {n})")
    if not np.all(np.isfinite(model.vertices)):
        raise InvalidInputError(f"ObjectModel[{model.name}].vertices: contains NaN or inf")
    tex = model.texture
    if tex is not None and (np.ndim(tex) != 3 or np.shape(tex)[2] != 3 or np.asarray(tex).dtype != np.uint8):
        raise InvalidInputError(f"ObjectModel[{model.name}].texture: expected (Ht, Wt, 3) uint8, got {np.shape(tex)} {np.asarray(tex).dtype}")


def _per_view(name: str, value, default, n_views: int, width: int) -> np.ndarray:
    """A per-view parameter as (V, width) float64 (``default`` broadcast when ``value`` is None)."""
    if value is None:
        return np.broadcast_to(np.asarray(default, dtype=np.float64).reshape(1, width), (n_views, width))
    arr = np.asarray(value, dtype=np.float64)
    expected = (n_views, width) if width > 1 else (n_views,)
    if arr.shape != expected:
        raise InvalidInputError(f"{name}: expected shape {expected}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: contains NaN or inf")
    return arr.reshape(n_views, width)


class Renderer:
    """Renders V views of M placed objects per call (see the module docstring for conventions).

    The OpenGL context is created on first use. Calls are serialized by a lock and make the
    context current on the calling thread, so one renderer may be used from several threads.

    Args:
        width, height: image size, pixels.
        settings: lighting, clipping and batching.
    Raises:
        StageUnavailableError: (on first use) EGL or OpenGL >= 3.3 is not available.
    """

    def __init__(self, width: int, height: int, settings: RenderSettings = RenderSettings()) -> None:
        if int(width) != width or int(height) != height or width < 1 or height < 1:
            raise InvalidInputError(f"Renderer: width and height must be positive integers, got {width}x{height}")
        self.width = int(width)
        self.height = int(height)
        self.settings = settings
        self._ctx = None
        self._released = False
        self._lock = threading.Lock()
        self._objects: list[_GpuObject] = []
        self._programs: dict[tuple[int, int], object] = {}
        self._targets: dict[tuple[int, int], _Targets] = {}
        self._max_rows = 0
        self._max_texture_px = 0
        self._finalizer = None

    # ------------------------------------------------------------------ context
    @property
    def gl_renderer(self) -> str:
        """The OpenGL renderer string (e.g. ``llvmpipe (LLVM 15.0.6, 256 bits)``); creates the context."""
        with self._lock:
            return self._context().info["GL_RENDERER"]

    def _context(self):
        if self._released:
            raise StageUnavailableError("Renderer: used after release()")
        if self._ctx is None:
            ctx = create_egl_context(self.settings.egl_device_index)
            info = ctx.info
            max_rows = int(min(info["GL_MAX_RENDERBUFFER_SIZE"], info["GL_MAX_VIEWPORT_DIMS"][1]))
            max_width = int(min(info["GL_MAX_RENDERBUFFER_SIZE"], info["GL_MAX_VIEWPORT_DIMS"][0]))
            if self.width > max_width or self.height > max_rows:
                ctx.release()
                raise InvalidInputError(f"Renderer: {self.width}x{self.height} exceeds the GL limit {max_width}x{max_rows}")
            logger.info("renderer: %s, OpenGL %s", info["GL_RENDERER"], info["GL_VERSION"])
            self._ctx, self._max_rows = ctx, max_rows
            self._max_texture_px = int(info["GL_MAX_TEXTURE_SIZE"])
            # Free the context (and llvmpipe's threads) with a renderer dropped without release().
            self._finalizer = weakref.finalize(self, ctx.release)
            self._finalizer.atexit = False  # at exit the process goes anyway; drivers dislike late teardown
        return self._ctx

    def release(self) -> None:
        """Free every GL resource and the context; the renderer cannot be used afterwards."""
        with self._lock:
            if self._ctx is not None:
                self._finalizer.detach()
                self._ctx.release()  # frees every object created in it
            self._ctx = None
            self._objects.clear()
            self._programs.clear()
            self._targets.clear()
            self._released = True

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ objects
    def add_object(self, model: ObjectModel) -> int:
        """Upload a mesh (and its texture) once.

        Texture coordinates follow OpenGL (v = 0 at the bottom image row); without a texture the
        vertex colours are used, without those a uniform grey.

        Args:
            model: the object; vertices in metres, object frame.
        Returns:
            A handle for :meth:`render`'s ``objects``.
        """
        _check_model(model)
        vertices, indices, textured = _packed_vertices(model, self.settings.untextured_gray)
        cull = _cull_side(model, self.settings.cull_back_faces)
        with self._lock:
            ctx = self._context()
            with ctx:
                texture = None
                if textured:
                    import moderngl

                    if max(np.shape(model.texture)[:2]) > self._max_texture_px:
                        raise InvalidInputError(
                            f"ObjectModel[{model.name}].texture: {np.shape(model.texture)[1]}x{np.shape(model.texture)[0]} "
                            f"exceeds the GL limit of {self._max_texture_px} pixels per side"
                        )
                    image = np.ascontiguousarray(np.asarray(model.texture, dtype=np.uint8)[::-1])  # row 0 = v = 0
                    texture = ctx.texture((image.shape[1], image.shape[0]), 3, image.tobytes(), alignment=1)
                    texture.build_mipmaps()
                    texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
                self._objects.append(
                    _GpuObject(
                        name=model.name,
                        vbo=ctx.buffer(vertices.tobytes()),
                        ibo=ctx.buffer(indices.tobytes()),
                        texture=texture,
                        n_indices=len(indices),
                        instance_buffer=ctx.buffer(reserve=INSTANCE_FLOATS * 4),
                        instance_capacity=1,
                        cull=cull,
                    )
                )
            logger.debug("uploaded %s: %d faces, %d unique vertices, culling %s faces", model.name, len(indices) // 3,
                         len(vertices), cull or "no")
            return len(self._objects) - 1

    # ------------------------------------------------------------------ render
    def render(
        self,
        K: np.ndarray,
        T_camera_object: np.ndarray,
        objects: Sequence[int],
        *,
        outputs: Sequence[str] = OUTPUT_NAMES,
        light_dir_cam: np.ndarray | None = None,
        ambient: np.ndarray | None = None,
        diffuse: np.ndarray | None = None,
        background: np.ndarray | None = None,
    ) -> RenderOutput:
        """Render M objects seen by V cameras.

        Args:
            K: (V, 3, 3) intrinsics, pixels, OpenCV convention (pixel centres at integers).
            T_camera_object: (V, M, 4, 4) pose of object m in camera v's optical frame, metres.
            objects: M handles from :meth:`add_object` (a handle may repeat: several instances);
                at most :data:`MAX_OBJECTS_PER_RENDER`.
            outputs: which of ``rgb``, ``depth``, ``xyz``, ``instance`` to render.
            light_dir_cam: (V, 3) direction the light travels, camera frame (default: settings).
            ambient, diffuse: (V,) light intensities (default: settings).
            background: (V, H, W, 3) uint8 image behind the objects in ``rgb`` (default:
                ``settings.background_rgb``).
        Returns:
            :class:`RenderOutput`; outputs not requested are None.
        Raises:
            InvalidInputError: an argument has the wrong shape, type or value (named).
        """
        requested = self._check_outputs(outputs)
        K, T, handles = self._check_scene(K, T_camera_object, objects)
        n_views, H, W = K.shape[0], self.height, self.width
        s = self.settings
        light = _per_view("light_dir_cam", light_dir_cam, s.light_dir_cam, n_views, 3)
        norms = np.linalg.norm(light, axis=1, keepdims=True)
        if np.any(norms < 1e-9):
            raise InvalidInputError("light_dir_cam: every direction must be non-zero")
        light = light / norms
        amb = _per_view("ambient", ambient, s.ambient, n_views, 1)
        dif = _per_view("diffuse", diffuse, s.diffuse, n_views, 1)
        if background is not None:
            background = np.asarray(background)
            if background.shape != (n_views, H, W, 3) or background.dtype != np.uint8:
                raise InvalidInputError(f"background: expected ({n_views}, {H}, {W}, 3) uint8, got {background.shape} {background.dtype}")

        want_rgb = "rgb" in requested
        color_mode = 1 if want_rgb else (2 if "instance" in requested else 0)
        geom_mode = 2 if "xyz" in requested else (1 if "depth" in requested else 0)
        color = np.empty((n_views, H, W, 4 if color_mode == 1 else 1), np.uint8) if color_mode else None
        geom = np.empty((n_views, H, W, 4 if geom_mode == 2 else 1), np.float32) if geom_mode else None
        if n_views:
            P = opengl_projection_from_K(K, W, H, s.near_m, s.far_m)
            instance_data = np.empty((len(handles), n_views, INSTANCE_FLOATS), np.float32)
            instance_data[:, :, 0:12] = T[:, :, :3, :].transpose(1, 0, 2, 3).reshape(len(handles), n_views, 12)
            instance_data[:, :, 12:20] = np.stack(
                [P[:, 0, 0], P[:, 0, 1], P[:, 0, 2], P[:, 1, 1], P[:, 1, 2], P[:, 2, 2], P[:, 2, 3], dif[:, 0]], -1
            )
            instance_data[:, :, 20:23] = light
            instance_data[:, :, 23] = amb[:, 0]
            with self._lock:
                ctx = self._context()
                with ctx:
                    self._render_passes(ctx, handles, instance_data, color_mode, geom_mode, color, geom)

        rgb = depth = xyz = instance = None
        if want_rgb:
            rgb = color[..., :3].copy() if background is None else np.where(color[..., 3:4] > 0, color[..., :3], background)
        if "instance" in requested:
            instance = color[..., -1].astype(np.int32)
        if "xyz" in requested:
            xyz = geom[..., :3].copy()
        if "depth" in requested:
            depth = geom[..., 3].copy() if geom_mode == 2 else geom[..., 0]
        return RenderOutput(rgb=rgb, depth=depth, xyz=xyz, instance=instance)

    def _render_passes(self, ctx, handles, instance_data, color_mode, geom_mode, color, geom) -> None:
        import moderngl

        n_views, H, W = instance_data.shape[1], self.height, self.width
        s = self.settings
        views_per_pass = max(1, min(n_views, self._max_rows // H, s.max_pixels_per_pass // (H * W)))
        targets = self._get_targets(ctx, color_mode, geom_mode, min(n_views, views_per_pass) * H)
        program = self._get_program(ctx, color_mode, geom_mode)
        ctx.enable_only(moderngl.DEPTH_TEST)
        # No y flip between image and window: a counter-clockwise face seen from its front is clockwise.
        ctx.front_face = "cw"
        bg = [c / 255.0 for c in s.background_rgb]
        for v0 in range(0, n_views, views_per_pass):
            v1 = min(n_views, v0 + views_per_pass)
            rows = (v1 - v0) * H
            viewport = (0, 0, W, rows)
            targets.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=viewport)
            if color_mode == 1 and any(bg):
                targets.color_fbo.clear(*bg, 0.0, viewport=viewport)
            targets.fbo.use()  # clear() leaves the cleared framebuffer bound
            targets.fbo.viewport = viewport
            program["u_tiles"].value = float(v1 - v0)
            clip_planes = v1 - v0 > 1
            for i in range(2):
                (ctx.enable_direct if clip_planes else ctx.disable_direct)(_GL_CLIP_DISTANCE0 + i)
            for m, handle in enumerate(handles):
                obj = self._objects[handle]
                vao = self._get_vao(ctx, obj, program, (color_mode, geom_mode), v1 - v0)
                obj.instance_buffer.orphan(obj.instance_capacity * INSTANCE_FLOATS * 4)
                obj.instance_buffer.write(instance_data[m, v0:v1].tobytes())
                if "u_instance" in program:
                    program["u_instance"].value = (m + 1) / 255.0
                if "u_textured" in program:
                    program["u_textured"].value = obj.texture is not None
                if obj.texture is not None and "u_texture" in program:
                    obj.texture.use(0)
                if obj.cull is None:
                    ctx.disable(moderngl.CULL_FACE)
                else:
                    ctx.enable(moderngl.CULL_FACE)
                    ctx.cull_face = obj.cull
                vao.render(moderngl.TRIANGLES, vertices=obj.n_indices, instances=v1 - v0)
            if color is not None:
                targets.fbo.read_into(color[v0:v1], viewport, components=color.shape[-1], attachment=0, dtype="f1")
            if geom is not None:
                targets.fbo.read_into(geom[v0:v1], viewport, components=geom.shape[-1],
                                      attachment=1 if color is not None else 0, dtype="f4")
        for i in range(2):
            ctx.disable_direct(_GL_CLIP_DISTANCE0 + i)

    # ------------------------------------------------------------------ GL resources
    def _get_program(self, ctx, color_mode: int, geom_mode: int):
        key = (color_mode, geom_mode)
        if key not in self._programs:
            defines = (
                f"#version 330\n#define COLOR_TARGET {color_mode}\n#define GEOM_TARGET {geom_mode}\n"
                f"#define GEOM_LOCATION {1 if color_mode else 0}\n"
            )
            program = ctx.program(vertex_shader=defines + VERTEX_SHADER, fragment_shader=defines + FRAGMENT_SHADER)
            if "u_texture" in program:
                program["u_texture"].value = 0
            self._programs[key] = program
        return self._programs[key]

    def _get_vao(self, ctx, obj: _GpuObject, program, key, n_instances: int):
        if n_instances > obj.instance_capacity:
            obj.instance_buffer.release()
            for vao in obj.vaos.values():
                vao.release()
            obj.vaos.clear()
            obj.instance_capacity = max(n_instances, 2 * obj.instance_capacity)
            obj.instance_buffer = ctx.buffer(reserve=obj.instance_capacity * INSTANCE_FLOATS * 4)
        if key not in obj.vaos:
            obj.vaos[key] = ctx.vertex_array(
                program,
                [(obj.vbo, VERTEX_FORMAT, *VERTEX_ATTRIBUTES), (obj.instance_buffer, INSTANCE_FORMAT, *INSTANCE_ATTRIBUTES)],
                index_buffer=obj.ibo,
                index_element_size=4,
                skip_errors=True,  # attributes a variant does not use are optimized out
            )
        return obj.vaos[key]

    def _get_targets(self, ctx, color_mode: int, geom_mode: int, rows: int) -> _Targets:
        key = (color_mode, geom_mode)
        targets = self._targets.get(key)
        if targets is not None and targets.rows >= rows:
            return targets
        if targets is not None:
            for obj in [targets.fbo, targets.color_fbo, *targets.attachments]:
                if obj is not None:
                    obj.release()
        size = (self.width, rows)
        attachments = []
        if color_mode:
            attachments.append(ctx.renderbuffer(size, components=4 if color_mode == 1 else 1, dtype="f1"))
        if geom_mode:
            attachments.append(ctx.renderbuffer(size, components=4 if geom_mode == 2 else 1, dtype="f4"))
        depth = ctx.depth_renderbuffer(size)
        fbo = ctx.framebuffer(color_attachments=attachments, depth_attachment=depth)
        color_fbo = ctx.framebuffer(color_attachments=[attachments[0]]) if color_mode else None
        self._targets[key] = _Targets(rows=rows, fbo=fbo, color_fbo=color_fbo, attachments=[*attachments, depth])
        return self._targets[key]

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_outputs(outputs: Sequence[str]) -> set[str]:
        if isinstance(outputs, str):
            outputs = (outputs,)
        requested = set(outputs)
        unknown = requested - set(OUTPUT_NAMES)
        if unknown or not requested:
            raise InvalidInputError(f"outputs: expected a non-empty subset of {OUTPUT_NAMES}, got {tuple(outputs)}")
        return requested

    def _check_scene(self, K, T_camera_object, objects) -> tuple[np.ndarray, np.ndarray, list[int]]:
        K = np.asarray(K, dtype=np.float64)
        if K.ndim != 3 or K.shape[1:] != (3, 3):
            raise InvalidInputError(f"K: expected shape (V, 3, 3), got {K.shape}")
        if not np.all(np.isfinite(K)) or np.any(K[:, 0, 0] <= 0) or np.any(K[:, 1, 1] <= 0):
            raise InvalidInputError("K: must be finite with positive focal lengths")
        if np.any(np.abs(K[:, 2] - [0.0, 0.0, 1.0]) > 1e-9) or np.any(K[:, 1, 0] != 0.0):
            raise InvalidInputError("K: expected upper-triangular intrinsics with last row [0, 0, 1]")
        if isinstance(objects, (str, bytes)) or not all(isinstance(h, (int, np.integer)) for h in objects):
            raise InvalidInputError(f"objects: expected a sequence of integer handles, got {objects!r}")
        handles = [int(h) for h in objects]
        T = np.asarray(T_camera_object, dtype=np.float64)
        if T.ndim != 4 or T.shape[2:] != (4, 4) or T.shape[0] != K.shape[0]:
            raise InvalidInputError(f"T_camera_object: expected shape (V={K.shape[0]}, M, 4, 4), got {T.shape}")
        if T.shape[1] != len(handles):
            raise InvalidInputError(f"objects: {len(handles)} handles but T_camera_object has M={T.shape[1]} poses per view")
        if not np.all(np.isfinite(T)) or np.any(np.abs(T[:, :, 3] - [0.0, 0.0, 0.0, 1.0]) > 1e-6):
            raise InvalidInputError("T_camera_object: must be finite with last row [0, 0, 0, 1]")
        if len(handles) > MAX_OBJECTS_PER_RENDER:
            raise InvalidInputError(f"objects: at most {MAX_OBJECTS_PER_RENDER} per call, got {len(handles)}")
        bad = [h for h in handles if not 0 <= h < len(self._objects)]
        if bad:
            raise InvalidInputError(f"objects: unknown handles {bad} (have {len(self._objects)} objects)")
        return K, T, handles
