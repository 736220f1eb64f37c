"""Multi-view refinement of associated candidates: one world pose per object from all views (ROS-free).

Per frame (everything batched over objects, starts and views):

0. **Support.** A candidate fewer views detected than ``min_supporting_views`` while at least
   that many frame it is left as associated, with score 0 (most are look-alikes; see the config).
1. **Observe** each candidate in every view that sees it (crop, features, depth), once.
2. **Hypotheses.** The candidate's associated pose; in RGB-D its model registered to the
   observed depth segment of all views (:mod:`~pose_node.refinement.registration`, from the pose
   and its principal-axis flips); the alternatives (single-view hypotheses of the same instance
   with another rotation); and the associated pose's 180-degree flips about the model's principal
   axes (``flip_hypotheses``, RGB too: they keep the silhouette, so the single-view stage confuses
   them most). Near-duplicates after symmetry are dropped.
3. **Starts.** With ``verification`` on, every hypothesis is rendered in every view that should
   see it and compared with the observation (:mod:`~pose_node.refinement.verification`: depth
   agreement with occlusion, silhouette against the depth segment, grey-value correlation); the
   ``max_starts`` best (in RGB the associated pose and the best others) are aligned for one round
   and verified again at their solutions; the highest combined score (feature agreement x the
   render-and-compare terms) wins. Without it, the first ``max_starts`` are aligned and the lowest
   robust cost per point wins. This is where a flip seen by one view is outvoted by the others.
4. **Rounds.** The winner is re-rendered at its new pose and aligned again while it still moves
   more than ``rerender_dt_m`` / ``rerender_drot_deg`` (at most ``rounds`` in all). From the second
   round on, a view whose points mostly disagree with the render (occluded, wrong extrinsics,
   another object) is left out.
5. **Covariance** ``covariance_scale x score^-k x sigma^2 (J^T W J)^-1`` at the final pose
   (score: step 6; a worse fit is wrong by more than its Hessian says), moment-matched with
   the other starts' solutions weighted by ``exp(-hypothesis_sharpness x cost difference)``, so
   doubt between a pose and its flip widens it (as the single-view stage does; starts below
   ``mixture_min_weight`` are left out). The scale and k
   are calibrated per mode on validation workcells (``pose_refinement_bench --calibrate``).
6. **Score** in [0, 1]: the share of points whose features agree with the observation (residual
   below ``alignment.inlier_threshold``), averaged over every view that should see the object
   (first round, before views are dropped), with ``verification`` on times the render-and-compare
   terms (:func:`~pose_node.refinement.verification.combined_score`), times the winner's mixture weight.
7. **Symmetric objects** are reported as the symmetric equivalent whose rotation is closest to the
   world frame's axes (a canonical choice, the same for every frame); the pipeline's tracker then
   keeps the equivalent closest to the previous frame's.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, pose_difference
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.detection.multiview import MultiViewEvidenceConfig, hidden_by_nearer_depth
from pose_node.refinement.alignment import AlignmentConfig, align
from pose_node.refinement.association import Candidate, closest_equivalent, equivalent_with_covariance
from pose_node.refinement.problem import CropConfig, ProblemBuilder
from pose_node.refinement.registration import (
    RegistrationConfig, SurfaceSamples, distinct_poses, flip_transforms, observed_segment, register, registration_starts, sample_surface,
)
from pose_node.refinement.verification import (
    VerificationConfig, VerificationScores, combined_score, compare, downsampled, gray, render_pairs, scaled_crop_intrinsics,
    segment_masks,
)
from pose_node.render.simplify import simplified

logger = logging.getLogger(__name__)

#: Scores below this inflate the covariance no further (a wrong pose is the mixture's business).
MIN_SCORE_FOR_SCALE = 0.05


@dataclass(frozen=True)
class RefinementConfig:
    """Multi-view refinement settings (module docstring).

    Attributes:
        crops: crop cameras, features and points.
        alignment: the LM solver.
        max_starts: hypotheses per candidate aligned (module docstring, 3).
        rounds: render + align rounds of the winning start (>= 1).
        rerender_dt_m, rerender_drot_deg: another round only if the last one moved more.
        min_view_inlier_share: after the first round, views whose points agree less are dropped.
        hypothesis_sharpness: mixture weights ``exp(-sharpness * (cost - best cost))``.
        covariance_scale: mode (``rgb`` / ``rgbd``) -> calibrated factor (missing: 1).
        covariance_score_exponent: mode -> k: the factor is divided by ``score^k`` (missing: 0).
        use_depth: add the depth residual when views have depth.
        flip_hypotheses: add the associated pose's 180-degree flips about the model's principal
            axes as hypotheses (RGB and RGB-D).
        registration: model-to-depth hypotheses (RGB-D; :mod:`pose_node.refinement.registration`).
        verification: render-and-compare ranking and score (:mod:`pose_node.refinement.verification`).
        duplicate_rotation_deg, duplicate_translation_diameters: a hypothesis this close to an
            earlier one (after symmetry) is dropped.
        mixture_min_weight: starts whose mixture weight is below this do not widen the covariance.
        min_supporting_views: a candidate whose single-view hypotheses come from fewer views than
            this, while at least this many views frame its position, is not refined: it keeps its
            associated pose with score 0 (multi-view detection evidence: on the out-of-domain
            validation split, 16 of the 29 candidates that were no object at all had one view,
            and no candidate that became a correct pose; its alignment costs what a real
            object's does). 1: every candidate is refined. A view frames the candidate when its
            box is mostly in the image and, with depth, its centre is not behind nearer depth by
            more than half the diameter plus ``support_occlusion_margin_m``
            (:func:`~pose_node.detection.multiview.hidden_by_nearer_depth`, as the detector's check).
    """

    crops: CropConfig = field(default_factory=CropConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    max_starts: int = 3
    rounds: int = 2
    rerender_dt_m: float = 0.002
    rerender_drot_deg: float = 1.0
    min_view_inlier_share: float = 0.3
    hypothesis_sharpness: float = 20.0
    covariance_scale: Mapping[str, float] = field(default_factory=dict)
    covariance_score_exponent: Mapping[str, float] = field(default_factory=dict)
    use_depth: bool = True
    flip_hypotheses: bool = True
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    duplicate_rotation_deg: float = 10.0
    duplicate_translation_diameters: float = 0.05
    mixture_min_weight: float = 0.01
    min_supporting_views: int = 2
    support_occlusion_margin_m: float = MultiViewEvidenceConfig.occlusion_margin_m  # the detector's default, one place

    def __post_init__(self) -> None:
        if self.min_supporting_views < 1:
            raise InvalidInputError(f"RefinementConfig.min_supporting_views: must be >= 1, got {self.min_supporting_views}")
        if not self.support_occlusion_margin_m >= 0:
            raise InvalidInputError(f"RefinementConfig.support_occlusion_margin_m: must be >= 0, got {self.support_occlusion_margin_m}")
        if self.max_starts < 1 or self.rounds < 1:
            raise InvalidInputError(f"RefinementConfig: need max_starts >= 1 and rounds >= 1, got {self.max_starts}, {self.rounds}")
        if not 0 <= self.min_view_inlier_share < 1 or self.hypothesis_sharpness < 0:
            raise InvalidInputError("RefinementConfig: need min_view_inlier_share in [0, 1) and hypothesis_sharpness >= 0")


def canonical_equivalent(T: np.ndarray, covariance: np.ndarray, symmetries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric equivalent whose rotation is closest to the parent frame's axes (module docstring, 6)."""
    T_sym = closest_equivalent(T, np.eye(4), symmetries)
    return equivalent_with_covariance(T, covariance, T_sym)


class MultiViewRefiner:
    """Refine associated candidates against all views (module docstring).

    Args:
        models: the known objects.
        renderer: a Renderer of size ``config.crops.size_px`` squared.
        backbone: dense features (the same for renders and observations).
        config: settings.
    """

    def __init__(self, models: Sequence[ObjectModel], renderer, backbone, config: RefinementConfig = RefinementConfig()) -> None:
        self.models = {m.object_id: m for m in models}
        self.config = config
        self.builder = ProblemBuilder(self.models, renderer, backbone, config.crops)
        self._surface: dict[int, SurfaceSamples] = {}
        self._small_renderer = None
        self._small_handles: dict[int, int] = {}
        #: When a list, each refine call appends one dict per refined estimate with its score's terms
        #: (for calibrating the score on validation data; None: nothing is recorded).
        self.score_terms: list[dict] | None = None

    def refine(self, views: Sequence[View], candidates: Sequence[Candidate], with_depth: bool, *,
               max_starts: int | None = None, rounds: int | None = None) -> tuple[list[PoseEstimate], dict[str, float]]:
        """One world-frame estimate per candidate.

        Args:
            views: the frame's views (extrinsics set; depth when ``with_depth``).
            candidates: from :func:`pose_node.refinement.association.associate`.
            with_depth: use the depth residual (``config.use_depth`` must allow it).
            max_starts, rounds: override ``config.max_starts`` / ``config.rounds`` for this call
                (None: the config's; a time budget passes fewer).
        Returns:
            Estimates (candidates no view sees keep their associated pose) and milliseconds per
            step: ``refinement_observe``, ``refinement_render``, ``refinement_align``.
        """
        cfg = self.config
        max_starts = cfg.max_starts if max_starts is None else int(max_starts)
        rounds = cfg.rounds if rounds is None else int(rounds)
        if max_starts < 1 or rounds < 1:
            raise InvalidInputError(f"MultiViewRefiner.refine: need max_starts >= 1 and rounds >= 1, got {max_starts}, {rounds}")
        timings = {"refinement_observe": 0.0, "refinement_render": 0.0, "refinement_align": 0.0, "refinement_register": 0.0,
                   "refinement_verify": 0.0}
        if not candidates:
            return [], timings
        unsupported = self._unsupported(views, candidates)
        if unsupported:
            keep = [c for c in range(len(candidates)) if c not in unsupported]
            refined, timings = self.refine(views, [candidates[c] for c in keep], with_depth, max_starts=max_starts, rounds=rounds)
            out = dict(zip(keep, refined))
            return [replace(out[c], instance_id=c) if c in out else replace(cand.to_estimate(c), score=0.0)
                    for c, cand in enumerate(candidates)], timings
        with_depth = with_depth and cfg.use_depth
        t0 = time.perf_counter()
        obs = self.builder.observe(views, [c.object_id for c in candidates], [c.T_world_object for c in candidates], with_depth)
        timings["refinement_observe"] += (time.perf_counter() - t0) * 1e3
        active = [c for c, s in enumerate(obs.slots) if s]

        # Hypotheses of every candidate seen by at least one view, ranked, the best few aligned.
        hypotheses = self._hypotheses(obs, candidates, active, with_depth, timings)
        start_owner, start_T = self._select(obs, candidates, hypotheses, max_starts, with_depth, timings)
        if not start_owner:  # no view sees any candidate: nothing to refine against
            return [c.to_estimate(i) for i, c in enumerate(candidates)], timings
        res = self._align(obs, start_owner, candidates, start_T, None, timings)
        costs = torch.where(res.valid, res.mean_cost, torch.full_like(res.mean_cost, math.inf))
        agreement = torch.stack([res.view_inlier_share[b, :len(obs.slots[c])].mean() for b, c in enumerate(start_owner)])
        verified = scores = None
        if cfg.verification.enabled:
            # Rank the aligned starts again: feature agreement x render-and-compare at the solutions.
            t1 = time.perf_counter()
            scores = self._verify(obs, start_owner, candidates, list(res.T_world_object.numpy()), with_depth)
            verified = combined_score(agreement, scores, cfg.verification, with_depth).cpu()
            timings["refinement_verify"] += (time.perf_counter() - t1) * 1e3
        if verified is None:
            rank = -costs
        else:
            # The associated pose carries the single-view stage's agreement between views, which the
            # render-and-compare terms do not see: another hypothesis must beat it by a margin.
            associated = torch.tensor([start_T[b] is hypotheses[c][0] for b, c in enumerate(start_owner)])
            rank = verified * torch.where(associated, 1.0 + cfg.verification.associated_margin, 1.0)
        rank = torch.where(res.valid, rank, torch.full_like(costs, -math.inf))
        winners: dict[int, int] = {}
        for b, c in enumerate(start_owner):
            if c not in winners or rank[b] > rank[winners[c]]:
                winners[c] = b
        refined = {c: b for c, b in winners.items() if bool(res.valid[b])}

        # Further rounds for the winners, re-rendered at their new pose.
        T_now = {c: res.T_world_object[b] for c, b in refined.items()}
        final = {c: (res, b, [True] * len(obs.slots[c])) for c, b in refined.items()}
        moved = {c: _moved(res.T_world_object[b], torch.from_numpy(start_T[b]), cfg) for c, b in refined.items()}
        for _ in range(rounds - 1):
            todo = [c for c in refined if moved[c]]
            if not todo:
                break
            masks = []
            for c in todo:
                r, b, used = final[c]
                share = torch.zeros(len(used), dtype=torch.float64)
                share[torch.tensor(used)] = r.view_inlier_share[b, :sum(used)]
                keep = [u and bool(x >= cfg.min_view_inlier_share) for u, x in zip(used, share.tolist())]
                if not any(keep):
                    keep[int(share.argmax())] = True
                masks.append(keep)
            res2 = self._align(obs, todo, candidates, [T_now[c].numpy() for c in todo], masks, timings)
            for i, (c, keep) in enumerate(zip(todo, masks)):
                if bool(res2.valid[i]):
                    moved[c] = _moved(res2.T_world_object[i], T_now[c], cfg)
                    T_now[c] = res2.T_world_object[i]
                    final[c] = (res2, i, keep)
                else:
                    moved[c] = False

        out = []
        for c, cand in enumerate(candidates):
            if c not in final:
                out.append(cand.to_estimate(len(out)))
                continue
            score = float(agreement[winners[c]]) if verified is None else float(verified[winners[c]])
            out.append(self._estimate(c, cand, final[c], res, start_owner, costs, winners[c], score, obs.slots[c], len(out),
                                      with_depth))
            if self.score_terms is not None:
                b = winners[c]
                terms = {"score": out[-1].score, "feature": float(agreement[b]), "views": len(obs.slots[c]),
                         "starts": start_owner.count(c), "hypotheses": len(hypotheses[c]), "object_id": cand.object_id}
                if scores is not None:
                    terms.update({k: float(getattr(scores, k)[b]) for k in ("depth", "silhouette", "appearance", "visible")})
                self.score_terms.append(terms)
        return out, timings

    def _unsupported(self, views: Sequence[View], candidates: Sequence[Candidate]) -> set[int]:
        """Candidates with fewer supporting views than ``min_supporting_views`` while at least
        that many views frame them (see :class:`RefinementConfig`)."""
        need = self.config.min_supporting_views
        if need <= 1:
            return set()
        out = set()
        for c, cand in enumerate(candidates):
            if len(set(cand.view_indices)) >= need:
                continue
            # Framing: the box mostly in the image and, where the view has depth, the centre not
            # behind nearer depth (the detector's occlusion test), so a part other cameras cannot
            # see is not held against the one that detected it.
            centre, diameter = self._centre(cand), float(self.models[cand.object_id].diameter_m)
            framing = [v for v, _, _ in self.builder.visible_views(cand.object_id, np.asarray(cand.T_world_object, dtype=np.float64), views)
                       if not hidden_by_nearer_depth(views[v], centre, diameter, self.config.support_occlusion_margin_m)]
            if len(framing) >= need:
                out.add(c)
        return out

    def verify(self, views: Sequence[View], candidate: Candidate, poses: Sequence[np.ndarray], with_depth: bool) -> VerificationScores:
        """Render-and-compare scores of ``poses`` (B, each (4, 4)) of one candidate against the views
        that see it (framed at the candidate's pose), as the refinement ranks its hypotheses.

        Raises:
            InvalidInputError: ``with_depth`` and a view without depth.
        """
        with_depth = with_depth and self.config.use_depth
        obs = self.builder.observe(views, [candidate.object_id], [candidate.T_world_object], with_depth)
        return self._verify(obs, [0] * len(poses), [candidate], [np.asarray(T, dtype=np.float64) for T in poses], with_depth)

    def _samples(self, object_id: int) -> SurfaceSamples:
        if object_id not in self._surface:
            self._surface[object_id] = sample_surface(self.models[object_id], self.config.registration.model_points)
        return self._surface[object_id]

    def _centre(self, cand: Candidate) -> np.ndarray:
        T = np.asarray(cand.T_world_object, dtype=np.float64)
        return T[:3, :3] @ self._samples(cand.object_id).centroid + T[:3, 3]

    def _hypotheses(self, obs, candidates: Sequence[Candidate], active: list[int], with_depth: bool, timings) -> dict[int, list[np.ndarray]]:
        """Per active candidate, distinct hypotheses in order: the associated pose, the registered
        poses (RGB-D, best fit first), the single-view alternatives (best score first), the flips."""
        cfg = self.config
        registered: dict[int, list[np.ndarray]] = {}
        if with_depth and cfg.registration.enabled and obs.depth is not None:
            t0 = time.perf_counter()
            registered = self._register(obs, candidates, active)
            timings["refinement_register"] += (time.perf_counter() - t0) * 1e3
        out = {}
        for c in active:
            cand = candidates[c]
            model = self.models[cand.object_id]
            T0 = np.asarray(cand.T_world_object, dtype=np.float64)
            poses = [T0] + registered.get(c, [])
            poses += [np.asarray(a.T_world_object, dtype=np.float64) for a in sorted(cand.alternatives, key=lambda e: -e.score)]
            if cfg.flip_hypotheses:
                poses += [T0 @ F for F in flip_transforms(self._samples(cand.object_id))]
            out[c] = distinct_poses(poses, model.symmetries, cfg.duplicate_rotation_deg,
                                    cfg.duplicate_translation_diameters * model.diameter_m)
        return out

    def _register(self, obs, candidates: Sequence[Candidate], active: list[int]) -> dict[int, list[np.ndarray]]:
        """Registered poses per candidate (valid ones, best fit first), all starts batched."""
        rc = self.config.registration
        owners, starts, clouds = [], [], {}
        for c in active:
            cand = candidates[c]
            model = self.models[cand.object_id]
            o, n = obs.slot_offset[c], len(obs.slots[c])
            pts = observed_segment(obs.depth[o:o + n], obs.K_crop[o:o + n], obs.T_crop_world[o:o + n], self._centre(cand),
                                   rc.segment_radius_diameters * model.diameter_m, rc.max_observed_points)
            if len(pts) < rc.min_points:
                continue
            clouds[c] = pts
            for T in registration_starts(cand.T_world_object, self._samples(cand.object_id), model.symmetries, rc.all_cube_rotations):
                owners.append(c)
                starts.append(T)
        if not owners:
            return {}
        dev = obs.depth.device
        N = max(len(p) for p in clouds.values())
        B = len(owners)
        q = torch.zeros(B, N, 3, dtype=torch.float64, device=dev)
        qv = torch.zeros(B, N, dtype=torch.bool, device=dev)
        for b, c in enumerate(owners):
            q[b, :len(clouds[c])] = clouds[c]
            qv[b, :len(clouds[c])] = True
        samples = [self._samples(candidates[c].object_id) for c in owners]
        pm = torch.from_numpy(np.stack([s.points for s in samples])).to(dev)
        nm = torch.from_numpy(np.stack([s.normals for s in samples])).to(dev)
        dia = torch.tensor([self.models[candidates[c].object_id].diameter_m for c in owners], dtype=torch.float64, device=dev)
        res = register(q, qv, pm, nm, torch.from_numpy(np.stack(starts)).to(dev), dia, rc)
        out: dict[int, list[tuple[float, np.ndarray]]] = {}
        for b, c in enumerate(owners):
            if bool(res.valid[b]):
                out.setdefault(c, []).append((float(res.fitness[b]), res.T_world_object[b].cpu().numpy()))
        return {c: [T for _, T in sorted(v, key=lambda x: -x[0])][:rc.max_results] for c, v in out.items()}

    def _select(self, obs, candidates: Sequence[Candidate], hypotheses: dict[int, list[np.ndarray]], max_starts: int,
                with_depth: bool, timings) -> tuple[list[int], list[np.ndarray]]:
        """At most ``max_starts`` hypotheses per candidate: the best by render-and-compare (verification
        enabled; in RGB the associated pose always stays, appearance alone being weak evidence), else the first."""
        owners, poses = [], []
        for c, hs in hypotheses.items():
            owners += [c] * len(hs)
            poses += hs
        if not self.config.verification.enabled or all(len(h) <= max_starts for h in hypotheses.values()):
            keep = [b for b, c in enumerate(owners) if b - owners.index(c) < max_starts]
            return [owners[b] for b in keep], [poses[b] for b in keep]
        t0 = time.perf_counter()
        prior = self._verify(obs, owners, candidates, poses, with_depth).prior.cpu()
        timings["refinement_verify"] += (time.perf_counter() - t0) * 1e3
        sel_owner, sel_T = [], []
        for c in hypotheses:
            mine = [b for b, o in enumerate(owners) if o == c]
            order = sorted(mine, key=lambda b: (-float(prior[b]), b))
            best = float(prior[order[0]])
            order = [b for b in order if float(prior[b]) >= self.config.verification.keep_within * best]
            if not with_depth:
                order = [mine[0]] + [b for b in order if b != mine[0]]
            for b in sorted(order[:max_starts]):
                sel_owner.append(c)
                sel_T.append(poses[b])
        return sel_owner, sel_T

    def _verify(self, obs, owners: list[int], candidates: Sequence[Candidate], poses: Sequence[np.ndarray],
                with_depth: bool) -> VerificationScores:
        """Render-and-compare scores of hypotheses (``owners[b]``: the candidate of ``poses[b]``)."""
        vc = self.config.verification
        S = self.config.crops.size_px
        renderer = self._verification_renderer()
        ids = [candidates[c].object_id for c in owners]
        pairs = [(b, obs.slot_offset[c] + k) for b, c in enumerate(owners) for k in range(len(obs.slots[c]))]
        depth_r, rgb_r = render_pairs(renderer, self._verification_handle, obs, pairs, ids, poses, S)
        dev = self.builder.device
        slots = torch.tensor([m for _, m in pairs], dtype=torch.long)
        owner = torch.tensor([b for b, _ in pairs], dtype=torch.long, device=dev)
        diameters = torch.tensor([self.models[ids[b]].diameter_m for b, _ in pairs], dtype=torch.float64)
        tolerance = torch.clamp(vc.depth_tolerance_diameters * diameters, min=vc.depth_tolerance_m)
        observed_gray, observed_depth, segment = self._observed_small(obs, candidates, with_depth)
        if observed_depth is not None:
            observed_depth, segment = observed_depth[slots.to(dev)], segment[slots.to(dev)]
        return compare(torch.from_numpy(depth_r).to(dev), gray(rgb_r).to(dev), observed_depth, observed_gray[slots.to(dev)],
                       segment, owner, len(owners), tolerance.to(dev), vc.appearance_floor)

    def _observed_small(self, obs, candidates: Sequence[Candidate], with_depth: bool):
        """Every observation slot on the verification grid, once per frame (many hypotheses share a
        slot): grey values (M, s, s), and in RGB-D depth (M, s, s) and the candidate's segment (M, s, s)
        (else None, None). Kept in ``obs.derived``."""
        key = ("verification", self.config.verification.render_size_px, with_depth)
        if key in obs.derived:
            return obs.derived[key]
        vc = self.config.verification
        S = self.config.crops.size_px
        size = self._verification_renderer().width
        factor = S // size
        dev = self.builder.device
        observed_gray = downsampled(gray(obs.rgb), factor, "mean").to(dev)
        observed_depth = segment = None
        if with_depth and obs.depth is not None:
            observed_depth = downsampled(obs.depth, factor, "nearest")
            owner_of_slot = [c for c, sl in enumerate(obs.slots) for _ in sl]
            centres = torch.from_numpy(np.stack([self._centre(candidates[c]) for c in owner_of_slot])) if owner_of_slot else \
                torch.zeros(0, 3, dtype=torch.float64)
            radius = torch.tensor([vc.segment_radius_diameters * self.models[candidates[c].object_id].diameter_m
                                   for c in owner_of_slot], dtype=torch.float64)
            K_small = torch.from_numpy(scaled_crop_intrinsics(obs.K_crop.numpy(), S, size))
            segment = segment_masks(observed_depth, K_small, obs.T_crop_world, centres, radius).to(dev)
            observed_depth = observed_depth.to(dev)
        obs.derived[key] = (observed_gray, observed_depth, segment)
        return obs.derived[key]

    def _verification_renderer(self):
        """A renderer of ``verification.render_size_px`` (created on first use, in the refining thread,
        with the refinement renderer's settings); the refinement's own when the sizes agree."""
        size = self.config.verification.render_size_px
        main = self.builder.renderer
        if size == main.width:
            return main
        if self._small_renderer is None:
            if self.config.crops.size_px % size:
                raise InvalidInputError(f"VerificationConfig.render_size_px {size} must divide CropConfig.size_px "
                                        f"{self.config.crops.size_px}")
            self._small_renderer = type(main)(size, size, main.settings)
        return self._small_renderer

    def _verification_handle(self, object_id: int) -> int:
        renderer = self._verification_renderer()
        if renderer is self.builder.renderer:
            return self.builder.handle(object_id)
        if object_id not in self._small_handles:
            model = simplified(self.models[object_id], self.config.verification.max_render_faces)
            self._small_handles[object_id] = renderer.add_object(model)
        return self._small_handles[object_id]

    def _align(self, obs, owners: list[int], candidates: Sequence[Candidate], T: list[np.ndarray], masks, timings):
        t0 = time.perf_counter()
        problem = self.builder.problem(obs, owners, [candidates[c].object_id for c in owners], T, masks)
        t1 = time.perf_counter()
        T_init = torch.from_numpy(np.stack(T)).to(problem.points_obj.device)
        res = align(problem, T_init, self.config.alignment)
        res.T_world_object, res.covariance = res.T_world_object.cpu(), res.covariance.cpu()
        for name in ("mean_cost", "inlier_share", "view_inlier_share", "valid"):
            setattr(res, name, getattr(res, name).cpu())
        timings["refinement_render"] += (t1 - t0) * 1e3
        timings["refinement_align"] += (time.perf_counter() - t1) * 1e3
        return res

    def _estimate(self, c: int, cand: Candidate, final, first, owners: list[int], costs: torch.Tensor, winner: int,
                  agreement: float, slots: list[int], instance_id: int, with_depth: bool) -> PoseEstimate:
        cfg = self.config
        model = self.models[cand.object_id]
        res, b, used = final
        T = res.T_world_object[b].numpy()
        mine = [k for k, o in enumerate(owners) if o == c]
        own_cost = costs[mine]
        weights = torch.softmax(-cfg.hypothesis_sharpness * (own_cost - own_cost.min()), 0)
        win = mine.index(winner)
        winner_weight = float(weights[win])
        # ``agreement``: averaged over the views that should see the object (a candidate that only one
        # view supports while the others see something else there scores low), times the
        # render-and-compare terms when verification is on.
        score = float(np.clip(agreement * winner_weight, 0.0, 1.0))
        mode = "rgbd" if with_depth else "rgb"
        # A pose the views agree with less is wrong by more than its Hessian says (appearance the
        # render cannot explain): the calibrated scale grows as score^-exponent.
        scale = float(cfg.covariance_scale.get(mode, 1.0)) * max(score, MIN_SCORE_FOR_SCALE) ** -float(
            cfg.covariance_score_exponent.get(mode, 0.0))
        cov = res.covariance[b].numpy() * scale
        # Mixture over this candidate's starts (their first-round solutions) about the final pose.
        # Components below ``mixture_min_weight`` are left out (and the rest renormalized): the many
        # flip hypotheses that plainly lose would otherwise each add weight x (a half turn)^2.
        kept = [(w, k) for w, k in zip(weights.tolist(), mine)
                if k == winner or (w >= cfg.mixture_min_weight and math.isfinite(float(costs[k])))]
        total = sum(w for w, _ in kept)
        mix = winner_weight / total * cov
        ref = Pose.from_matrix(torch.from_numpy(T))
        for w, k in kept:
            if k == winner:
                continue
            w = w / total
            Tk = closest_equivalent(first.T_world_object[k].numpy(), T, model.symmetries)
            d = pose_difference(Pose.from_matrix(torch.from_numpy(Tk)), ref).numpy()
            mix = mix + w * (first.covariance[k].numpy() * scale + np.outer(d, d))
        T_out, cov_out = canonical_equivalent(T, 0.5 * (mix + mix.T), model.symmetries)
        views = tuple(v for v, u in zip(slots, used) if u)
        return PoseEstimate(cand.object_id, instance_id, T_out, cov_out, score, views)


def _moved(T_new: torch.Tensor, T_old: torch.Tensor, config: RefinementConfig) -> bool:
    d = pose_difference(Pose.from_matrix(T_new.double()), Pose.from_matrix(T_old.double()))
    return bool(d[:3].norm() > config.rerender_dt_m or math.degrees(float(d[3:].norm())) > config.rerender_drot_deg)


__all__ = ["MultiViewRefiner", "RefinementConfig", "canonical_equivalent"]
