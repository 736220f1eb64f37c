"""Multi-view refinement of associated candidates: one world pose per object from all views (ROS-free).

Per frame (everything batched over objects, starts and views):

1. **Observe** each candidate in every view that sees it (crop, features, depth), once.
2. **Starts.** The candidate's associated pose plus up to ``max_starts - 1`` alternatives (single-
   view hypotheses of the same instance with another rotation, e.g. a flip). Each start is
   rendered and aligned for one round; the start whose render explains the views best (lowest
   robust cost per point) wins. This is where a flip seen by one view is outvoted by the others.
3. **Rounds.** The winner is re-rendered at its new pose and aligned again while it still moves
   more than ``rerender_dt_m`` / ``rerender_drot_deg`` (at most ``rounds`` in all). From the second
   round on, a view whose points mostly disagree with the render (occluded, wrong extrinsics,
   another object) is left out.
4. **Covariance** ``covariance_scale x score^-k x sigma^2 (J^T W J)^-1`` at the final pose
   (score: step 5; a worse fit is wrong by more than its Hessian says), moment-matched with
   the other starts' solutions weighted by ``exp(-hypothesis_sharpness x cost difference)``, so
   doubt between a pose and its flip widens it (as the single-view stage does). The scale and k
   are calibrated per mode on validation workcells (``pose_refinement_bench --calibrate``).
5. **Score** in [0, 1]: the share of points whose features agree with the observation (residual
   below ``alignment.inlier_threshold``), averaged over every view that should see the object
   (first round, before views are dropped), times the winner's mixture weight.
6. **Symmetric objects** are reported as the symmetric equivalent whose rotation is closest to the
   world frame's axes (a canonical choice, the same for every frame); the pipeline's tracker then
   keeps the equivalent closest to the previous frame's.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, pose_difference
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.refinement.alignment import AlignmentConfig, align
from pose_node.refinement.association import Candidate, closest_equivalent, equivalent_with_covariance, rotation_angle_deg
from pose_node.refinement.problem import CropConfig, ProblemBuilder

logger = logging.getLogger(__name__)

#: Scores below this inflate the covariance no further (a wrong pose is the mixture's business).
MIN_SCORE_FOR_SCALE = 0.05


@dataclass(frozen=True)
class RefinementConfig:
    """Multi-view refinement settings (module docstring).

    Attributes:
        crops: crop cameras, features and points.
        alignment: the LM solver.
        max_starts: start poses per candidate (the associated pose and alternatives).
        rounds: render + align rounds of the winning start (>= 1).
        rerender_dt_m, rerender_drot_deg: another round only if the last one moved more.
        min_view_inlier_share: after the first round, views whose points agree less are dropped.
        hypothesis_sharpness: mixture weights ``exp(-sharpness * (cost - best cost))``.
        covariance_scale: mode (``rgb`` / ``rgbd``) -> calibrated factor (missing: 1).
        covariance_score_exponent: mode -> k: the factor is divided by ``score^k`` (missing: 0).
        use_depth: add the depth residual when views have depth.
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

    def __post_init__(self) -> None:
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
        timings = {"refinement_observe": 0.0, "refinement_render": 0.0, "refinement_align": 0.0}
        if not candidates:
            return [], timings
        with_depth = with_depth and cfg.use_depth
        t0 = time.perf_counter()
        obs = self.builder.observe(views, [c.object_id for c in candidates], [c.T_world_object for c in candidates], with_depth)
        timings["refinement_observe"] += (time.perf_counter() - t0) * 1e3
        active = [c for c, s in enumerate(obs.slots) if s]

        # Round 1 over every start of every candidate seen by at least one view.
        start_owner, start_T = [], []
        for c in active:
            for T in self._starts(candidates[c], max_starts):
                start_owner.append(c)
                start_T.append(T)
        if not start_owner:  # no view sees any candidate: nothing to refine against
            return [c.to_estimate(i) for i, c in enumerate(candidates)], timings
        res = self._align(obs, start_owner, candidates, start_T, None, timings)
        costs = torch.where(res.valid, res.mean_cost, torch.full_like(res.mean_cost, math.inf))
        winners: dict[int, int] = {}
        for b, c in enumerate(start_owner):
            if c not in winners or costs[b] < costs[winners[c]]:
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
            out.append(self._estimate(c, cand, final[c], res, start_owner, costs, obs.slots[c], with_depth, len(out)))
        return out, timings

    def _starts(self, cand: Candidate, max_starts: int) -> list[np.ndarray]:
        """The associated pose and distinct alternatives (by rotation, after symmetry), at most ``max_starts``."""
        model = self.models[cand.object_id]
        starts = [np.asarray(cand.T_world_object, dtype=np.float64)]
        for alt in sorted(cand.alternatives, key=lambda e: -e.score):
            if len(starts) >= max_starts:
                break
            T = closest_equivalent(alt.T_world_object, starts[0], model.symmetries)
            if all(rotation_angle_deg(T, s) > 10.0 for s in starts):
                starts.append(T)
        return starts

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

    def _estimate(self, c: int, cand: Candidate, final, first, owners: list[int], costs: torch.Tensor, slots: list[int],
                  with_depth: bool, instance_id: int) -> PoseEstimate:
        cfg = self.config
        model = self.models[cand.object_id]
        res, b, used = final
        T = res.T_world_object[b].numpy()
        mine = [k for k, o in enumerate(owners) if o == c]
        own_cost = costs[mine]
        weights = torch.softmax(-cfg.hypothesis_sharpness * (own_cost - own_cost.min()), 0)
        winner_weight = float(weights[int(own_cost.argmin())])
        # Agreement averaged over the views that should see the object: a candidate that only one
        # view supports while the others see something else there scores low.
        agreement = float(first.view_inlier_share[mine[int(own_cost.argmin())], :len(slots)].mean())
        score = float(np.clip(agreement * winner_weight, 0.0, 1.0))
        mode = "rgbd" if with_depth else "rgb"
        # A pose the views agree with less is wrong by more than its Hessian says (appearance the
        # render cannot explain): the calibrated scale grows as score^-exponent.
        scale = float(cfg.covariance_scale.get(mode, 1.0)) * max(score, MIN_SCORE_FOR_SCALE) ** -float(
            cfg.covariance_score_exponent.get(mode, 0.0))
        cov = res.covariance[b].numpy() * scale
        # Mixture over this candidate's starts (their first-round solutions) about the final pose.
        mix = winner_weight * cov
        ref = Pose.from_matrix(torch.from_numpy(T))
        for w, k in zip(weights.tolist(), mine):
            if k == mine[int(own_cost.argmin())] or not math.isfinite(float(costs[k])):
                continue
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
