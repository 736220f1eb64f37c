"""Model-to-depth registration: pose hypotheses that use geometry only (ROS-free).

In RGB-D the observed depth says where the object's surface is, whatever the image looks like.
For each candidate, the depth pixels of every view's crop that fall near the candidate
(:func:`observed_segment`: within ``segment_radius_diameters`` of its centre, back-projected to
the world with the view's extrinsics) are one partial point cloud of the object seen from all
views at once; the object's model is registered to it from a few starts (:func:`registration_starts`):

- the candidate's rotation and its 180-degree flips about each principal axis of the model
  (through the model's centroid: a flip keeps the silhouette, so the single-view stage confuses
  them most), reduced to one per symmetric equivalence class;
- translation: the first iterations are point-to-point and move the translation only, so the
  start's centroid offset to the observed segment is removed before the rotation is touched.

Method: trimmed, robust point-to-plane ICP in torch (:func:`register`), every start and every
candidate batched (one ``cdist`` per iteration). Why ICP and not a global descriptor method (point
pair features, FPFH + RANSAC): the starts already come within a few centimetres and a flip of
the truth (the association fuses every view's hypotheses), so a local method from a handful of
structured starts covers the ambiguities that matter at a fraction of the cost, with no
descriptor tuning and no randomness; and point-to-plane converges in a few Gauss-Newton steps on
the smooth, partial clouds depth cameras give. Correspondences run from the observation to the
model (each observed point to its nearest model surface sample): every observed object point
lies on the model, while most model points are not seen, so this direction needs no visibility
reasoning. Points of the table or of neighbours are outliers; trimming (keep the closest
``trim_fraction``), a shrinking distance gate and Cauchy weights keep them out.

Outputs are hypotheses, not answers: the verification (:mod:`pose_node.refinement.verification`)
and the feature-metric alignment decide between them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError, check_fields
from pose_node.core.geometry import so3_exp, so3_log
from pose_node.core.types import ObjectModel
from pose_node.refinement.association import closest_equivalent, rotation_angle_deg


@dataclass(frozen=True)
class RegistrationConfig:
    """Model-to-depth ICP (module docstring).

    Attributes:
        enabled: add registered poses as hypotheses in RGB-D.
        segment_radius_diameters: observed points within this many object diameters of the
            candidate's centre belong to its segment.
        max_observed_points: at most this many segment points (evenly subsampled over all views).
        model_points: surface samples of the model (area-weighted, fixed seed).
        iterations: ICP iterations (the first ``translation_only_iterations`` of them point-to-point,
            translation only).
        translation_only_iterations: see ``iterations``.
        trim_fraction: each iteration uses this share of the closest correspondences.
        gate_start_diameters, gate_end_diameters: correspondence distance gate, shrinking
            geometrically from the first value to the second over the iterations (diameters).
        robust_scale_m: smallest Cauchy scale of the point-to-plane residual, metres (it is half
            the distance gate while that is larger).
        inlier_distance_m: an observed point fits when its distance to the model is below this.
        min_points: fewer segment points: no registration.
        rotation_prior: weight of a pull back to the start's rotation, relative to the data's own
            rotation information (``prior x sum of weights x (diameter / 4)^2``): negligible where
            the geometry pins the rotation, decisive about an axis of (near) rotational symmetry,
            where ICP would otherwise drift and lose what the start knew.
        all_cube_rotations: start from all 24 turns of the principal-axis cube, not only the flips.
        max_results: at most this many registered poses per candidate become hypotheses (best fit first).
    """

    enabled: bool = True
    segment_radius_diameters: float = 0.6
    max_observed_points: int = 400
    model_points: int = 600
    iterations: int = 12
    translation_only_iterations: int = 1
    trim_fraction: float = 0.8
    gate_start_diameters: float = 0.3
    gate_end_diameters: float = 0.03
    robust_scale_m: float = 0.005
    inlier_distance_m: float = 0.005
    min_points: int = 30
    rotation_prior: float = 0.01
    all_cube_rotations: bool = False
    max_results: int = 4

    def __post_init__(self) -> None:
        check_fields(self, [
            ("trim_fraction", 0 < self.trim_fraction <= 1), ("segment_radius_diameters", self.segment_radius_diameters > 0),
            ("iterations", self.iterations >= 1),
            ("translation_only_iterations", 0 <= self.translation_only_iterations <= self.iterations),
            ("max_observed_points", self.max_observed_points >= 6), ("model_points", self.model_points >= 6),
            ("min_points", self.min_points >= 6), ("rotation_prior", self.rotation_prior >= 0),
            *[(name, getattr(self, name) > 0)
              for name in ("gate_start_diameters", "gate_end_diameters", "robust_scale_m", "inlier_distance_m")],
        ])


@dataclass(frozen=True)
class SurfaceSamples:
    """Area-weighted samples of a model's surface.

    Attributes:
        points: (M, 3) metres, object frame. normals: (M, 3) unit face normals.
        centroid: (3,) area-weighted centroid. principal_axes: (3, 3) columns = unit axes,
            largest extent first.
    """

    points: np.ndarray
    normals: np.ndarray
    centroid: np.ndarray
    principal_axes: np.ndarray


def sample_surface(model: ObjectModel, count: int, seed: int = 0) -> SurfaceSamples:
    """``count`` points on the model's faces, uniform by area (fixed seed: the same every frame).

    Raises:
        InvalidInputError: the model has no face with a positive area.
    """
    v = np.asarray(model.vertices, dtype=np.float64)
    f = np.asarray(model.faces, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(cross, axis=1)
    if not len(f) or area.sum() <= 0:
        raise InvalidInputError(f"sample_surface: model {model.name!r} has no face with a positive area")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(f), size=count, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    points = (1 - r1)[:, None] * a[face] + (r1 * (1 - r2))[:, None] * b[face] + (r1 * r2)[:, None] * c[face]
    normals = cross[face] / np.maximum(np.linalg.norm(cross[face], axis=1, keepdims=True), 1e-12)
    # Centroid and axes of the whole surface (area moments), not of the samples: stable per model.
    centres = (a + b + c) / 3.0
    w = area / area.sum()
    centroid = (w[:, None] * centres).sum(0)
    d = centres - centroid
    cov = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)
    _, vecs = np.linalg.eigh(cov)
    return SurfaceSamples(points, normals, centroid, vecs[:, ::-1].copy())


def flip_transforms(samples: SurfaceSamples) -> np.ndarray:
    """The three 180-degree turns about the principal axes through the centroid, ``T_obj_objflip``.

    Returns:
        (3, 4, 4).
    """
    out = np.tile(np.eye(4), (3, 1, 1))
    for k in range(3):
        e = samples.principal_axes[:, k]
        R = 2.0 * np.outer(e, e) - np.eye(3)
        out[k, :3, :3] = R
        out[k, :3, 3] = samples.centroid - R @ samples.centroid
    return out


def distinct_poses(poses: Sequence[np.ndarray], symmetries: np.ndarray, min_rotation_deg: float,
                   min_translation_m: float) -> list[np.ndarray]:
    """``poses`` without near-duplicates (after symmetry): a pose is dropped when an earlier one is
    within both ``min_rotation_deg`` and ``min_translation_m`` of one of its symmetric equivalents.

    Args:
        poses: (4, 4) each. symmetries: (S, 4, 4) ``T_obj_objsym`` including the identity.
    Returns:
        The kept poses, in order, each as the equivalent closest to the first pose.
    """
    kept: list[np.ndarray] = []
    for T in poses:
        T = np.asarray(T, dtype=np.float64)
        if kept:
            T = closest_equivalent(T, kept[0], symmetries)
        duplicate = False
        for K in kept:
            E = closest_equivalent(T, K, symmetries)
            if rotation_angle_deg(E, K) < min_rotation_deg and np.linalg.norm(E[:3, 3] - K[:3, 3]) < min_translation_m:
                duplicate = True
                break
        if not duplicate:
            kept.append(T)
    return kept


def cube_rotations(samples: SurfaceSamples) -> np.ndarray:
    """The 24 rotations of a cube aligned with the principal axes, about the centroid
    (``T_obj_objrot``; identity first, the three principal-axis flips among them).

    Returns:
        (24, 4, 4).
    """
    mats = []
    for perm in ((0, 1, 2), (1, 2, 0), (2, 0, 1), (1, 0, 2), (0, 2, 1), (2, 1, 0)):
        for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (-1, 1, 1), (1, -1, 1), (1, 1, -1), (-1, -1, -1)):
            G = np.zeros((3, 3))
            G[range(3), perm] = signs
            if np.linalg.det(G) > 0:
                mats.append(G)
    P = samples.principal_axes
    out = np.tile(np.eye(4), (len(mats), 1, 1))
    for k, G in enumerate(mats):
        R = P @ G @ P.T
        out[k, :3, :3] = R
        out[k, :3, 3] = samples.centroid - R @ samples.centroid
    return out


def registration_starts(T_world_object: np.ndarray, samples: SurfaceSamples, symmetries: np.ndarray,
                        all_cube_rotations: bool = False) -> list[np.ndarray]:
    """The candidate's pose and its flips about the principal axes (or, with ``all_cube_rotations``,
    all 24 turns of the principal-axis cube: a rotation guess that is wrong by more than a flip),
    one per symmetric equivalence class."""
    T = np.asarray(T_world_object, dtype=np.float64)
    turns = cube_rotations(samples)[1:] if all_cube_rotations else flip_transforms(samples)
    return distinct_poses([T] + [T @ F for F in turns], symmetries, 10.0, math.inf)


def observed_segment(depth: torch.Tensor, K_crop: torch.Tensor, T_crop_world: torch.Tensor, centre_world: np.ndarray,
                     radius_m: float, max_points: int) -> torch.Tensor:
    """The observed points near a candidate, in the world frame, from all its views' crops.

    Args:
        depth: (V, S, S) crop-frame depth, metres (NaN: none). K_crop: (V, 3, 3) pixels.
        T_crop_world: (V, 4, 4) metres. centre_world: (3,) the candidate's centre.
        radius_m: keep points within this distance of the centre.
        max_points: evenly subsample to at most this many.
    Returns:
        (N, 3) float64 world points on ``depth``'s device (N may be 0).
    """
    V, S, _ = depth.shape
    dev = depth.device
    if V == 0:
        return torch.zeros(0, 3, dtype=torch.float64, device=dev)
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float64, device=dev), torch.arange(S, dtype=torch.float64, device=dev),
                            indexing="ij")
    K = K_crop.to(dev, torch.float64)
    z = depth.to(torch.float64)
    x = (xs[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None] * z
    y = (ys[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None] * z
    p_crop = torch.stack([x, y, z], -1).reshape(V, -1, 3)
    T_world_crop = torch.linalg.inv(T_crop_world.to(dev, torch.float64))
    p_world = p_crop @ T_world_crop[:, :3, :3].transpose(-1, -2) + T_world_crop[:, None, :3, 3]
    p_world = p_world.reshape(-1, 3)
    centre = torch.as_tensor(np.asarray(centre_world, dtype=np.float64), device=dev)
    keep = torch.isfinite(p_world).all(-1) & ((p_world - centre).norm(dim=-1) < radius_m)
    pts = p_world[keep]
    if len(pts) > max_points:
        pts = pts[torch.linspace(0, len(pts) - 1, max_points, device=dev).round().long()]
    return pts


@dataclass
class RegistrationResult:
    """B registrations.

    Attributes:
        T_world_object: (B, 4, 4) float64.
        fitness: (B,) share of the observed points within ``inlier_distance_m`` of the model's surface.
        rmse_m: (B,) RMS point-to-plane distance of those inliers, metres.
        valid: (B,) enough points and a finite pose.
    """

    T_world_object: torch.Tensor
    fitness: torch.Tensor
    rmse_m: torch.Tensor
    valid: torch.Tensor


def register(points_world: torch.Tensor, points_valid: torch.Tensor, model_points: torch.Tensor, model_normals: torch.Tensor,
             T_init: torch.Tensor, diameter_m: torch.Tensor, config: RegistrationConfig = RegistrationConfig()) -> RegistrationResult:
    """Trimmed robust point-to-plane ICP of B model/segment pairs at once (module docstring).

    Updates are about the current centroid of the observed points (better conditioned than the
    world origin): ``x <- Exp(dtheta) (x - c) + c + dt``.

    Args:
        points_world: (B, N, 3) observed points, metres, world frame (padding anywhere).
        points_valid: (B, N) bool.
        model_points, model_normals: (B, M, 3) surface samples and unit normals, object frame.
        T_init: (B, 4, 4) start ``T_world_object``.
        diameter_m: (B,) object diameters (the distance gate is in diameters).
    Returns:
        :class:`RegistrationResult` on ``points_world``'s device.
    Raises:
        InvalidInputError: inconsistent shapes.
    """
    B, N, _ = points_world.shape
    M = model_points.shape[1]
    if points_valid.shape != (B, N) or model_points.shape != (B, M, 3) or model_normals.shape != (B, M, 3) \
            or T_init.shape != (B, 4, 4) or diameter_m.shape != (B,):
        raise InvalidInputError(
            f"register: expected points (B, N, 3), valid (B, N), model points/normals (B, M, 3), T_init (B, 4, 4), diameter (B,); got "
            f"{tuple(points_world.shape)}, {tuple(points_valid.shape)}, {tuple(model_points.shape)}, {tuple(model_normals.shape)}, "
            f"{tuple(T_init.shape)}, {tuple(diameter_m.shape)}")
    dev = points_world.device
    q = points_world.to(torch.float64)
    qv = points_valid.to(dev)
    T = T_init.to(dev, torch.float64).clone()
    if B == 0:
        z = torch.zeros(0, dtype=torch.float64, device=dev)
        return RegistrationResult(T, z, z, torch.zeros(0, dtype=torch.bool, device=dev))
    pm = model_points.to(dev, torch.float64)
    nm = model_normals.to(dev, torch.float64)
    dia = diameter_m.to(dev, torch.float64)
    n_valid = qv.sum(1)
    qf = qv.to(torch.float64)
    centre = (q * qf[..., None]).sum(1) / n_valid.clamp_min(1)[:, None]
    cfg = config
    ratio = (cfg.gate_end_diameters / cfg.gate_start_diameters) ** (1.0 / max(cfg.iterations - 1, 1))
    eye = torch.eye(6, dtype=torch.float64, device=dev)
    R_start = T[:, :3, :3].clone()
    rot_block = torch.zeros(6, 6, dtype=torch.float64, device=dev)
    rot_block[3:, 3:] = torch.eye(3, dtype=torch.float64, device=dev)
    for it in range(cfg.iterations):
        x, n, dist = _correspondences(q, pm, nm, T)
        gate = dia * cfg.gate_start_diameters * ratio ** it
        use = _trimmed(dist, qv & (dist < gate[:, None]), cfg.trim_fraction)
        w = use.to(torch.float64)
        if it < cfg.translation_only_iterations:
            # Point-to-point, translation only: removes the centroid offset before rotating.
            shift = ((q - x) * w[..., None]).sum(1) / w.sum(1).clamp_min(1)[:, None]
            T[:, :3, 3] = T[:, :3, 3] + shift
            continue
        r = ((q - x) * n).sum(-1)  # signed distance along the model normal
        # Cauchy IRLS weights whose scale follows the gate: far from the optimum every residual is
        # large, and a fixed small scale would only shorten the steps.
        scale = torch.clamp(0.5 * gate, min=cfg.robust_scale_m)[:, None]
        wr = w / (1.0 + (r / scale) ** 2)
        J = torch.cat([n, torch.cross(x - centre[:, None], n, dim=-1)], -1)  # (B, N, 6)
        Jw = J * wr[..., None]
        # Prior: lam |log(R R_start^T) + dtheta|^2 keeps the rotation where the data say nothing.
        lam = cfg.rotation_prior * wr.sum(1) * (dia / 4.0) ** 2
        away = so3_log(T[:, :3, :3] @ R_start.transpose(-1, -2))
        H = Jw.transpose(1, 2) @ J + lam[:, None, None] * rot_block + 1e-9 * eye
        g = (Jw * r[..., None]).sum(1)
        g[:, 3:] = g[:, 3:] - lam[:, None] * away
        ok = w.sum(1) >= 6
        delta = torch.linalg.solve(H, g[..., None])[..., 0]
        delta = torch.where(ok[:, None] & torch.isfinite(delta).all(1, keepdim=True), delta, torch.zeros_like(delta))
        R_d = so3_exp(delta[:, 3:])
        T_new = T.clone()
        T_new[:, :3, :3] = R_d @ T[:, :3, :3]
        T_new[:, :3, 3] = ((T[:, :3, 3] - centre)[:, None, :] @ R_d.transpose(-1, -2))[:, 0] + centre + delta[:, :3]
        T = T_new
    x, n, dist = _correspondences(q, pm, nm, T)
    r = ((q - x) * n).sum(-1)
    # Point-to-plane distance within the inlier bound; the distance to the nearest sample only has to
    # stay within the samples' spacing (a sparse sampling must not make a perfect fit an outlier).
    inlier = qv & (r.abs() < cfg.inlier_distance_m) & (dist < torch.clamp(dia * 0.05, min=cfg.inlier_distance_m)[:, None])
    fitness = inlier.sum(1).to(torch.float64) / n_valid.clamp_min(1)
    rmse = torch.sqrt((r * r * inlier).sum(1) / inlier.sum(1).clamp_min(1))
    valid = (n_valid >= cfg.min_points) & torch.isfinite(T).flatten(1).all(1)
    return RegistrationResult(T, fitness, rmse, valid)


def _correspondences(q: torch.Tensor, pm: torch.Tensor, nm: torch.Tensor, T: torch.Tensor):
    """Nearest model sample (world frame) to each observed point, its world normal and distance."""
    R, t = T[:, :3, :3], T[:, :3, 3]
    pw = pm @ R.transpose(-1, -2) + t[:, None]
    nw = nm @ R.transpose(-1, -2)
    _, idx = torch.cdist(q.float(), pw.float(), compute_mode="use_mm_for_euclid_dist").min(-1)
    x = torch.gather(pw, 1, idx[..., None].expand(-1, -1, 3))
    n = torch.gather(nw, 1, idx[..., None].expand(-1, -1, 3))
    # cdist in float32 is only used to choose the pairs; the distance used for gating is exact.
    return x, n, (q - x).norm(dim=-1)


def _trimmed(dist: torch.Tensor, candidates: torch.Tensor, fraction: float) -> torch.Tensor:
    """``candidates`` restricted to the closest ``fraction`` of them per row."""
    if fraction >= 1.0:
        return candidates
    d = torch.where(candidates, dist, torch.full_like(dist, math.inf))
    k = (candidates.sum(1).to(torch.float64) * fraction).ceil().long().clamp_min(1)
    sorted_d = d.sort(1).values
    threshold = sorted_d.gather(1, (k - 1).clamp(max=d.shape[1] - 1)[:, None])
    return candidates & (d <= threshold)


__all__ = [
    "cube_rotations", "RegistrationConfig", "RegistrationResult", "SurfaceSamples", "distinct_poses", "flip_transforms", "observed_segment",
    "register", "registration_starts", "sample_surface",
]
