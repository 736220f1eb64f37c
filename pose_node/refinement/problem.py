"""Building feature-metric alignment problems from views and candidate poses (ROS-free).

Two halves, so that the observation side is computed once per object and frame while the render
side is redone for every start pose and round:

- :meth:`ProblemBuilder.observe`: for each candidate and each view where the object projects into
  the image, a crop camera framing the object's bounding box at the candidate pose (the
  detector's crop convention, :func:`pose_node.core.crop.crop_camera`), the observed
  crop (:func:`warp_to_crops`), its dense features and (RGB-D) its crop-frame depth.
- :meth:`ProblemBuilder.problem`: render the object at a pose in each of those crop cameras, over
  the observed crop (so features near the silhouette see the same background as the
  observation), extract the render's features with the same backbone, and lift the feature cells
  inside the rendered mask to object-frame points with the rendered object coordinates (XYZ
  output: no depth unprojection needed).

Features: the backbone's maps at ``feature_strides`` (EfficientNet-Lite0 strides 4 and 8 by
default), each L2-normalized per cell, the coarser ones upsampled to the finest grid, concatenated
and divided by sqrt(number of maps): one unit-norm descriptor per cell of the finest grid.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pose_node.core.crop import crop_camera, crop_intrinsics
from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import invert_rigid
from pose_node.core.types import ObjectModel, View
from pose_node.correspondence.estimator import crop_depth_at
from pose_node.features.backbones import Backbone, stride_key
from pose_node.refinement.alignment import AlignmentProblem, sample_map


@dataclass(frozen=True)
class CropConfig:
    """Crop cameras and sampled points of the refinement.

    Attributes:
        size_px: side S of the crop cameras, pixels.
        margin_fraction: free border of the crop on each side, fraction of S.
        feature_strides: backbone maps used (module docstring); the first is the finest.
        min_inside_fraction: a view is used when at least this share of the object's projected
            bounding box lies inside its image.
        erode_px: points closer than this to the rendered silhouette are not sampled.
        max_points_per_view: at most this many points per view (evenly subsampled).
    """

    size_px: int = 128
    margin_fraction: float = 0.1
    feature_strides: tuple[int, ...] = (4, 8)
    min_inside_fraction: float = 0.3
    erode_px: int = 1
    max_points_per_view: int = 200

    def __post_init__(self) -> None:
        if self.size_px < 32 or not self.feature_strides or list(self.feature_strides) != sorted(self.feature_strides):
            raise InvalidInputError(f"CropConfig: need size_px >= 32 and ascending feature_strides, got {self.size_px}, {self.feature_strides}")
        if self.size_px % self.feature_strides[-1]:
            raise InvalidInputError(f"CropConfig.size_px {self.size_px} must be a multiple of the largest stride {self.feature_strides[-1]}")
        if not 0 < self.min_inside_fraction <= 1 or self.erode_px < 0 or self.max_points_per_view < 6:
            raise InvalidInputError("CropConfig: need min_inside_fraction in (0, 1], erode_px >= 0, max_points_per_view >= 6")


@dataclass
class Observations:
    """The observation side of every (candidate, view) slot.

    Attributes:
        slots: per candidate, the view indices it is observed in (possibly empty).
        slot_offset: per candidate, index of its first slot in the stacked arrays below.
        K_crop: (M, 3, 3) float64. T_crop_world: (M, 4, 4) float64.
        R_camera_crop: (M, 3, 3) crop camera orientations in their cameras.
        rgb: (M, S, S, 3) uint8 observed crops.
        features: (M, C, h, w) dense features of the observed crops.
        depth: (M, S, S) crop-frame depth, metres (NaN: none), or None in RGB mode.
        derived: what later steps compute from these once per frame (the refiner's verification
            grid), keyed by the step.
    """

    slots: list[list[int]]
    slot_offset: list[int]
    K_crop: torch.Tensor
    T_crop_world: torch.Tensor
    R_camera_crop: np.ndarray
    rgb: np.ndarray
    features: torch.Tensor
    depth: torch.Tensor | None
    derived: dict = field(default_factory=dict)


def dense_features(backbone: Backbone, images: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    """Unit-norm dense descriptors on the finest stride's grid (module docstring).

    Args:
        images: (M, 3, S, S) float RGB in [0, 1] on the backbone's device.
    Returns:
        (M, C, S / s0, S / s0) float32, C = sum of the maps' channels.
    """
    maps = backbone.dense_maps(images, max(strides))
    finest = maps[stride_key(strides[0])]
    size = finest.shape[-2:]
    parts = []
    for s in strides:
        m = F.normalize(maps[stride_key(s)].float(), dim=1)
        if m.shape[-2:] != size:
            m = F.normalize(F.interpolate(m, size=size, mode="bilinear", align_corners=False), dim=1)
        parts.append(m)
    return torch.cat(parts, 1) / math.sqrt(len(parts))


def warp_to_crops(image: np.ndarray, K: np.ndarray, R_camera_crop: np.ndarray, focal_px: np.ndarray, size_px: int,
                  max_supersampling: int = 4) -> np.ndarray:
    """Crop-camera views of one image by homography (OpenCV): the detector's crop
    (:func:`pose_node.core.crop.crop_images`, supersampled and box-averaged so large
    objects do not alias), computed in C++ for a fraction of the CPU time.

    A crop camera shares the image camera's centre, so crop pixels map to image pixels by the
    homography ``K R K_crop^-1``. A crop that zooms out by ``s`` is warped at ``k = ceil(s)``
    times its size (at most ``max_supersampling``) and area-averaged down.

    Args:
        image: (H, W, 3) uint8. K: (3, 3). R_camera_crop: (M, 3, 3). focal_px: (M,). size_px: S.
    Returns:
        (M, S, S, 3) uint8 (black outside the image).
    """
    f_img = 0.5 * (K[0, 0] + K[1, 1])
    out = np.zeros((len(focal_px), size_px, size_px, 3), np.uint8)
    for m, (R, f) in enumerate(zip(R_camera_crop, focal_px)):
        k = int(min(max_supersampling, max(1, math.ceil(f_img / f))))
        n = size_px * k
        # Sub-sample j sits at crop coordinate (j + 0.5) / k - 0.5, as in crop_images.
        K_sub = crop_intrinsics(np.array(f * k), n)
        H = K @ R @ np.linalg.inv(K_sub)
        warped = cv2.warpPerspective(image, H, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        out[m] = warped if k == 1 else cv2.resize(warped, (size_px, size_px), interpolation=cv2.INTER_AREA)
    return out


def _box_corners(model: ObjectModel) -> np.ndarray:
    lo, hi = model.bbox_min_max
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], dtype=np.float64)


class ProblemBuilder:
    """Observations and alignment problems for one backbone and one renderer (module docstring).

    Args:
        models: object id -> model.
        renderer: a :class:`~pose_node.render.renderer.Renderer` of size S x S.
        backbone: dense feature extractor.
        config: crops and points.
    """

    def __init__(self, models: dict[int, ObjectModel], renderer, backbone: Backbone, config: CropConfig = CropConfig()) -> None:
        if (renderer.width, renderer.height) != (config.size_px, config.size_px):
            raise InvalidInputError(f"ProblemBuilder: renderer is {renderer.width}x{renderer.height}, crops are {config.size_px}")
        self.models = models
        self.renderer = renderer
        self.backbone = backbone
        self.config = config
        self._handles: dict[int, int] = {}
        self._corners = {o: _box_corners(m) for o, m in models.items()}

    def handle(self, object_id: int) -> int:
        if object_id not in self._handles:
            self._handles[object_id] = self.renderer.add_object(self.models[object_id])
        return self._handles[object_id]

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def visible_views(self, object_id: int, T_world_object: np.ndarray, views: Sequence[View]) -> list[tuple[int, np.ndarray, float]]:
        """Views where the object's bounding box projects mostly into the image, in front of the camera.

        Returns:
            (view index, R_camera_crop (3, 3), crop focal px) per usable view.
        """
        cfg = self.config
        out = []
        for v, view in enumerate(views):
            cam = view.camera
            uv, z = cam.project(self._corners[object_id] @ T_world_object[:3, :3].T + T_world_object[:3, 3])
            if not (z > 0.01).all():
                continue
            lo, hi = uv.min(0), uv.max(0)
            area = float(np.prod(np.maximum(hi - lo, 1e-6)))
            ilo, ihi = np.maximum(lo, -0.5), np.minimum(hi, [cam.width - 0.5, cam.height - 0.5])
            inside = float(np.prod(np.maximum(ihi - ilo, 0.0))) / area
            if inside < cfg.min_inside_fraction:
                continue
            R, f = crop_camera(cam.K, uv, cfg.size_px, cfg.margin_fraction)
            out.append((v, R, f))
        return out

    def observe(self, views: Sequence[View], object_ids: Sequence[int], T_world_object: Sequence[np.ndarray],
                with_depth: bool) -> Observations:
        """Crops, features and depth of every candidate in every view that sees it.

        Args:
            views: the frame's views (``camera.T_world_camera`` set).
            object_ids, T_world_object: per candidate, the object and the pose framing its crops.
            with_depth: crop the views' depth (every view must have it).
        Raises:
            InvalidInputError: ``with_depth`` and a view without depth.
        """
        cfg = self.config
        S = cfg.size_px
        if with_depth and any(v.depth is None for v in views):
            raise InvalidInputError("refinement in RGB-D mode: a view has no depth image")
        slots, offsets = [], []
        per_view: dict[int, list[tuple[int, np.ndarray, float]]] = {}  # view -> (slot, R, f)
        m = 0
        for c, (obj, T) in enumerate(zip(object_ids, T_world_object)):
            vis = self.visible_views(obj, np.asarray(T, dtype=np.float64), views)
            offsets.append(m)
            slots.append([v for v, _, _ in vis])
            for v, R, f in vis:
                per_view.setdefault(v, []).append((m, R, f))
                m += 1
        M = m
        R_all = np.zeros((M, 3, 3))
        f_all = np.zeros(M)
        T_cw = np.zeros((M, 4, 4))
        rgb = np.zeros((M, S, S, 3), np.uint8)
        depth = torch.full((M, S, S), float("nan"), dtype=torch.float64) if with_depth else None
        uv_pixels = np.stack(np.meshgrid(np.arange(S, dtype=np.float64), np.arange(S, dtype=np.float64), indexing="xy"), -1).reshape(-1, 2)
        for v, items in per_view.items():
            view = views[v]
            idx = [i for i, _, _ in items]
            R = np.stack([r for _, r, _ in items])
            f = np.array([ff for _, _, ff in items])
            R_all[idx], f_all[idx] = R, f
            T_camera_world = invert_rigid(view.camera.T_world_camera)
            for i, r in zip(idx, R):
                T_cw[i] = np.eye(4)
                T_cw[i, :3, :3] = r.T @ T_camera_world[:3, :3]
                T_cw[i, :3, 3] = r.T @ T_camera_world[:3, 3]
            rgb[idx] = warp_to_crops(view.rgb, np.asarray(view.camera.K, dtype=np.float64), R, f, S)
            if with_depth:
                d = crop_depth_at(view.depth, view.camera.K, R, f, S, uv_pixels)
                depth[idx] = torch.from_numpy(d.reshape(len(idx), S, S))
        features = dense_features(self.backbone, self._to_images(rgb), cfg.feature_strides) if M else \
            torch.zeros(0, 1, 1, 1, device=self.device)
        return Observations(slots, offsets, torch.from_numpy(crop_intrinsics(f_all, S)), torch.from_numpy(T_cw), R_all,
                            rgb, features, None if depth is None else depth.to(self.device))

    def _to_images(self, rgb: np.ndarray) -> torch.Tensor:
        """(M, S, S, 3) uint8 crops -> (M, 3, S, S) float in [0, 1] on the backbone's device."""
        return torch.from_numpy(rgb).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)

    def problem(self, obs: Observations, candidates: Sequence[int], object_ids: Sequence[int],
                T_world_object: Sequence[np.ndarray], view_mask: Sequence[Sequence[bool]] | None = None) -> AlignmentProblem:
        """Render each start pose in its candidate's crops and lift the render's features.

        Args:
            obs: from :meth:`observe`.
            candidates: per problem (start), the candidate whose observation slots it uses.
            object_ids: per problem, the object. T_world_object: per problem, the pose to render at.
            view_mask: per problem, which of its candidate's slots to use (None: all).
        Returns:
            B = len(candidates) problems; V = the most slots of any problem.
        """
        cfg = self.config
        S, s0 = cfg.size_px, cfg.feature_strides[0]
        B = len(candidates)
        slot_lists = []
        for b, c in enumerate(candidates):
            keep = view_mask[b] if view_mask is not None else [True] * len(obs.slots[c])
            slot_lists.append([obs.slot_offset[c] + k for k, ok in enumerate(keep) if ok])
        V = max([len(s) for s in slot_lists] + [1])
        # Render every (problem, slot) pair, grouped by object (one draw call per group).
        pairs = [(b, k, m) for b, sl in enumerate(slot_lists) for k, m in enumerate(sl)]
        P = len(pairs)
        xyz = np.zeros((P, S, S, 3), np.float32)
        depth_r = np.zeros((P, S, S), np.float32)
        rgb_r = np.zeros((P, S, S, 3), np.uint8)
        by_object: dict[int, list[int]] = {}
        for p, (b, _, _) in enumerate(pairs):
            by_object.setdefault(int(object_ids[b]), []).append(p)
        K_np = obs.K_crop.numpy()
        T_cw_np = obs.T_crop_world.numpy()
        for obj, ps in by_object.items():
            ms = [pairs[p][2] for p in ps]
            T_co = np.stack([T_cw_np[m] @ np.asarray(T_world_object[pairs[p][0]], dtype=np.float64) for p, m in zip(ps, ms)])[:, None]
            # The light follows the view's camera (as in a render of the whole image), so in a
            # crop camera it comes from the camera's direction, not the crop's.
            light = np.einsum("mji,j->mi", obs.R_camera_crop[ms], np.asarray(self.renderer.settings.light_dir_cam, dtype=np.float64))
            out = self.renderer.render(K_np[ms], T_co, [self.handle(obj)], outputs=("rgb", "xyz", "depth"),
                                       light_dir_cam=light, background=obs.rgb[ms])
            xyz[ps], depth_r[ps], rgb_r[ps] = out.xyz, out.depth, out.rgb
        dev = self.device
        render_features = dense_features(self.backbone, self._to_images(rgb_r), cfg.feature_strides) if P else None
        h = w = S // s0
        centres = (torch.arange(h) * s0 + (s0 - 1) / 2.0)
        pix = centres.round().long().clamp(0, S - 1)  # the rendered pixel read for each cell
        mask = torch.from_numpy(depth_r > 0)
        if cfg.erode_px > 0 and P:
            k = 2 * cfg.erode_px + 1
            mask = -F.max_pool2d(-(mask.float()[:, None]), k, stride=1, padding=cfg.erode_px)[:, 0] > 0.5
        cell_mask = mask[:, pix][:, :, pix]  # (P, h, w)
        cell_xyz = torch.from_numpy(xyz)[:, pix][:, :, pix]  # (P, h, w, 3)
        counts = cell_mask.flatten(1).sum(1)
        N = int(min(cfg.max_points_per_view, int(counts.max()) if P else 0)) or 1
        C = obs.features.shape[1]
        points = torch.zeros(B, V, N, 3)
        feats = torch.zeros(B, V, N, C, device=dev)
        valid = torch.zeros(B, V, N, dtype=torch.bool)
        obs_feat = torch.zeros(B, V, C, h, w, device=dev)
        K_crop = torch.eye(3, dtype=torch.float64).repeat(B, V, 1, 1)
        T_crop_world = torch.eye(4, dtype=torch.float64).repeat(B, V, 1, 1)
        T_crop_world[..., 2, 3] = -1.0  # padding slots: every point behind the camera
        obs_depth = torch.full((B, V, S, S), float("nan"), dtype=torch.float64, device=dev) if obs.depth is not None else None
        for p, (b, k, m) in enumerate(pairs):
            idx = torch.nonzero(cell_mask[p].flatten(), as_tuple=False)[:, 0]
            if len(idx) > N:
                idx = idx[torch.linspace(0, len(idx) - 1, N).round().long()]
            n = len(idx)
            points[b, k, :n] = cell_xyz[p].reshape(-1, 3)[idx]
            uv = torch.stack([pix[idx % w], pix[idx // w]], -1).to(dev, torch.float32)
            feats[b, k, :n] = sample_map(render_features[p], uv, s0)
            valid[b, k, :n] = True
            obs_feat[b, k] = obs.features[m]
            K_crop[b, k] = obs.K_crop[m]
            T_crop_world[b, k] = obs.T_crop_world[m]
            if obs_depth is not None:
                obs_depth[b, k] = obs.depth[m]
        return AlignmentProblem(points.to(dev), feats, valid.to(dev), obs_feat, s0, K_crop.to(dev), T_crop_world.to(dev), obs_depth)


__all__ = ["CropConfig", "Observations", "ProblemBuilder", "dense_features", "warp_to_crops"]
