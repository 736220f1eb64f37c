"""Object templates for detection and pose priors (CNOS-style onboarding of one mesh).

For each object, cameras on an icosphere around the object render square templates (RGB, metric
depth, object coordinates XYZ and mask); the backbone's global descriptor of each masked template
is what a detection proposal is compared with (cosine similarity). Surface points with normals are
sampled once for the later stages (correspondences, refinement).

Template crop geometry (written once, here):

- The object's bounding sphere has centre ``c`` = the centre of its axis-aligned bounding box and
  radius ``r`` = the largest vertex distance from ``c`` (not minimal, but cheap and stable).
- Every template camera looks at ``c`` from distance ``d = distance_diameters * diameter_m``, so
  ``c`` lies on the optical axis at ``(0, 0, d)`` in the camera frame. The image "up" follows the
  object's +z (see :func:`pose_node.render.viewpoints.look_at_T_camera_object`); optional in-plane
  rotations turn the camera about its optical axis.
- ``K_template = [[f, 0, (S-1)/2], [0, f, (S-1)/2], [0, 0, 1]]`` (S = ``template_size_px``, pixel
  centres at integers). The bounding sphere's silhouette is a disc of radius ``f * r / sqrt(d^2 -
  r^2)`` pixels about the centre; ``f`` makes that radius ``(1 - 2 * crop_margin_fraction) * S / 2``,
  so the object fills the template up to a margin of ``crop_margin_fraction * S`` on every side,
  whatever its size. A detection crop built the same way (square, centred on the object, the same
  margin, resized to S) sees the object at the template's scale; ``T_camera_object`` of the best
  templates then gives the rotation prior and, with the crop's own intrinsics, the distance.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import trimesh

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel
from pose_node.features.backbones import Backbone
from pose_node.render.renderer import Renderer
from pose_node.render.viewpoints import sphere_viewpoints

logger = logging.getLogger(__name__)

#: Template counts per object (icosphere vertices) -> icosphere subdivisions.
VIEWPOINT_SUBDIVISIONS: dict[int, int] = {42: 1, 162: 2, 642: 3}


@dataclass(frozen=True)
class TemplateConfig:
    """How templates are rendered (every field is part of the onboarding cache key).

    Attributes:
        num_viewpoints: camera positions on the sphere: 42 (CNOS default), 162 or 642 (icosphere
            vertices at subdivision 1, 2, 3).
        in_plane_rotations: rotations about each camera's optical axis, evenly spaced over 360
            degrees (1: none). Descriptors that are not rotation invariant (CNN pooled heads, ViT
            class tokens) need more for cameras that roll (wrist cameras); templates are
            ``num_viewpoints * in_plane_rotations``, viewpoint-major.
        template_size_px: S, side of the square template crop camera, pixels.
        distance_diameters: camera distance from the bounding-sphere centre, in object diameters
            (> 1; affects the perspective only, the crop intrinsics fix the apparent size).
        crop_margin_fraction: free border between the bounding-sphere silhouette and the template
            edge, as a fraction of S on each side, in [0, 0.45].
        light_dir_cam: direction the light travels in the camera frame (x right, y down, z
            forward); the default is a headlight, so every template is lit alike.
        ambient, diffuse: light intensities (1 = full albedo).
        background_rgb: colour of every non-object pixel of ``rgb`` and of the descriptor input
            (constant, so descriptors depend on the object only, as in CNOS).
        num_surface_points: P, surface samples (even spacing) for the later stages.
        surface_seed: seed of the surface sampling.
    """

    num_viewpoints: int = 42
    in_plane_rotations: int = 1
    template_size_px: int = 128
    distance_diameters: float = 3.0
    crop_margin_fraction: float = 0.05
    light_dir_cam: tuple[float, float, float] = (0.0, 0.0, 1.0)
    ambient: float = 0.45
    diffuse: float = 0.55
    background_rgb: tuple[int, int, int] = (0, 0, 0)
    num_surface_points: int = 2048
    surface_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_viewpoints not in VIEWPOINT_SUBDIVISIONS:
            raise InvalidInputError(
                f"TemplateConfig.num_viewpoints: expected one of {sorted(VIEWPOINT_SUBDIVISIONS)}, got {self.num_viewpoints}"
            )
        if int(self.in_plane_rotations) != self.in_plane_rotations or self.in_plane_rotations < 1:
            raise InvalidInputError(
                f"TemplateConfig.in_plane_rotations: expected an integer >= 1, got {self.in_plane_rotations}"
            )
        if int(self.template_size_px) != self.template_size_px or not 16 <= self.template_size_px <= 1024:
            raise InvalidInputError(
                f"TemplateConfig.template_size_px: expected an integer in [16, 1024], got {self.template_size_px}"
            )
        if not self.distance_diameters > 1.0:
            raise InvalidInputError(
                f"TemplateConfig.distance_diameters: must be > 1 (camera outside the object), got {self.distance_diameters}"
            )
        if not 0.0 <= self.crop_margin_fraction <= 0.45:
            raise InvalidInputError(f"TemplateConfig.crop_margin_fraction: expected a value in [0, 0.45], got {self.crop_margin_fraction}")
        if len(self.light_dir_cam) != 3 or np.linalg.norm(self.light_dir_cam) < 1e-9:
            raise InvalidInputError(f"TemplateConfig.light_dir_cam: expected a non-zero 3-vector, got {self.light_dir_cam}")
        if self.ambient < 0 or self.diffuse < 0:
            raise InvalidInputError(f"TemplateConfig.ambient / diffuse: must be >= 0, got {self.ambient}, {self.diffuse}")
        if len(self.background_rgb) != 3 or not all(0 <= int(c) <= 255 for c in self.background_rgb):
            raise InvalidInputError(f"TemplateConfig.background_rgb: expected 3 values in 0..255, got {self.background_rgb}")
        if self.num_surface_points < 1:
            raise InvalidInputError(f"TemplateConfig.num_surface_points: must be >= 1, got {self.num_surface_points}")
        # Normalized types, so equal configs serialize (cache key) identically.
        object.__setattr__(self, "light_dir_cam", tuple(float(v) for v in self.light_dir_cam))
        object.__setattr__(self, "background_rgb", tuple(int(v) for v in self.background_rgb))
        for name in ("num_viewpoints", "in_plane_rotations", "template_size_px", "num_surface_points", "surface_seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("distance_diameters", "crop_margin_fraction", "ambient", "diffuse"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def num_templates(self) -> int:
        return self.num_viewpoints * self.in_plane_rotations


def _check(name: str, array: np.ndarray, shape: tuple[int | None, ...], dtype) -> None:
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        raise InvalidInputError(f"ObjectTemplates.{name}: expected shape {shape} (None = any), got {array.shape}")
    if array.dtype != dtype:
        raise InvalidInputError(f"ObjectTemplates.{name}: expected dtype {np.dtype(dtype)}, got {array.dtype}")


@dataclass(frozen=True, eq=False)
class ObjectTemplates:
    """The onboarded templates of one object (T templates of S x S pixels).

    Attributes:
        object_id: the object's id.
        config: how the templates were made.
        rgb: (T, S, S, 3) uint8, ``config.background_rgb`` outside the mask.
        depth: (T, S, S) float32 metres along the template camera's z axis, 0 outside the mask.
        xyz: (T, S, S, 3) float32 object-frame coordinates (metres) of the visible surface, 0
            outside the mask.
        mask: (T, S, S) bool, the object's visible pixels.
        K_template: (3, 3) float64 intrinsics of the square crop camera (module docstring).
        T_camera_object: (T, 4, 4) float64 template poses (the pose priors), metres.
        sphere_center_obj_m: (3,) bounding-sphere centre, object frame, metres.
        sphere_radius_m: bounding-sphere radius, metres.
        surface_points_obj_m: (P, 3) float32 evenly spaced surface samples, object frame, metres.
        surface_normals_obj: (P, 3) float32 unit normals of the sampled faces (their winding).
        descriptors: (T, D) float32 unit-norm global descriptors, or None before
            :func:`compute_descriptors`.
        backbone_cache_key: ``Backbone.cache_key`` of the descriptors ("" without descriptors).
        build_times_s: seconds spent per onboarding step (``render``, ``surface``,
            ``descriptors``), for reports; not part of any comparison.
    """

    object_id: int
    config: TemplateConfig
    rgb: np.ndarray
    depth: np.ndarray
    xyz: np.ndarray
    mask: np.ndarray
    K_template: np.ndarray
    T_camera_object: np.ndarray
    sphere_center_obj_m: np.ndarray
    sphere_radius_m: float
    surface_points_obj_m: np.ndarray
    surface_normals_obj: np.ndarray
    descriptors: np.ndarray | None = None
    backbone_cache_key: str = ""
    build_times_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        T, S = self.config.num_templates, self.config.template_size_px
        _check("rgb", self.rgb, (T, S, S, 3), np.uint8)
        _check("depth", self.depth, (T, S, S), np.float32)
        _check("xyz", self.xyz, (T, S, S, 3), np.float32)
        _check("mask", self.mask, (T, S, S), np.bool_)
        _check("K_template", self.K_template, (3, 3), np.float64)
        _check("T_camera_object", self.T_camera_object, (T, 4, 4), np.float64)
        _check("sphere_center_obj_m", self.sphere_center_obj_m, (3,), np.float64)
        P = self.config.num_surface_points
        _check("surface_points_obj_m", self.surface_points_obj_m, (P, 3), np.float32)
        _check("surface_normals_obj", self.surface_normals_obj, (P, 3), np.float32)
        if self.descriptors is not None:
            _check("descriptors", self.descriptors, (T, None), np.float32)
            norms = np.linalg.norm(self.descriptors, axis=1)
            if not np.all(np.isfinite(norms)) or np.abs(norms - 1.0).max(initial=0.0) > 1e-3:
                raise InvalidInputError("ObjectTemplates.descriptors: expected finite unit-norm rows")

    @property
    def num_templates(self) -> int:
        return self.config.num_templates

    @property
    def size_px(self) -> int:
        return self.config.template_size_px


def bounding_sphere(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre of the axis-aligned bounding box and the largest vertex distance from it.

    Args:
        vertices: (N, 3) metres.
    Returns:
        centre (3,) float64 metres, radius metres.
    """
    v = np.asarray(vertices, dtype=np.float64)
    center = 0.5 * (v.min(0) + v.max(0))
    return center, float(np.linalg.norm(v - center, axis=1).max())


def template_intrinsics(size_px: int, distance_m: float, radius_m: float, margin_fraction: float) -> np.ndarray:
    """K of the square crop camera in which a sphere of ``radius_m`` at ``distance_m`` on the
    optical axis fills the image up to ``margin_fraction * size_px`` on each side.

    Returns:
        (3, 3) float64, pixels (pixel centres at integers).
    Raises:
        InvalidInputError: the camera would be inside the sphere.
    """
    if not distance_m > radius_m > 0:
        raise InvalidInputError(f"template_intrinsics: need distance_m > radius_m > 0, got {distance_m}, {radius_m}")
    disc_radius_px = (1.0 - 2.0 * margin_fraction) * size_px / 2.0
    f = disc_radius_px * np.sqrt(distance_m**2 - radius_m**2) / radius_m
    c = (size_px - 1) / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def template_poses(center_obj_m: np.ndarray, distance_m: float, config: TemplateConfig) -> np.ndarray:
    """``T_camera_object`` of every template: icosphere viewpoints x in-plane rotations.

    Returns:
        (T, 4, 4) float64, viewpoint-major (template ``v * in_plane_rotations + k`` is viewpoint v
        turned by ``k * 360 / in_plane_rotations`` degrees about the optical axis).
    """
    T_view = sphere_viewpoints(VIEWPOINT_SUBDIVISIONS[config.num_viewpoints], distance_m, target_obj=center_obj_m)
    angles = 2.0 * np.pi * np.arange(config.in_plane_rotations) / config.in_plane_rotations
    R_roll = np.tile(np.eye(4), (len(angles), 1, 1))
    R_roll[:, 0, 0] = R_roll[:, 1, 1] = np.cos(angles)
    R_roll[:, 0, 1], R_roll[:, 1, 0] = -np.sin(angles), np.sin(angles)
    # The camera frame turns about its z axis, which passes through the sphere centre.
    return np.einsum("kij,vjl->vkil", R_roll, T_view).reshape(-1, 4, 4)


def sample_surface(model: ObjectModel, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` evenly spaced surface points (trimesh ``sample_surface_even``, topped up with
    area-weighted samples when the rejection step keeps fewer) and their face normals.

    Returns:
        points (count, 3) float32 metres and unit normals (count, 3) float32, object frame.
    """
    mesh = trimesh.Trimesh(model.vertices, model.faces, process=False)
    points, face_index = trimesh.sample.sample_surface_even(mesh, count, seed=seed)
    if len(points) < count:
        extra, extra_faces = trimesh.sample.sample_surface(mesh, count - len(points), seed=seed + 1)
        points = np.concatenate([points, extra])
        face_index = np.concatenate([face_index, extra_faces])
    normals = mesh.face_normals[face_index]
    return np.asarray(points[:count], np.float32), np.asarray(normals[:count], np.float32)


def render_templates(model: ObjectModel, renderer: Renderer, config: TemplateConfig = TemplateConfig()) -> ObjectTemplates:
    """Render the templates of one object (no descriptors yet) and sample its surface.

    Args:
        model: the object, metres.
        renderer: an S x S renderer (S = ``config.template_size_px``); the model is uploaded to it.
        config: viewpoints, crop, light.
    Returns:
        :class:`ObjectTemplates` with ``descriptors=None``.
    Raises:
        InvalidInputError: the renderer has another size, or the template cameras would clip the
            object at the renderer's near/far planes.
    """
    S = config.template_size_px
    if (renderer.width, renderer.height) != (S, S):
        raise InvalidInputError(
            f"renderer: expected {S}x{S} (TemplateConfig.template_size_px), got {renderer.width}x{renderer.height}"
        )
    center, radius = bounding_sphere(model.vertices)
    distance = config.distance_diameters * model.diameter_m
    near, far = renderer.settings.near_m, renderer.settings.far_m
    if not near < distance - radius or not distance + radius < far:
        raise InvalidInputError(
            f"TemplateConfig.distance_diameters: object {model.name} spans {distance - radius:.4f}..{distance + radius:.4f} m "
            f"from the template cameras, outside the renderer's near_m={near} / far_m={far}"
        )
    started = time.perf_counter()
    K = template_intrinsics(S, distance, radius, config.crop_margin_fraction)
    T_camera_object = template_poses(center, distance, config)
    n = len(T_camera_object)
    handle = renderer.add_object(model)
    out = renderer.render(
        np.broadcast_to(K, (n, 3, 3)), T_camera_object[:, None], [handle],
        outputs=("rgb", "depth", "xyz", "instance"),
        light_dir_cam=np.broadcast_to(np.asarray(config.light_dir_cam, np.float64), (n, 3)),
        ambient=np.full(n, config.ambient), diffuse=np.full(n, config.diffuse),
    )
    mask = out.instance == 1
    rgb = out.rgb
    rgb[~mask] = np.asarray(config.background_rgb, np.uint8)
    render_s = time.perf_counter() - started
    started = time.perf_counter()
    points, normals = sample_surface(model, config.num_surface_points, config.surface_seed)
    surface_s = time.perf_counter() - started
    empty = int((mask.reshape(n, -1).sum(1) == 0).sum())
    if empty:
        logger.warning("object %s: %d of %d templates show nothing", model.name, empty, n)
    logger.info("object %s: rendered %d templates of %dx%d px in %.2f s", model.name, n, S, S, render_s)
    return ObjectTemplates(
        object_id=model.object_id, config=config, rgb=rgb, depth=out.depth.astype(np.float32, copy=False),
        xyz=out.xyz.astype(np.float32, copy=False), mask=mask, K_template=K, T_camera_object=T_camera_object,
        sphere_center_obj_m=center, sphere_radius_m=radius, surface_points_obj_m=points, surface_normals_obj=normals,
        build_times_s={"render": render_s, "surface": surface_s},
    )


def masked_template_images(templates: ObjectTemplates, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Templates ``start:stop`` as backbone input: background set to ``config.background_rgb``.

    Returns:
        (B, 3, S, S) float32 in [0, 1] on ``device``.
    """
    rgb = torch.from_numpy(templates.rgb[start:stop]).to(device)
    mask = torch.from_numpy(templates.mask[start:stop]).to(device)
    background = torch.tensor(templates.config.background_rgb, dtype=torch.uint8, device=device)
    rgb = torch.where(mask[..., None], rgb, background)
    return rgb.permute(0, 3, 1, 2).float().div_(255.0)


def compute_descriptors(templates: ObjectTemplates, backbone: Backbone, batch_size: int = 32) -> np.ndarray:
    """Global descriptors of the masked templates (background constant, so they describe the
    object only). Queries must be prepared alike: masked with the same background, cropped with
    the same margin (module docstring), resized to S.

    Args:
        templates: rendered templates.
        backbone: runs on its own device; batches of ``batch_size`` templates go there.
    Returns:
        (T, D) float32 unit-norm descriptors (renormalized in float32 after a half-precision backbone).
    Raises:
        InvalidInputError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size: must be >= 1, got {batch_size}")
    chunks = []
    for start in range(0, templates.num_templates, batch_size):
        stop = min(templates.num_templates, start + batch_size)
        images = masked_template_images(templates, start, stop, backbone.device)
        chunks.append(backbone(images).global_descriptor.float())
    descriptors = torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
    return descriptors.cpu().numpy().astype(np.float32)


def onboard_object(
    model: ObjectModel, renderer: Renderer, backbone: Backbone, config: TemplateConfig = TemplateConfig(),
    *, batch_size: int = 32,
) -> ObjectTemplates:
    """Render the templates of ``model`` and compute their descriptors (no cache; see
    :func:`pose_node.onboarding.cache.load_or_onboard`).

    Raises:
        InvalidInputError: see :func:`render_templates`.
    """
    templates = render_templates(model, renderer, config)
    started = time.perf_counter()
    descriptors = compute_descriptors(templates, backbone, batch_size)
    descriptor_s = time.perf_counter() - started
    logger.info("object %s: %d descriptors (%s) in %.2f s", model.name, len(descriptors), backbone.name, descriptor_s)
    return replace(
        templates, descriptors=descriptors, backbone_cache_key=backbone.cache_key,
        build_times_s={**templates.build_times_s, "descriptors": descriptor_s},
    )
