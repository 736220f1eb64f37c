"""Training samples for the correspondence network, rendered on the fly (no dataset on disk).

One sample: an object at a random pose in a random camera (640 x 480, focal 450-850 px), on a
random textured background, often partly hidden by another object in front, lit from a random
direction; cropped like a detection (crop camera around a jittered visible mask, the unmasked
image, :func:`pose_node.core.crop.crop_images`), with colour, noise and blur
augmentation. The target is the object coordinates of every crop cell (from the rendered XYZ)
and the pose in the crop camera. The matched hypothesis is the template and in-plane angle
closest in rotation to the truth (sometimes the second closest, as a detector would give); for
symmetric objects, the truth is first replaced by its symmetric twin closest to that hypothesis.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pose_node.core.crop import crop_cameras, crop_images, crop_intrinsics, mask_outline
from pose_node.core.types import ObjectModel
from pose_node.correspondence.estimator import crop_detections
from pose_node.correspondence.hypotheses import (
    TemplateCrops,
    crop_templates,
    hypothesis_poses_in_crop,
    in_plane_angles,
    rotate_images,
    rotation_about_z,
)
from pose_node.correspondence.network import CorrespondenceNetConfig, to_grid
from pose_node.onboarding.templates import TemplateConfig, render_templates
from pose_node.render.renderer import Renderer
from pose_node.scene.appearance import procedural_texture
from pose_node.training.domain_randomization import DomainRandomizationConfig, crop_footprint, randomize_appearance


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn.

    Attributes:
        image_width_px, image_height_px: the simulated camera.
        focal_range_px: focal length range.
        distance_range_diameters: object distance, in object diameters (scaled so the object
            spans 40-250 px, as in the workcells).
        min_distance_m: never closer than this.
        occluder_probability: chance of another object in front of the target.
        min_visible_fraction: resample when less of the object is visible.
        min_visible_px: resample when the visible mask is smaller.
        mask_jitter_px: the detection mask is eroded or dilated by up to this many pixels.
        second_best_probability: chance to match with the second closest hypothesis.
        in_plane_rotations: R, in-plane angles per template (the stage uses the same).
        templates: onboarding settings of the training templates (the detector's defaults).
        num_backgrounds: pre-generated background textures.
        domain_randomization: strong appearance randomization (linear light, environment and
            specular light, colour camera model); None: the weak lighting and colour jitter the
            shipped ``correspondence_effl0`` was trained with (:data:`SHIPPED_EFFL0_SAMPLE_CONFIG`).
            The scene geometry drawn from a seed is the same either way.
    """

    image_width_px: int = 640
    image_height_px: int = 480
    focal_range_px: tuple[float, float] = (450.0, 850.0)
    distance_range_diameters: tuple[float, float] = (2.5, 9.0)
    min_distance_m: float = 0.25
    occluder_probability: float = 0.5
    min_visible_fraction: float = 0.35
    min_visible_px: int = 300
    mask_jitter_px: int = 3
    second_best_probability: float = 0.3
    in_plane_rotations: int = 8
    templates: TemplateConfig = TemplateConfig(template_size_px=96)
    num_backgrounds: int = 48
    domain_randomization: DomainRandomizationConfig | None = DomainRandomizationConfig()


#: The sampling the shipped ``models/correspondence_effl0.pt`` was trained with (weak augmentation only).
SHIPPED_EFFL0_SAMPLE_CONFIG = SampleConfig(domain_randomization=None)


@dataclass
class _Scene:
    """One rendered scene: the target (object index ``index``, label 1) and maybe an occluder.

    Attributes:
        index: the target's index in the sampler's models. K: (3, 3). T_cam_target: (4, 4).
        rgb: (H, W, 3) uint8 (the albedo when the appearance is randomized later).
        xyz: (H, W, 3) float32 target object coordinates. visible: (H, W) bool target pixels.
        depth: (H, W) float32 metres and instance (H, W) int labels, only when randomizing.
        untextured_labels: labels of meshes the rasterizer paints plain grey.
    """

    index: int
    K: np.ndarray
    T_cam_target: np.ndarray
    rgb: np.ndarray
    xyz: np.ndarray
    visible: np.ndarray
    depth: np.ndarray | None = None
    instance: np.ndarray | None = None
    untextured_labels: frozenset[int] = frozenset()


@dataclass
class TrainingBatch:
    """B samples (g = grid size, S = crop size).

    Attributes:
        crops: (B, 3, S, S) float32 in [0, 1], augmented.
        detection_mask: (B, 1, g, g) float32, the (jittered) detection mask on the grid.
        gt_xyz_norm: (B, N, 3) normalized object coordinates of each cell (row-major).
        gt_visible: (B, N) float32 1 where the cell centre shows the object.
        template_rgb: (B, 3, S, S) the matched hypothesis' image.
        template_xyz_norm: (B, 3, g, g). template_mask: (B, 1, g, g).
        K_crop: (B, 3, 3) float64 crop intrinsics.
        T_crop_object_gt: (B, 4, 4) float64 truth in the crop camera (symmetry resolved).
        T_crop_object_init: (B, 4, 4) float64 the hypothesis' pose (the solver's start).
        sphere_center_obj_m: (B, 3) float64. sphere_radius_m: (B,) float64.
    """

    crops: torch.Tensor
    detection_mask: torch.Tensor
    gt_xyz_norm: torch.Tensor
    gt_visible: torch.Tensor
    template_rgb: torch.Tensor
    template_xyz_norm: torch.Tensor
    template_mask: torch.Tensor
    K_crop: np.ndarray
    T_crop_object_gt: np.ndarray
    T_crop_object_init: np.ndarray
    sphere_center_obj_m: np.ndarray
    sphere_radius_m: np.ndarray


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed rotation (3, 3) (normalized Gaussian quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def closest_hypotheses(R_crop_object: np.ndarray, crops: TemplateCrops, angles: np.ndarray,
                       symmetries: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Hypotheses sorted by rotation distance to the truth.

    Args:
        R_crop_object: (3, 3) truth. angles: (R,). symmetries: (Y, 4, 4) or None.
    Returns:
        ``(order (T * R,) flat indices t * R + r, best symmetry index per hypothesis (T * R,))``.
    """
    hyp = rotation_about_z(angles)[None] @ crops.T_crop_object[:, None, :3, :3]  # (T, R, 3, 3)
    sym = np.eye(3)[None] if symmetries is None or len(symmetries) == 0 else symmetries[:, :3, :3]
    truths = R_crop_object[None] @ sym  # (Y, 3, 3)
    rel = np.einsum("trji,yjk->tryik", hyp, truths)  # hyp^T truth
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0  # (T, R, Y)
    best_sym = cos.argmax(-1).reshape(-1)
    return np.argsort(-cos.max(-1).reshape(-1), kind="stable"), best_sym


class TrainingSampler:
    """Renders training batches of a set of objects (module docstring)."""

    def __init__(self, models: Sequence[ObjectModel], net_config: CorrespondenceNetConfig, config: SampleConfig = SampleConfig(),
                 seed: int = 0, renderer: Renderer | None = None) -> None:
        self.models = list(models)
        self.net_config = net_config
        self.config = config
        self.rng = np.random.default_rng(seed)
        # Appearance draws come from their own stream: a seed gives the same scenes and targets
        # whether or not the appearance is randomized.
        self.appearance_rng = np.random.default_rng([seed, 1])
        self.renderer = renderer or Renderer(config.image_width_px, config.image_height_px)
        template_renderer = Renderer(config.templates.template_size_px, config.templates.template_size_px)
        self.handles = [self.renderer.add_object(m) for m in self.models]
        self.crops = [crop_templates(render_templates(m, template_renderer, config.templates), net_config.crop_size_px) for m in self.models]
        self.angles = in_plane_angles(config.in_plane_rotations)
        H, W = config.image_height_px, config.image_width_px
        self.backgrounds = [procedural_texture(self.rng, H, W) for _ in range(config.num_backgrounds)]
        # Meshes the rasterizer paints in one grey (no texture, no vertex colours): recoloured at random.
        self.untextured = [(m.texture is None or m.uv is None) and m.vertex_colors is None for m in self.models]

    # -- one scene ------------------------------------------------------------------------------

    def _camera(self) -> np.ndarray:
        c = self.config
        f = self.rng.uniform(*c.focal_range_px)
        return np.array([[f, 0, (c.image_width_px - 1) / 2 + self.rng.normal(0, 5)],
                         [0, f, (c.image_height_px - 1) / 2 + self.rng.normal(0, 5)], [0, 0, 1.0]])

    def _place(self, K: np.ndarray, index: int, distance_m: float) -> np.ndarray:
        """A random pose of object ``index`` whose centre projects inside the central 80 % of the image."""
        c = self.config
        u = self.rng.uniform(0.1, 0.9) * c.image_width_px
        v = self.rng.uniform(0.1, 0.9) * c.image_height_px
        return self._pose_on_ray(K, np.array([u, v]), index, distance_m)

    def _pose_on_ray(self, K: np.ndarray, uv: np.ndarray, index: int, distance_m: float) -> np.ndarray:
        """A random rotation of object ``index`` with its bounding-sphere centre at depth
        ``distance_m`` on the ray through pixel ``uv``."""
        ray = np.linalg.solve(K, [*uv, 1.0])
        T = np.eye(4)
        T[:3, :3] = random_rotation(self.rng)
        T[:3, 3] = ray / ray[2] * distance_m - T[:3, :3] @ self.crops[index].sphere_center_obj_m
        return T

    def _scene(self):
        """Render one target (index 0) with an optional occluder; retry until enough is visible."""
        c = self.config
        for _ in range(20):
            i = int(self.rng.integers(len(self.models)))
            model = self.models[i]
            K = self._camera()
            distance = max(c.min_distance_m, self.rng.uniform(*c.distance_range_diameters) * model.diameter_m)
            T_target = self._place(K, i, distance)
            poses, handles = [T_target], [self.handles[i]]
            if self.rng.random() < c.occluder_probability:
                j = int(self.rng.integers(len(self.models)))
                occluder = self.models[j]
                d_occ = distance - self.rng.uniform(0.6, 1.2) * 0.5 * (model.diameter_m + occluder.diameter_m)
                if d_occ > c.min_distance_m:
                    p_target = K @ (T_target[:3, :3] @ self.crops[i].sphere_center_obj_m + T_target[:3, 3])
                    uv = p_target[:2] / p_target[2]
                    offset = self.rng.normal(size=2)
                    offset *= self.rng.uniform(0.4, 0.9) * K[0, 0] * model.diameter_m / distance / np.linalg.norm(offset)
                    poses.append(self._pose_on_ray(K, uv + offset, j, d_occ))
                    handles.append(self.handles[j])
            background = self.backgrounds[int(self.rng.integers(len(self.backgrounds)))]
            if self.rng.random() < 0.5:
                background = background[::-1, ::-1]
            # Drawn in both modes so that a seed gives the same scenes with either appearance.
            light = self.rng.normal(size=3) + np.array([0.0, 0.0, 1.5])
            ambient, diffuse = self.rng.uniform(0.25, 0.6), self.rng.uniform(0.4, 0.8)
            randomized = c.domain_randomization is not None
            if randomized:
                ambient, diffuse = 1.0, 0.0  # the albedo: lit later in linear light
            out = self.renderer.render(
                K[None], np.stack(poses)[None], handles, outputs=("rgb", "xyz", "instance") + (("depth",) if randomized else ()),
                light_dir_cam=light[None], ambient=np.array([ambient]),
                diffuse=np.array([diffuse]), background=np.ascontiguousarray(background)[None],
            )
            visible = out.instance[0] == 1
            alone = self.renderer.render(K[None], T_target[None, None], [self.handles[i]], outputs=("instance",)).instance[0] == 1 \
                if len(handles) > 1 else visible
            count = int(visible.sum())
            if count >= c.min_visible_px and count >= c.min_visible_fraction * max(1, int(alone.sum())):
                if not randomized:
                    return _Scene(i, K, T_target, out.rgb[0], out.xyz[0], visible)
                untextured = frozenset(label + 1 for label, h in enumerate(handles) if self.untextured[self.handles.index(h)])
                return _Scene(i, K, T_target, out.rgb[0], out.xyz[0], visible, out.depth[0], out.instance[0], untextured)
        raise RuntimeError("TrainingSampler: could not place a visible object in 20 tries")

    def _jitter_mask(self, mask: np.ndarray) -> np.ndarray:
        k = int(self.rng.integers(-self.config.mask_jitter_px, self.config.mask_jitter_px + 1))
        if k == 0:
            return mask
        kernel = np.ones((2 * abs(k) + 1,) * 2, np.uint8)
        op = cv2.dilate if k > 0 else cv2.erode
        out = op(mask.astype(np.uint8), kernel).astype(bool)
        return out if out.sum() > 50 else mask

    def _augment(self, crops: torch.Tensor) -> torch.Tensor:
        B = crops.shape[0]
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        gain = 1.0 + 0.25 * torch.randn(B, 3, 1, 1, generator=gen).clamp(-2, 2)
        bias = 0.08 * torch.randn(B, 1, 1, 1, generator=gen)
        out = crops * gain + bias
        grey = out.mean(1, keepdim=True)
        sat = torch.rand(B, 1, 1, 1, generator=gen) * 0.8 + 0.6
        out = grey + (out - grey) * sat
        blur = torch.rand(B, generator=gen) < 0.3
        if bool(blur.any()):
            out[blur] = torch.nn.functional.avg_pool2d(out[blur], 3, stride=1, padding=1, count_include_pad=False)
        out = out + torch.randn(out.shape, generator=gen) * (torch.rand(B, 1, 1, 1, generator=gen) * 0.04)
        return out.clamp(0.0, 1.0)

    # -- a batch --------------------------------------------------------------------------------

    def sample_batch(self, batch_size: int) -> TrainingBatch:
        """Render ``batch_size`` samples (see :class:`TrainingBatch`)."""
        S, g = self.net_config.crop_size_px, self.net_config.grid_size
        cfg = self.config
        R_ = len(self.angles)
        crops, det_masks, gt_xyz, gt_vis, t_rgb, t_xyz, t_mask = [], [], [], [], [], [], []
        K_crops, T_gts, T_inits, centers, radii = [], [], [], [], []
        for _ in range(batch_size):
            scene = self._scene()
            i, K, T_cam, rgb, xyz, visible = scene.index, scene.K, scene.T_cam_target, scene.rgb, scene.xyz, scene.visible
            tc = self.crops[i]
            det = self._jitter_mask(visible)
            R_cc, focal = crop_cameras(K, [mask_outline(det)], S, cfg.templates.crop_margin_fraction)
            if cfg.domain_randomization is not None:
                dr = cfg.domain_randomization
                region = crop_footprint(K, R_cc[0], float(focal[0]), S, rgb.shape[:2], dr.footprint_margin_px)
                rgb = randomize_appearance(rgb, scene.depth, scene.instance, K, region, set(scene.untextured_labels), self.appearance_rng, dr)
            image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
            crop, det_grid = crop_detections(image, torch.from_numpy(det)[None].float(), K, R_cc, focal, S, g)
            Kt, Rt, ft = torch.from_numpy(K), torch.from_numpy(R_cc), torch.from_numpy(focal)
            xyz_img = torch.from_numpy((xyz - tc.sphere_center_obj_m) / tc.sphere_radius_m).float().permute(2, 0, 1)[None]
            xyz_crop, vis_crop = crop_images(xyz_img, torch.from_numpy(visible)[None], Kt, Rt, ft, S, (0, 0, 0), return_masks=True)
            T_crop = np.eye(4)
            T_crop[:3] = R_cc[0].T @ T_cam[:3]
            order, best_sym = closest_hypotheses(T_crop[:3, :3], tc, self.angles, self.models[i].symmetries)
            h = int(order[1] if self.rng.random() < cfg.second_best_probability else order[0])
            t, r = divmod(h, R_)
            if self.models[i].symmetries is not None and len(self.models[i].symmetries):
                S_sym = self.models[i].symmetries[best_sym[h]]
                T_crop = T_crop @ S_sym
                # Coordinates of the twin: S^-1 X, in normalized units (c is not moved by a
                # symmetry of the bounding sphere only approximately, so go through metres).
                X = xyz_crop[0].permute(1, 2, 0).numpy().astype(np.float64) * tc.sphere_radius_m + tc.sphere_center_obj_m
                S_inv = np.linalg.inv(S_sym)
                X = X @ S_inv[:3, :3].T + S_inv[:3, 3]
                xyz_crop = torch.from_numpy((X - tc.sphere_center_obj_m) / tc.sphere_radius_m).float().permute(2, 0, 1)[None]
            angle = torch.tensor([self.angles[r]])
            t_rgb.append(rotate_images(tc.rgb[t:t + 1], angle))
            t_xyz.append(to_grid(rotate_images(tc.xyz_norm[t:t + 1], angle), g))
            t_mask.append(to_grid(rotate_images(tc.mask[t:t + 1], angle), g))
            crops.append(crop)
            det_masks.append(det_grid)
            gt_xyz.append(to_grid(xyz_crop, g).flatten(2).transpose(1, 2))
            gt_vis.append((to_grid(vis_crop[:, None], g) > 0.99).float().flatten(1))
            K_crops.append(crop_intrinsics(focal, S)[0])
            T_gts.append(T_crop)
            T_inits.append(hypothesis_poses_in_crop(tc.T_crop_object[t], tc.focal_px[t], self.angles[r], focal[0], tc.sphere_center_obj_m))
            centers.append(tc.sphere_center_obj_m)
            radii.append(tc.sphere_radius_m)
        return TrainingBatch(
            crops=self._augment(torch.cat(crops)), detection_mask=torch.cat(det_masks), gt_xyz_norm=torch.cat(gt_xyz),
            gt_visible=torch.cat(gt_vis), template_rgb=torch.cat(t_rgb), template_xyz_norm=torch.cat(t_xyz),
            template_mask=torch.cat(t_mask), K_crop=np.stack(K_crops), T_crop_object_gt=np.stack(T_gts),
            T_crop_object_init=np.stack(T_inits), sphere_center_obj_m=np.stack(centers), sphere_radius_m=np.array(radii),
        )

