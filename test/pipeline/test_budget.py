"""The per-set time budget (pose_node.pipeline.budget) through the pipeline's set function
(pose_node.pipeline.estimate.estimate_set and detect_and_estimate), with stub stages
that advance an injected clock by a known cost per unit of work, so every decision is exact."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import Camera, Detection, PoseEstimate, View
from pose_node.pipeline.budget import COUNT_KEYS, Degradation, StageLimits, TimeBudget, TimeBudgetConfig, latency_items
from pose_node.pipeline.estimate import detect_and_estimate, estimate_set, nominal_limits

NUM_VIEWS = 3
PROPOSALS_FOUND = 40  # per view; the nominal cap is 32, the degraded one 16
DETECTIONS = 4  # per view
CANDIDATES = 4
PROPOSALS_MS, MATCH_MS_PER_PROPOSAL = 10.0, 5.0
CORRESPONDENCE_MS_PER_DETECTION, PNP_MS_PER_HYPOTHESIS = 10.0, 10.0
ASSOCIATION_MS, OBSERVE_MS_PER_CANDIDATE, REFINE_MS_PER_UNIT = 5.0, 10.0, 20.0
# Nominal set: 3 x (10 + 32 x 5 + 4 x 10 + 4 x 3 x 10) + 5 + 4 x 10 + 4 x (3 + 2 - 1) x 20 = 1355 ms;
# level 1 (cap 16): 1115 ms; level 2 (1 hypothesis, 1 start): 715 ms; level 3 (1 round): 635 ms.
SET_MS = {Degradation.NONE: 1355.0, Degradation.FEWER_PROPOSALS: 1115.0, Degradation.FEWER_HYPOTHESES: 715.0,
          Degradation.FEWER_ROUNDS: 635.0}


class FakeClock:
    """Seconds that move only when a stub stage spends them."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def spend(self, ms: float) -> None:
        self.t += ms / 1e3


@dataclass
class Calls:
    caps: list[int] = field(default_factory=list)
    hypotheses: list[int] = field(default_factory=list)
    refinement: list[tuple[int, int]] = field(default_factory=list)


class StubDetector:
    """Finds PROPOSALS_FOUND proposals per view, matches min(found, cap) of them."""

    def __init__(self, clock: FakeClock, calls: Calls) -> None:
        self.config = SimpleNamespace(max_proposals_per_view=32)
        self.clock, self.calls = clock, calls
        self.slow_view, self.slow_factor = None, 1.0

    def detect(self, view, *, object_ids=None, view_index=0, max_proposals=None):
        cap = self.config.max_proposals_per_view if max_proposals is None else max_proposals
        matched = PROPOSALS_FOUND if cap == 0 else min(cap, PROPOSALS_FOUND)
        per_proposal = MATCH_MS_PER_PROPOSAL * (self.slow_factor if view_index == self.slow_view else 1.0)
        self.clock.spend(PROPOSALS_MS + matched * per_proposal)
        self.calls.caps.append(cap)
        # What a detector finds depends on what it matched: scores carry the cap.
        detections = [Detection(object_id=1 + k, view_index=view_index, score=0.5 + 0.01 * k + 1e-4 * matched,
                                box_xyxy=np.array([0.0, 0.0, 4.0, 4.0])) for k in range(DETECTIONS)]
        return detections, {"proposals": PROPOSALS_MS, "matching": matched * per_proposal, "proposals_total": float(PROPOSALS_FOUND),
                             "proposals_matched": float(matched), "proposals_cut": float(PROPOSALS_FOUND - matched)}

    def confirm(self, views, detections):
        return [list(d) for d in detections]  # the multi-view check costs nothing here


class StubEstimator:
    def __init__(self, clock: FakeClock, calls: Calls) -> None:
        self.config = SimpleNamespace(num_hypotheses=3)
        self.clock, self.calls = clock, calls

    def estimate_view(self, view, detections, *, num_hypotheses=None):
        H = self.config.num_hypotheses if num_hypotheses is None else num_hypotheses
        timings = {"correspondence": len(detections) * CORRESPONDENCE_MS_PER_DETECTION,
                   "pnp": len(detections) * H * PNP_MS_PER_HYPOTHESIS}
        self.clock.spend(sum(timings.values()))
        self.calls.hypotheses.append(H)
        return [SimpleNamespace(detection=d, hypotheses=H) for d in detections], timings

    def to_world(self, view, poses, first_instance_id=0):
        out = []
        for k, pose in enumerate(poses):
            d, H = pose.detection, pose.hypotheses
            T = np.eye(4)
            T[:3, 3] = [d.object_id * 0.1, d.view_index * 0.01, H * 1e-3]
            out.append(PoseEstimate(d.object_id, first_instance_id + k, T, np.eye(6) * 1e-4, d.score, (d.view_index,)))
        return out


class StubFusion:
    def __init__(self, clock: FakeClock, calls: Calls) -> None:
        self.config = SimpleNamespace(refinement=SimpleNamespace(max_starts=3, rounds=2))
        self.clock, self.calls = clock, calls

    def __call__(self, views, estimates, with_depth, *, limits=None):
        self.clock.spend(ASSOCIATION_MS)
        starts, rounds = limits(CANDIDATES)
        self.calls.refinement.append((starts, rounds))
        observe_ms, align_ms = CANDIDATES * OBSERVE_MS_PER_CANDIDATE, CANDIDATES * (starts + rounds - 1) * REFINE_MS_PER_UNIT
        self.clock.spend(observe_ms + align_ms)
        by_object: dict[int, list[PoseEstimate]] = {}
        for e in estimates:
            by_object.setdefault(e.object_id, []).append(e)
        fused = []
        for i, (obj, members) in enumerate(sorted(by_object.items())):
            T = members[0].T_world_object.copy()
            T[2, 3] += starts * 1e-4 + rounds * 1e-5  # what refinement returns depends on its settings
            fused.append(PoseEstimate(obj, i, T, members[0].covariance, max(m.score for m in members), tuple(range(len(views)))))
        return fused, {"association": ASSOCIATION_MS, "refinement": observe_ms + align_ms, "refinement_observe": observe_ms,
                       "refinement_align": align_ms}


def _views() -> list[View]:
    K = np.array([[100.0, 0, 16], [0, 100.0, 12], [0, 0, 1]])
    return [View(Camera(K, 32, 24), np.zeros((24, 32, 3), np.uint8), name=f"cam{i}") for i in range(NUM_VIEWS)]


def _pipeline(budget_ms: float):
    clock, calls = FakeClock(), Calls()
    detector, estimator, fusion = StubDetector(clock, calls), StubEstimator(clock, calls), StubFusion(clock, calls)
    budget = TimeBudget(TimeBudgetConfig(time_budget_ms=budget_ms), nominal_limits(detector, estimator, fusion), clock=clock)
    return SimpleNamespace(clock=clock, calls=calls, stages=(detector, estimator, fusion), budget=budget)


def _run(p, views=None):
    p.calls.caps.clear(), p.calls.hypotheses.clear(), p.calls.refinement.clear()
    return estimate_set(*p.stages, views or _views(), p.budget, with_depth=True)[:3]


def test_the_stub_costs_are_what_the_levels_assume():
    p = _pipeline(0.0)
    t0 = p.clock()
    _, timings, report = _run(p)
    assert (p.clock() - t0) * 1e3 == pytest.approx(SET_MS[Degradation.NONE])
    assert report.level == Degradation.NONE and timings["budget_level"] == 0.0 and not report.over_budget
    assert p.calls.caps == [32] * NUM_VIEWS and p.calls.hypotheses == [3] * NUM_VIEWS and p.calls.refinement == [(3, 2)]
    # Counts summed over the views, next to (not inside) the latencies.
    assert (timings["proposals_total"], timings["proposals_matched"], timings["proposals_cut"]) == (120.0, 96.0, 24.0)
    assert COUNT_KEYS.isdisjoint(latency_items(timings))


@pytest.mark.parametrize("budget_ms, level", [
    (1400.0, Degradation.NONE), (1200.0, Degradation.FEWER_PROPOSALS), (900.0, Degradation.FEWER_HYPOTHESES),
    (650.0, Degradation.FEWER_ROUNDS), (100.0, Degradation.FEWER_ROUNDS),
])
def test_slow_sets_step_down_the_levels_in_order(budget_ms, level):
    p = _pipeline(budget_ms)
    _run(p)  # the first set measures the stages (the running estimates start empty)
    t0 = p.clock()
    _, timings, report = _run(p)
    spent = (p.clock() - t0) * 1e3
    assert report.level == level and timings["budget_level"] == float(level)
    expected = TimeBudgetConfig().limits(level, StageLimits(32, 3, 3, 2))
    # The whole set ran at the chosen level: each level adds its cut to the previous ones.
    assert p.calls.caps == [expected.max_proposals_per_view] * NUM_VIEWS
    assert p.calls.hypotheses == [expected.num_hypotheses] * NUM_VIEWS
    assert p.calls.refinement == [(expected.max_starts, expected.rounds)]
    assert spent == pytest.approx(SET_MS[level])
    assert report.over_budget == (spent > budget_ms)
    assert timings["proposals_cut"] == NUM_VIEWS * (PROPOSALS_FOUND - expected.max_proposals_per_view)


def test_a_set_that_turns_slow_degrades_its_remaining_stages():
    """View 0's matching takes twice its estimate (320 ms instead of 160): the set would take
    1515 ms of 1400, so from view 0's pose stage on it runs at level 1 (1355 ms)."""
    p = _pipeline(1400.0)
    _run(p)
    p.stages[0].slow_view, p.stages[0].slow_factor = 0, 2.0
    t0 = p.clock()
    _, timings, report = _run(p)
    assert p.calls.caps == [32, 16, 16]  # view 0 was matched before anything looked slow
    assert p.calls.hypotheses == [3, 3, 3] and p.calls.refinement == [(3, 2)]  # level 1 is enough
    assert report.level == Degradation.FEWER_PROPOSALS and timings["budget_level"] == 1.0
    assert (p.clock() - t0) * 1e3 == pytest.approx(SET_MS[Degradation.NONE] + 160.0 - 2 * 80.0) and not report.over_budget
    assert timings["proposals_cut"] == (40 - 32) + 2 * (40 - 16)


def test_a_generous_budget_changes_nothing():
    outputs = []
    for budget_ms in (0.0, 1e6):
        p = _pipeline(budget_ms)
        sets = [_run(p) for _ in range(3)]
        outputs.append(([[(e.object_id, e.T_world_object.tobytes(), e.covariance.tobytes(), e.score) for e in fused]
                         for fused, _, _ in sets], [{k: v for k, v in t.items()} for _, t, _ in sets],
                        (p.calls.caps, p.calls.hypotheses, p.calls.refinement)))
        assert all(r.level == Degradation.NONE for _, _, r in sets)
    assert outputs[0] == outputs[1]


def test_limits_and_validation():
    config = TimeBudgetConfig(degraded_max_proposals_per_view=8, degraded_num_hypotheses=2, degraded_max_starts=1,
                              degraded_rounds=1)
    nominal = StageLimits(max_proposals_per_view=0, num_hypotheses=3, max_starts=3, rounds=2)
    assert config.limits(Degradation.NONE, nominal) == nominal
    assert config.limits(Degradation.FEWER_PROPOSALS, nominal) == StageLimits(8, 3, 3, 2)  # no cap -> the degraded cap
    assert config.limits(Degradation.FEWER_HYPOTHESES, nominal) == StageLimits(8, 2, 1, 2)
    assert config.limits(Degradation.FEWER_ROUNDS, nominal) == StageLimits(8, 2, 1, 1)
    # A degraded setting never raises a nominal one.
    assert config.limits(Degradation.FEWER_ROUNDS, StageLimits(4, 1, 1, 1)) == StageLimits(4, 1, 1, 1)
    assert not TimeBudgetConfig().enabled and TimeBudgetConfig(time_budget_ms=50).enabled
    for bad in ({"time_budget_ms": -1.0}, {"time_budget_ms": float("inf")}, {"degraded_rounds": 0}, {"smoothing": 0.0}):
        with pytest.raises(InvalidInputError, match=next(iter(bad))):
            TimeBudgetConfig(**bad)
    with pytest.raises(InvalidInputError, match="num_hypotheses"):
        StageLimits(4, 0, 1, 1)


def test_detections_the_other_views_do_not_confirm_are_neither_reported_nor_fused():
    p = _pipeline(0.0)
    detector, estimator, _ = p.stages

    def confirm(views, detections):  # view 0's object 1 is not confirmed
        return [[d for d in dets if not (v == 0 and d.object_id == 1)] for v, dets in enumerate(detections)]

    detector.confirm = confirm
    estimates, _, per_view = detect_and_estimate(detector, estimator, _views())
    assert [d.object_id for d in per_view[0].detections] == list(range(2, DETECTIONS + 1))
    assert all(len(v.detections) == DETECTIONS for v in per_view[1:])
    assert (1, (0,)) not in {(e.object_id, e.view_indices) for e in estimates}
    assert len(estimates) == NUM_VIEWS * DETECTIONS - 1 and [e.instance_id for e in estimates] == list(range(len(estimates)))
