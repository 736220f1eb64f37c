"""Render-and-compare verification of pose hypotheses across all views (ROS-free).

Cheap first: a hypothesis is rendered (depth and colour, no features) in the crop camera of every
view that should see its candidate (:meth:`~pose_node.refinement.problem.ProblemBuilder.observe`'s
slots; the renderer batches them) and compared with the observation there, pixel by pixel:

- **Depth** (RGB-D): inside the rendered silhouette, the observed depth either agrees with the
  rendered one (within ``depth_tolerance``), lies in front of it (something occludes the object:
  neither for nor against), or lies behind it (the views see through where the hypothesis puts
  the object: against). ``depth`` = agreeing / (agreeing + behind).
- **Silhouette** (RGB-D): the observed segment of the candidate (depth pixels whose point lies
  within ``segment_radius_diameters`` of its centre, as the registration's) against the rendered
  silhouette minus its occluded pixels, as intersection over union. It uses depth, not the
  detector's masks: the fusion receives world-frame estimates only, and a mask from a detector
  trained on our renders is what the out-of-domain data makes unreliable.
- **Appearance**: normalized cross-correlation of the render's and the observation's grey values
  over the visible silhouette (gain and offset free, so shading and exposure matter less); this
  is what tells a textured box from its 180-degree flip before any feature is computed.

Each term is pooled over the views by pixel counts, so a view that sees more of the object counts
more. The refiner ranks hypotheses by :attr:`VerificationScores.prior` (geometry x appearance),
aligns the best few and ranks them again with the alignment's feature agreement
(:func:`combined_score`), whose value is the published score.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError, check_fields


@dataclass(frozen=True)
class VerificationConfig:
    """Render-and-compare settings (module docstring).

    Attributes:
        enabled: rank hypotheses by render-and-compare (else: the first ``max_starts`` in their
            order, the lowest feature cost wins and the score is feature agreement only).
        depth_tolerance_m: rendered and observed depth agree within ``max(depth_tolerance_m,
            depth_tolerance_diameters x diameter)``.
        depth_tolerance_diameters: see ``depth_tolerance_m``.
        segment_radius_diameters: observed points within this many diameters of the candidate's
            centre form its segment (silhouette term).
        appearance_floor: the appearance factor of the prior is ``floor + (1 - floor) x max(ncc, 0)``
            (appearance alone never rules a hypothesis out: lighting can defeat it).
        feature_exponent, depth_exponent, silhouette_exponent, appearance_exponent: the published
            score is the product of the terms raised to these powers (0: term unused).
        keep_within: only hypotheses whose prior is at least this share of the candidate's best
            are aligned (at most ``max_starts`` of them): a flip the views plainly reject is not
            worth a render of features and an alignment.
        associated_margin: after alignment, the associated pose's combined score counts ``1 + margin``
            times when the winner is chosen (it carries the views' single-view agreement).
        render_size_px: hypotheses are rendered and compared on this grid (the crops' side divided
            by a whole number): a quarter of the pixels of the 128-pixel crops costs a quarter of
            the render and readback, and silhouettes and depth need no finer grid.
        max_render_faces: meshes are simplified to about this many triangles for these renders
            (:mod:`pose_node.render.simplify`; a CPU renderer pays per triangle, and a 64-pixel
            comparison cannot show more; 0: the full mesh). Only when ``render_size_px`` is below
            the crops' side (else the refinement's own renderer and meshes are used).
    """

    enabled: bool = True
    depth_tolerance_m: float = 0.01
    depth_tolerance_diameters: float = 0.03
    segment_radius_diameters: float = 0.6
    appearance_floor: float = 0.5
    # Chosen on the out-of-domain validation split (ood_val, 25 RGB-D / 23 RGB matched estimates):
    # the features' agreement drops on photoreal images even for right poses, depth and appearance
    # much less, so they carry more of the score (AUROC 0.98 RGB-D, 1.00 RGB there).
    feature_exponent: float = 0.5
    depth_exponent: float = 2.0
    silhouette_exponent: float = 0.5
    appearance_exponent: float = 1.0
    render_size_px: int = 64
    max_render_faces: int = 3000
    keep_within: float = 0.5
    associated_margin: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, [
            ("associated_margin", self.associated_margin >= 0), ("keep_within", 0 <= self.keep_within <= 1),
            ("max_render_faces", self.max_render_faces >= 0), ("render_size_px", self.render_size_px >= 16),
            ("depth_tolerance_m", self.depth_tolerance_m > 0), ("depth_tolerance_diameters", self.depth_tolerance_diameters >= 0),
            ("segment_radius_diameters", self.segment_radius_diameters > 0), ("appearance_floor", 0 <= self.appearance_floor <= 1),
            *[(name, getattr(self, name) >= 0)
              for name in ("feature_exponent", "depth_exponent", "silhouette_exponent", "appearance_exponent")],
        ])


@dataclass
class VerificationScores:
    """Render-and-compare terms of B hypotheses, each in [0, 1] (module docstring).

    Attributes:
        depth: (B,) share of the visible silhouette's measured pixels whose depth agrees (1 in RGB).
        silhouette: (B,) IoU of the visible silhouette and the observed segment (1 in RGB).
        appearance: (B,) grey-value NCC over the visible silhouette, clamped to [0, 1].
        visible: (B,) share of the rendered silhouette not occluded (1 in RGB).
        prior: (B,) ``depth x silhouette x (floor + (1 - floor) appearance)``: the ranking before alignment.
    """

    depth: torch.Tensor
    silhouette: torch.Tensor
    appearance: torch.Tensor
    visible: torch.Tensor
    prior: torch.Tensor


def segment_masks(depth: torch.Tensor, K_crop: torch.Tensor, T_crop_world: torch.Tensor, centre_world: torch.Tensor,
                  radius_m: torch.Tensor) -> torch.Tensor:
    """Crop pixels whose observed point lies within ``radius_m`` of the candidate's centre.

    Args:
        depth: (M, S, S) crop-frame depth, metres (NaN: none). K_crop: (M, 3, 3). T_crop_world: (M, 4, 4).
        centre_world: (M, 3) per slot, its candidate's centre. radius_m: (M,).
    Returns:
        (M, S, S) bool.
    """
    M, S, _ = depth.shape
    dev = depth.device
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float64, device=dev), torch.arange(S, dtype=torch.float64, device=dev),
                            indexing="ij")
    K = K_crop.to(dev, torch.float64)
    z = depth.to(torch.float64)
    p_crop = torch.stack([(xs[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None] * z,
                          (ys[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None] * z, z], -1)
    T = T_crop_world.to(dev, torch.float64)
    c_crop = (centre_world.to(dev, torch.float64)[:, None] @ T[:, :3, :3].transpose(-1, -2))[:, 0] + T[:, :3, 3]
    d = (p_crop - c_crop[:, None, None]).norm(dim=-1)
    return torch.isfinite(d) & (d < radius_m.to(dev, torch.float64)[:, None, None])


def compare(rendered_depth: torch.Tensor, rendered_gray: torch.Tensor, observed_depth: torch.Tensor | None,
            observed_gray: torch.Tensor, segment: torch.Tensor | None, owner: torch.Tensor, n_hypotheses: int,
            tolerance_m: torch.Tensor, appearance_floor: float) -> VerificationScores:
    """Pool the pixel comparisons of P (hypothesis, view) pairs into B hypothesis scores.

    Args:
        rendered_depth: (P, S, S) metres (0: background). rendered_gray, observed_gray: (P, S, S) in [0, 1].
        observed_depth: (P, S, S) metres (NaN: none), or None (RGB).
        segment: (P, S, S) bool observed segment, or None (RGB).
        owner: (P,) long, the hypothesis of each pair. n_hypotheses: B.
        tolerance_m: (P,) depth agreement tolerance.
    Returns:
        :class:`VerificationScores` on ``rendered_depth``'s device.
    """
    P = rendered_depth.shape[0]
    if rendered_gray.shape != rendered_depth.shape or observed_gray.shape != rendered_depth.shape or owner.shape != (P,):
        raise InvalidInputError(f"compare: expected (P, S, S) images and (P,) owners, got {tuple(rendered_depth.shape)}, "
                                f"{tuple(rendered_gray.shape)}, {tuple(observed_gray.shape)}, {tuple(owner.shape)}")
    dev = rendered_depth.device
    f64 = torch.float64
    rendered = rendered_depth > 0
    B = n_hypotheses

    def pooled(x: torch.Tensor) -> torch.Tensor:  # (P,) -> (B,) sums
        return torch.zeros(B, dtype=f64, device=dev).index_add_(0, owner.to(dev), x.to(f64))

    if observed_depth is not None:
        d_r = rendered_depth.to(f64)
        d_o = observed_depth.to(f64)
        tol = tolerance_m.to(dev, f64)[:, None, None]
        measured = rendered & torch.isfinite(d_o)
        occluded = measured & (d_o < d_r - tol)
        agree = measured & ((d_o - d_r).abs() <= tol)
        behind = measured & (d_o > d_r + tol)
        visible_mask = rendered & ~occluded
        n_agree, n_behind = pooled(agree.flatten(1).sum(1)), pooled(behind.flatten(1).sum(1))
        depth = n_agree / (n_agree + n_behind).clamp_min(1.0)
        inter = pooled((visible_mask & segment).flatten(1).sum(1))
        union = pooled((visible_mask | segment).flatten(1).sum(1))
        silhouette = inter / union.clamp_min(1.0)
        visible = pooled(visible_mask.flatten(1).sum(1)) / pooled(rendered.flatten(1).sum(1)).clamp_min(1.0)
    else:
        visible_mask = rendered
        depth = silhouette = visible = torch.ones(B, dtype=f64, device=dev)
    w = visible_mask.to(f64)
    n = w.flatten(1).sum(1).clamp_min(1.0)
    a, b = rendered_gray.to(f64), observed_gray.to(f64)
    ma = (a * w).flatten(1).sum(1) / n
    mb = (b * w).flatten(1).sum(1) / n
    da, db = (a - ma[:, None, None]) * w, (b - mb[:, None, None]) * w
    ncc = (da * db).flatten(1).sum(1) / ((da * da).flatten(1).sum(1) * (db * db).flatten(1).sum(1)).sqrt().clamp_min(1e-9)
    counts = w.flatten(1).sum(1)
    appearance = (pooled(ncc * counts) / pooled(counts).clamp_min(1.0)).clamp(0.0, 1.0)
    prior = depth * silhouette * (appearance_floor + (1.0 - appearance_floor) * appearance)
    return VerificationScores(depth, silhouette, appearance, visible, prior)


def combined_score(feature_agreement: torch.Tensor, scores: VerificationScores, config: VerificationConfig,
                   with_depth: bool) -> torch.Tensor:
    """The published score in [0, 1]: feature agreement x depth x silhouette x appearance, each raised
    to its exponent (the geometric terms only in RGB-D).

    Args:
        feature_agreement: (B,) the alignment's inlier share averaged over the views.
    """
    s = feature_agreement.to(torch.float64).clamp(0.0, 1.0) ** config.feature_exponent
    s = s * scores.appearance.to(s.device).clamp(0.0, 1.0) ** config.appearance_exponent
    if with_depth:
        s = s * scores.depth.to(s.device) ** config.depth_exponent * scores.silhouette.to(s.device) ** config.silhouette_exponent
    return s.clamp(0.0, 1.0)


def gray(rgb: np.ndarray) -> torch.Tensor:
    """(..., 3) uint8 -> (...) float32 luma in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).float()
    return (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114) / 255.0


def scaled_crop_intrinsics(K_crop: np.ndarray, crop_px: int, size_px: int) -> np.ndarray:
    """Intrinsics of the same crop camera on a ``size_px`` grid instead of ``crop_px`` (pixel centres
    at integers: ``u' = (u + 0.5) s - 0.5`` with ``s = size_px / crop_px``).

    Args:
        K_crop: (..., 3, 3).
    """
    s = size_px / crop_px
    K = np.array(K_crop, dtype=np.float64, copy=True)
    K[..., 0, 0] *= s
    K[..., 1, 1] *= s
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * s - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * s - 0.5
    return K


def downsampled(observed: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """(M, S, S) -> (M, S / f, S / f): ``nearest`` (depth: no mixing across depth edges; the pixel
    at the low-resolution pixel's centre, rounded down) or ``mean`` (grey values)."""
    if factor == 1:
        return observed
    if mode == "nearest":
        return observed[:, factor // 2::factor, factor // 2::factor].contiguous()
    return torch.nn.functional.avg_pool2d(observed[:, None], factor)[:, 0]


def render_pairs(renderer, handle, obs, pairs: Sequence[tuple[int, int]], object_ids: Sequence[int],
                 T_world_object: Sequence[np.ndarray], crop_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Render hypotheses (depth and colour) in crop cameras, on ``renderer``'s (smaller) grid.

    Args:
        renderer: a square :class:`~pose_node.render.renderer.Renderer`. handle: object id -> its handle there.
        obs: the refinement's :class:`~pose_node.refinement.problem.Observations` (crops of ``crop_px``).
        pairs: (hypothesis, slot) to render. object_ids, T_world_object: per hypothesis.
    Returns:
        depth (P, s, s) float32 metres (0: background) and rgb (P, s, s, 3) uint8.
    """
    size = renderer.width
    P = len(pairs)
    depth = np.zeros((P, size, size), np.float32)
    rgb = np.zeros((P, size, size, 3), np.uint8)
    by_object: dict[int, list[int]] = {}
    for p, (b, _) in enumerate(pairs):
        by_object.setdefault(int(object_ids[b]), []).append(p)
    K = scaled_crop_intrinsics(obs.K_crop.numpy(), crop_px, size)
    T_cw = obs.T_crop_world.numpy()
    light_cam = np.asarray(renderer.settings.light_dir_cam, dtype=np.float64)
    for obj, ps in by_object.items():
        ms = [pairs[p][1] for p in ps]
        T_co = np.stack([T_cw[m] @ np.asarray(T_world_object[pairs[p][0]], dtype=np.float64) for p, m in zip(ps, ms)])[:, None]
        # The light follows the view's camera, as in the refinement's renders.
        light = np.einsum("mji,j->mi", obs.R_camera_crop[ms], light_cam)
        out = renderer.render(K[ms], T_co, [handle(obj)], outputs=("rgb", "depth"), light_dir_cam=light)
        depth[ps], rgb[ps] = out.depth, out.rgb
    return depth, rgb


__all__ = [
    "VerificationConfig", "VerificationScores", "combined_score", "compare", "downsampled", "gray", "render_pairs",
    "scaled_crop_intrinsics", "segment_masks",
]
