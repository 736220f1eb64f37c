"""Per-detection pose with covariance: correspondence network + probabilistic PnP.

For the D detections of one view:

1. crop cameras around the detection masks (the detector's crop convention,
   :func:`pose_node.core.crop.crop_camera`), unmasked S x S crops, the masks on the grid;
2. the crops are encoded once; each is compared with its detector's best ``num_templates``
   templates, each turned to ``in_plane_rotations`` angles (:mod:`pose_node.correspondence.
   hypotheses`; template encodings are computed once per object and kept), and the
   ``num_hypotheses`` best by :func:`~pose_node.correspondence.network.mean_best_cosine` go through
   the head: object coordinates, weights and a mask per crop cell;
3. per hypothesis, :func:`~pose_node.correspondence.pnp.solve_pnp` starts from the hypothesis'
   pose and from a RANSAC-EPnP solve of the best hypothesis' correspondences and keeps the
   better; with depth
   (``use_depth`` and a depth image), each cell seen as the object adds a depth residual (the
   RGB-D variant). The detection's pose is the hypothesis with the highest weighted inlier share
   (:func:`inlier_share`; weights and costs of different hypotheses are not comparable, their
   agreement with their own correspondences is);
4. the covariance is the solver's ``(J^T W J)^-1``, widened by the other hypotheses' solutions in
   proportion to how well they explain their correspondences (:func:`hypothesis_mixture_covariance`),
   times the calibrated ``covariance_scale``; pose and covariance are turned from the crop camera
   into the camera and the world frame (ROS convention, :func:`pose_node.core.geometry.transform_covariance`).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pose_node.core.crop import box_outline, crop_cameras, crop_images, crop_intrinsics, mask_outline
from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, pose_difference, transform_covariance
from pose_node.core.types import Detection, PoseEstimate, View
from pose_node.correspondence.backends import CorrespondenceBackend
from pose_node.correspondence.hypotheses import (
    TemplateCrops,
    crop_templates,
    hypothesis_poses_in_crop,
    in_plane_angles,
    rotate_images,
)
from pose_node.correspondence.network import cell_centres_px, masked_cosine, mean_best_cosine, to_grid
from pose_node.core.projection import project_points
from pose_node.correspondence.pnp import PnPConfig, initial_poses_ransac, solve_pnp
from pose_node.onboarding.templates import ObjectTemplates

logger = logging.getLogger(__name__)

# Template crops (templates x in-plane angles) per network call when encoding an object's
# templates. One call with all of them (42 x 8 = 336 crops) grew ONNX Runtime's CPU arena to
# about 3 GB, which it keeps for the life of the process; 32 per call peaks near 0.7 GB and is
# faster on one core (1.8 s instead of 3.1 s for 336 crops on the 2-core development machine).
TEMPLATE_ENCODE_BATCH = 32


@dataclass(frozen=True)
class CorrespondenceConfig:
    """Settings of the per-detection pose stage.

    Attributes:
        num_templates: the detector's best templates matched per detection.
        in_plane_rotations: angles per template (the network was trained with 8).
        num_hypotheses: best-matching (template, angle) pairs solved per detection.
        use_depth: add depth residuals where the view has depth (RGB-D variant).
        depth_weight: weight of a depth residual relative to its point's 2D weights.
        min_mask_probability: cells the network does not see as the object carry no depth residual.
        inlier_threshold_px: reprojection error under which a correspondence counts as an inlier
            when hypotheses are compared.
        hypothesis_sharpness: how much the covariance takes the other hypotheses into account
            (:func:`hypothesis_mixture_covariance`; ``inf``: not at all).
        covariance_scale: multiplies the solver's covariance (calibrated on validation scenes; see
            the weights' metadata). None: the weights' value for the mode, else 1.
        pnp: the solver.
    """

    num_templates: int = 3
    in_plane_rotations: int = 8
    num_hypotheses: int = 3
    use_depth: bool = True
    depth_weight: float = 1.0
    min_mask_probability: float = 0.5
    inlier_threshold_px: float = 2.0
    hypothesis_sharpness: float = 10.0
    covariance_scale: float | None = None
    pnp: PnPConfig = field(default_factory=PnPConfig)

    def __post_init__(self) -> None:
        for name in ("num_templates", "in_plane_rotations", "num_hypotheses"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"CorrespondenceConfig.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class CameraPose:
    """A detection's pose in its camera.

    Attributes:
        detection: the detection it came from.
        T_camera_object: (4, 4) metres. covariance: (6, 6) ROS convention, camera axes.
        valid: the solver converged to a finite pose with an invertible Hessian.
        inlier_share: weighted share of correspondences within the inlier threshold.
    """

    detection: Detection
    T_camera_object: np.ndarray
    covariance: np.ndarray
    valid: bool
    inlier_share: float


@dataclass(frozen=True)
class _Encoded:
    """A template's encodings at every in-plane angle (R angles)."""

    descriptors: torch.Tensor  # (R, D, g, g)
    xyz_norm: torch.Tensor  # (R, 3, g, g)
    mask: torch.Tensor  # (R, 1, g, g)


def inlier_share(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor, T: torch.Tensor,
                 threshold_px: float) -> torch.Tensor:
    """Weighted share of correspondences that a pose reprojects within ``threshold_px``.

    Args:
        x3d: (B, N, 3) m. x2d: (B, N, 2) px. w2d: (B, N, 2). K: (B, 3, 3). T: (B, 4, 4).
    Returns:
        (B,) in [0, 1].
    """
    uv, z = project_points(x3d, T[:, :3, :3], T[:, :3, 3], K, min_depth_m=1e-6)
    inlier = ((uv - x2d).norm(dim=-1) < threshold_px) & (z > 0)
    w = w2d.mean(-1)
    return (w * inlier).sum(-1) / w.sum(-1).clamp_min(1e-12)


class CorrespondenceEstimator:
    """Detections of one view -> poses with covariance (module docstring).

    Args:
        backend: the network (:func:`pose_node.correspondence.backends.create_backend`).
        templates: the onboarded templates of every known object (the detector's).
        config: settings.
        crop_size_px: S of the network.
        covariance_scales: calibrated covariance factor per mode (``rgb``, ``rgbd``) from the
            weights' metadata, used when ``config.covariance_scale`` is None.
    """

    def __init__(self, backend: CorrespondenceBackend, templates: Mapping[int, ObjectTemplates], config: CorrespondenceConfig,
                 crop_size_px: int, covariance_scales: Mapping[str, float] | None = None) -> None:
        self.backend = backend
        self.templates = dict(templates)
        self.config = config
        self.size_px = crop_size_px
        self.grid = crop_size_px // 8
        self.covariance_scales = dict(covariance_scales or {})
        self.angles = in_plane_angles(config.in_plane_rotations)
        self._crops: dict[int, TemplateCrops] = {}
        self._encoded: dict[tuple[int, int], _Encoded] = {}

    @property
    def device(self) -> torch.device:
        return torch.device(self.backend.device)

    # -- templates --------------------------------------------------------------------------------

    def template_crops(self, object_id: int) -> TemplateCrops:
        if object_id not in self._crops:
            if object_id not in self.templates:
                raise InvalidInputError(f"object {object_id}: no templates (known: {sorted(self.templates)})")
            self._crops[object_id] = crop_templates(self.templates[object_id], self.size_px, self.device)
        return self._crops[object_id]

    def encoded_templates(self, object_id: int, indices: Sequence[int]) -> list[_Encoded]:
        """Encodings of templates ``indices`` of an object at every angle (computed once)."""
        missing = [int(i) for i in dict.fromkeys(indices) if (object_id, int(i)) not in self._encoded]
        if missing:
            crops = self.template_crops(object_id)
            R = len(self.angles)
            idx = torch.tensor(missing, device=self.device).repeat_interleave(R)
            angles = torch.from_numpy(np.tile(self.angles, len(missing))).float().to(self.device)
            rgb = rotate_images(crops.rgb[idx], angles)
            # Outside the turned template: the template background, as in the template itself.
            inside = rotate_images(torch.ones_like(crops.mask[idx]), angles)
            bg = torch.tensor(self.templates[object_id].config.background_rgb, dtype=rgb.dtype, device=self.device).view(1, 3, 1, 1) / 255.0
            rgb = rgb + (1.0 - inside) * bg
            xyz = to_grid(rotate_images(crops.xyz_norm[idx], angles), self.grid)
            mask = to_grid(rotate_images(crops.mask[idx], angles), self.grid)
            descriptors = torch.cat([self.backend.encode(rgb[i:i + TEMPLATE_ENCODE_BATCH])[0]
                                     for i in range(0, len(rgb), TEMPLATE_ENCODE_BATCH)])
            for k, i in enumerate(missing):
                s = slice(k * R, (k + 1) * R)
                self._encoded[(object_id, i)] = _Encoded(descriptors[s], xyz[s], mask[s])
        return [self._encoded[(object_id, int(i))] for i in indices]

    def warm_up(self, object_ids: Sequence[int] | None = None) -> None:
        """Encode every template of the objects now (so no frame pays for it)."""
        for object_id in object_ids if object_ids is not None else sorted(self.templates):
            self.encoded_templates(object_id, range(self.templates[object_id].num_templates))

    # -- one view ---------------------------------------------------------------------------------

    def estimate_view(self, view: View, detections: Sequence[Detection], *, num_hypotheses: int | None = None
                      ) -> tuple[list[CameraPose], dict[str, float]]:
        """Poses of a view's detections in its camera.

        Args:
            view: the image (and depth). detections: of this view.
            num_hypotheses: hypotheses solved per detection (None: ``config.num_hypotheses``; a
                time budget passes fewer).
        Returns:
            one :class:`CameraPose` per detection (in order) and milliseconds per step
            (``correspondence`` for the network, ``pnp`` for the solver).
        Raises:
            InvalidInputError: a detection of an unknown object or without templates indices, or
                ``num_hypotheses < 1``.
        """
        H = self.config.num_hypotheses if num_hypotheses is None else int(num_hypotheses)
        if H < 1:
            raise InvalidInputError(f"num_hypotheses: must be >= 1, got {H}")
        timings = {"correspondence": 0.0, "pnp": 0.0}
        if not detections:
            return [], timings
        for det in detections:
            if det.object_id not in self.templates:
                raise InvalidInputError(f"detection of object {det.object_id}: no templates (known: {sorted(self.templates)})")
            if len(det.template_indices) == 0:
                raise InvalidInputError(f"detection of object {det.object_id}: no template_indices (from the detector)")
        started = time.perf_counter()
        cfg = self.config
        S, g, dev = self.size_px, self.grid, self.device
        H_img, W_img = view.rgb.shape[:2]
        K = np.asarray(view.camera.K, dtype=np.float64)
        outlines = [mask_outline(d.mask) if d.mask is not None and d.mask.any() else box_outline(d.box_xyxy) for d in detections]
        tc0 = self.templates[detections[0].object_id].config
        R_cc, focal = crop_cameras(K, outlines, S, tc0.crop_margin_fraction)
        D = len(detections)
        image = torch.from_numpy(np.ascontiguousarray(view.rgb)).to(dev).permute(2, 0, 1)[None].float().div_(255.0)
        det_masks = torch.stack([
            torch.from_numpy(np.array(d.mask, dtype=bool)).to(dev) if d.mask is not None else _box_mask(d.box_xyxy, H_img, W_img, dev) for d in detections
        ]).float()
        crops, det_grid = crop_detections(image, det_masks, K, R_cc, focal, S, g)
        crop_desc, crop_feat = self.backend.encode(crops)

        # Hypotheses: each detection's templates x angles, the best few by descriptor agreement.
        R_ = len(self.angles)
        chosen_desc, chosen_xyz, chosen_mask, inits, centers, radii = [], [], [], [], [], []
        for b, det in enumerate(detections):
            t_idx = np.asarray(det.template_indices, dtype=np.int64)[: cfg.num_templates]
            enc = self.encoded_templates(det.object_id, t_idx)
            desc = torch.cat([e.descriptors for e in enc])  # (T*R, D, g, g)
            xyz = torch.cat([e.xyz_norm for e in enc])
            mask = torch.cat([e.mask for e in enc])
            scores = mean_best_cosine(masked_cosine(crop_desc[b:b + 1], desc[None], mask[None]), det_grid[b:b + 1])[0]
            best = torch.topk(scores, min(H, len(scores))).indices
            best = torch.cat([best, best[-1:].expand(H - len(best))])
            chosen_desc.append(desc[best])
            chosen_xyz.append(xyz[best])
            chosen_mask.append(mask[best])
            tc = self.template_crops(det.object_id)
            h = best.cpu().numpy()
            t_sel, r_sel = t_idx[h // R_], h % R_
            inits.append(hypothesis_poses_in_crop(tc.T_crop_object[t_sel], tc.focal_px[t_sel], self.angles[r_sel],
                                                  np.full(len(h), focal[b]), tc.sphere_center_obj_m))
            centers.append(tc.sphere_center_obj_m)
            radii.append(tc.sphere_radius_m)
        out = self.backend.head(crop_desc, crop_feat, det_grid, torch.stack(chosen_desc), torch.stack(chosen_xyz), torch.stack(chosen_mask))
        timings["correspondence"] = (time.perf_counter() - started) * 1e3

        # The solver runs on the CPU in float64 (the one host hop of this stage): D x H problems of
        # N points are too small for a GPU to pay off, and the RANSAC start is OpenCV.
        started = time.perf_counter()
        N = g * g
        f64 = torch.float64
        center = torch.from_numpy(np.stack(centers)).to(f64)
        radius = torch.tensor(radii, dtype=f64)
        x3d = (center[:, None, None] + radius[:, None, None, None] * out.xyz_norm.detach().cpu().to(f64)).reshape(D * H, N, 3)
        w2d = out.weights.detach().cpu().to(f64).reshape(D * H, N, 2)
        x2d = cell_centres_px(g, dtype=f64)[None].expand(D * H, N, 2)
        K_crop = torch.from_numpy(crop_intrinsics(focal, S)).repeat_interleave(H, 0)
        depth = None
        if cfg.use_depth and view.depth is not None:
            mask_prob = torch.sigmoid(out.mask_logit.detach().cpu().to(f64))  # (D, N)
            z = crop_cell_depth(view.depth, K, R_cc, focal, S, g)  # (D, N)
            z = torch.where((mask_prob >= cfg.min_mask_probability) & (det_grid.cpu().reshape(D, N) >= 0.5), z, torch.nan)
            depth = z.repeat_interleave(H, 0)
        T_hyp = torch.from_numpy(np.stack(inits)).to(f64).reshape(D * H, 4, 4)
        # RANSAC (the costly start, on the CPU) only on each detection's best-matching hypothesis;
        # its pose is the second start of every hypothesis of that detection.
        best = torch.arange(D) * H
        T_ransac, ransac_ok = initial_poses_ransac(x3d[best], x2d[best], w2d[best], K_crop[best], cfg.pnp)
        T_ransac = torch.where(ransac_ok[:, None, None], T_ransac.to(f64), T_hyp[best]).repeat_interleave(H, 0)
        pnp_config = cfg.pnp if depth is None else _with_depth_weight(cfg.pnp, cfg.depth_weight)
        result = solve_pnp(x3d, x2d, w2d, K_crop, torch.stack([T_hyp, T_ransac], 1), depth_m=depth, config=pnp_config)
        share = inlier_share(x3d, x2d, w2d, K_crop, result.T_camera_object, cfg.inlier_threshold_px)
        share = torch.where(result.valid, share, torch.full_like(share, -1.0)).reshape(D, H)
        pick = share.argmax(1)
        rows = torch.arange(D) * H + pick
        T_crop = result.T_camera_object[rows].numpy()
        cov_crop = hypothesis_mixture_covariance(result.T_camera_object.reshape(D, H, 4, 4), result.covariance.reshape(D, H, 6, 6),
                                                 share, pick, cfg.hypothesis_sharpness)
        valid = result.valid[rows].numpy()
        scale = self._covariance_scale(view.depth is not None and cfg.use_depth)
        R_cc_t = torch.from_numpy(R_cc)
        cov_cam = transform_covariance(cov_crop * scale, Pose(R_cc_t, torch.zeros(D, 3, dtype=f64))).numpy()
        poses = []
        for b, det in enumerate(detections):
            T_cam = np.eye(4)
            T_cam[:3, :3] = R_cc[b] @ T_crop[b, :3, :3]
            T_cam[:3, 3] = R_cc[b] @ T_crop[b, :3, 3]
            poses.append(CameraPose(det, T_cam, cov_cam[b], bool(valid[b]), float(share[b, pick[b]])))
        timings["pnp"] = (time.perf_counter() - started) * 1e3
        return poses, timings

    def _covariance_scale(self, with_depth: bool) -> float:
        if self.config.covariance_scale is not None:
            return float(self.config.covariance_scale)
        return float(self.covariance_scales.get("rgbd" if with_depth else "rgb", 1.0))

    def to_world(self, view: View, poses: Sequence[CameraPose], first_instance_id: int = 0) -> list[PoseEstimate]:
        """World-frame estimates of valid camera poses (``view.camera.T_world_camera``)."""
        T_wc = np.asarray(view.camera.T_world_camera, dtype=np.float64)
        out = []
        for k, p in enumerate(q for q in poses if q.valid):
            cov = transform_covariance(torch.from_numpy(p.covariance), Pose.from_matrix(T_wc)).numpy()
            out.append(PoseEstimate(
                object_id=p.detection.object_id, instance_id=first_instance_id + k, T_world_object=T_wc @ p.T_camera_object,
                covariance=0.5 * (cov + cov.T), score=float(p.detection.score), view_indices=(p.detection.view_index,),
            ))
        return out


def hypothesis_mixture_covariance(T: torch.Tensor, covariance: torch.Tensor, share: torch.Tensor, pick: torch.Tensor,
                                  sharpness: float) -> torch.Tensor:
    """Covariance about the chosen pose of the mixture of all hypotheses' solutions.

    When another hypothesis explains the correspondences almost as well (a flipped box, a
    near-symmetric view), the chosen pose may be the wrong one; moment-matching the mixture
    ``sum_h p_h N(T_h, Sigma_h)`` about the chosen pose, ``sum_h p_h (Sigma_h + d_h d_h^T)`` with
    ``d_h`` the ROS-convention difference of ``T_h`` from the chosen pose and
    ``p_h ∝ exp(sharpness * share_h)``, widens the covariance by what that doubt is worth.

    Args:
        T: (D, H, 4, 4) solutions. covariance: (D, H, 6, 6). share: (D, H) inlier shares (< 0:
            invalid hypothesis). pick: (D,) chosen hypothesis. sharpness: see above (0: all equal;
            large: the chosen hypothesis' own covariance).
    Returns:
        (D, 6, 6).
    """
    D = T.shape[0]
    rows = torch.arange(D)
    if math.isinf(sharpness):
        return covariance[rows, pick]
    chosen = Pose(T[rows, pick, :3, :3][:, None], T[rows, pick, :3, 3][:, None])
    d = pose_difference(Pose(T[..., :3, :3], T[..., :3, 3]), chosen)  # (D, H, 6)
    valid = (share >= 0) & torch.isfinite(covariance).flatten(2).all(-1) & torch.isfinite(d).all(-1)
    logits = torch.where(valid, sharpness * share, torch.full_like(share, -torch.inf))
    p = torch.softmax(logits, dim=1)
    terms = torch.where(valid[..., None, None], covariance + d[..., :, None] * d[..., None, :], torch.zeros_like(covariance))
    return (p[..., None, None] * terms).sum(1)


def crop_detections(image: torch.Tensor, masks: torch.Tensor, K: np.ndarray, R_camera_crop: np.ndarray, focal_px: np.ndarray,
                    size_px: int, grid_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's input for D detections of one image: unmasked crop-camera crops and the
    detection masks on the grid (what training samples and the stage both feed the network).

    Args:
        image: (1, 3, H, W) float in [0, 1]. masks: (D, H, W) float in [0, 1].
        K: (3, 3) intrinsics. R_camera_crop: (D, 3, 3). focal_px: (D,) (:func:`crop_cameras`).
        size_px: S. grid_size: g.
    Returns:
        crops (D, 3, S, S) and masks (D, 1, g, g), on ``image``'s device.
    """
    D, H, W = masks.shape
    everything = torch.ones(D, H, W, dtype=torch.bool, device=image.device)
    Kt, Rt, ft = torch.from_numpy(np.asarray(K, dtype=np.float64)), torch.from_numpy(R_camera_crop), torch.from_numpy(focal_px)
    # Image and masks through one sampling grid, as one 4-channel image: the same crops as two
    # calls (grid_sample and pooling work channel by channel) without computing the grid twice.
    stacked = torch.cat([image.expand(D, -1, -1, -1), masks[:, None].to(image.dtype)], dim=1)
    crops = crop_images(stacked, everything, Kt, Rt, ft, size_px, (0, 0, 0, 0))
    return crops[:, :3].contiguous(), to_grid(crops[:, 3:], grid_size)


def _with_depth_weight(config: PnPConfig, depth_weight: float) -> PnPConfig:
    return replace(config, depth_weight=depth_weight)


def _box_mask(box_xyxy: np.ndarray, height: int, width: int, device: torch.device) -> torch.Tensor:
    x0, y0, x1, y1 = (int(round(v)) for v in np.asarray(box_xyxy, dtype=np.float64))
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[max(0, y0):min(height, y1), max(0, x0):min(width, x1)] = True
    return mask


def crop_cell_depth(depth_m: np.ndarray, K: np.ndarray, R_camera_crop: np.ndarray, focal_px: np.ndarray, size_px: int,
                    grid_size: int) -> torch.Tensor:
    """Observed depth of each crop cell, along the crop camera's axis (the solver's z).

    Args:
        depth_m: (H, W) metres, 0 or NaN = no measurement. K: (3, 3). R_camera_crop: (D, 3, 3).
        focal_px: (D,). size_px: S. grid_size: g.
    Returns:
        (D, g * g) float64 metres, NaN where there is no measurement or the ray leaves the image.
    """
    uv = cell_centres_px(grid_size, dtype=torch.float64).numpy()
    return torch.from_numpy(crop_depth_at(depth_m, K, R_camera_crop, focal_px, size_px, uv))


def crop_depth_at(depth_m: np.ndarray, K: np.ndarray, R_camera_crop: np.ndarray, focal_px: np.ndarray, size_px: int,
                  uv_crop: np.ndarray) -> np.ndarray:
    """Observed depth at crop pixels, along the crop camera's axis.

    The crop pixel's ray is followed into the image (nearest pixel: no mixing across depth
    edges); the crop-frame depth of the observed point is ``d / r_z`` for a crop ray ``[x, y, 1]``
    whose camera-frame direction has z component ``r_z`` and camera depth ``d``.

    Args:
        depth_m: (H, W) metres, 0 or NaN = no measurement. K: (3, 3). R_camera_crop: (D, 3, 3).
        focal_px: (D,). size_px: S. uv_crop: (N, 2) crop pixels.
    Returns:
        (D, N) float64 metres, NaN where there is no measurement or the ray leaves the image.
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    H, W = depth.shape
    uv = np.asarray(uv_crop, dtype=np.float64)
    rays = np.concatenate([(uv - (size_px - 1) / 2.0)[None] / np.asarray(focal_px)[:, None, None],
                           np.ones((len(focal_px), len(uv), 1))], axis=-1)  # (D, N, 3) crop frame
    cam = rays @ np.swapaxes(np.asarray(R_camera_crop), 1, 2)  # R_cc @ r
    pix = cam @ np.asarray(K).T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint(pix[..., 0] / pix[..., 2])
        v = np.rint(pix[..., 1] / pix[..., 2])
    inside = (cam[..., 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    d = np.full(u.shape, np.nan)
    d[inside] = depth[v[inside].astype(np.int64), u[inside].astype(np.int64)]
    return np.where(np.isfinite(d) & (d > 0), d / np.where(inside, cam[..., 2], 1.0), np.nan)
