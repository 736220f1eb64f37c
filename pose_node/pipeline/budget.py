"""A per-set time budget: the pipeline degrades in a stated order when a set would run over (ROS-free).

One multi-view set costs: per view, proposals, then matching (linear in the proposals matched),
then the pose stage (the network per detection, the solver per detection x pose hypothesis); per
set, association, then refinement (observing each candidate, then rendering and aligning
candidates x (starts + rounds - 1) poses). Nothing bounds the proposals count, so
a cluttered view can take seconds. ``time_budget_ms`` (0: off) makes the set degrade, in this
order (each level keeps the previous levels' cuts):

    level 0 NONE              nominal settings
    level 1 FEWER_PROPOSALS   at most ``degraded_max_proposals_per_view`` proposals matched per view
    level 2 FEWER_HYPOTHESES  + ``degraded_num_hypotheses`` pose hypotheses per detection and
                              ``degraded_max_starts`` refinement starts (alternatives) per candidate
    level 3 FEWER_ROUNDS      + ``degraded_rounds`` refinement rounds

The decision is taken before each stage (each view's detection, each view's pose stage, the
refinement), from the time already spent in the set (an injected clock, so tests are
deterministic) and a running estimate of the remaining stages' cost: per-unit costs (ms per
matched proposal, per detection and per pose hypothesis, per candidate observed and per pose
aligned) and per-set counts (proposals per
view, detections per view, candidates per set), exponential moving averages over the previous
sets, taken from the stages' own timings dicts. Within a set the level only goes up: the lowest
level, not below the current one, whose estimated total fits the budget; the highest level when
none does. Before any set has been measured, the set's own measurements so far stand in (the
first set degrades only once its spent time alone is over budget). The level used is reported as
``budget_level`` in the timings and as a :class:`BudgetReport`.

Keys of a timings dict that are counts, not milliseconds, are listed in :data:`COUNT_KEYS`, so
latency statistics can leave them out.
"""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pose_node.core.errors import InvalidInputError

logger = logging.getLogger(__name__)

#: Timings-dict keys that are counts (per view from the detector, summed per set), not milliseconds.
COUNT_KEYS: frozenset[str] = frozenset({"proposals_total", "proposals_matched", "proposals_cut", "budget_level"})


def latency_items(timings: dict[str, float]) -> dict[str, float]:
    """The millisecond entries of a timings dict (the :data:`COUNT_KEYS` left out)."""
    return {k: v for k, v in timings.items() if k not in COUNT_KEYS}


class Degradation(enum.IntEnum):
    """Degradation levels, in the order they are applied (module docstring)."""

    NONE = 0
    FEWER_PROPOSALS = 1
    FEWER_HYPOTHESES = 2
    FEWER_ROUNDS = 3


@dataclass(frozen=True)
class StageLimits:
    """What the stages may spend at one level.

    Attributes:
        max_proposals_per_view: proposals matched per view (highest proposal score first; 0: all).
        num_hypotheses: pose hypotheses solved per detection.
        max_starts: refinement start poses per candidate (its pose and alternatives).
        rounds: refinement render + align rounds.
    """

    max_proposals_per_view: int
    num_hypotheses: int
    max_starts: int
    rounds: int

    def __post_init__(self) -> None:
        if self.max_proposals_per_view < 0:
            raise InvalidInputError(f"StageLimits.max_proposals_per_view: expected >= 0 (0: no cap), got {self.max_proposals_per_view}")
        for name in ("num_hypotheses", "max_starts", "rounds"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"StageLimits.{name}: expected >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TimeBudgetConfig:
    """The per-set time budget (module docstring).

    Attributes:
        time_budget_ms: milliseconds per multi-view set; 0: no budget (nominal settings always).
        degraded_max_proposals_per_view: the proposal cap from level 1 on: the most proposals a
            cluttered generated workcell view had (16, see ``DetectorConfig.max_proposals_per_view``),
            so level 1 cuts only unusual views; a cap of 8 there cost 1.5 of 3.9 detections per view.
        degraded_num_hypotheses: pose hypotheses per detection from level 2 on.
        degraded_max_starts: refinement starts per candidate from level 2 on.
        degraded_rounds: refinement rounds at level 3.
        smoothing: weight of the newest set in the running estimates, (0, 1].
    """

    time_budget_ms: float = 0.0
    degraded_max_proposals_per_view: int = 16
    degraded_num_hypotheses: int = 1
    degraded_max_starts: int = 1
    degraded_rounds: int = 1
    smoothing: float = 0.3

    def __post_init__(self) -> None:
        if not self.time_budget_ms >= 0 or self.time_budget_ms == float("inf"):
            raise InvalidInputError(f"TimeBudgetConfig.time_budget_ms: expected a finite number >= 0 (0: off), got {self.time_budget_ms}")
        for name in ("degraded_max_proposals_per_view", "degraded_num_hypotheses", "degraded_max_starts", "degraded_rounds"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"TimeBudgetConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if not 0 < self.smoothing <= 1:
            raise InvalidInputError(f"TimeBudgetConfig.smoothing: expected (0, 1], got {self.smoothing}")

    @property
    def enabled(self) -> bool:
        return self.time_budget_ms > 0

    def limits(self, level: Degradation, nominal: StageLimits) -> StageLimits:
        """The limits at ``level``: the nominal ones, cut as the levels up to ``level`` say (never raised)."""
        cap = nominal.max_proposals_per_view
        if level >= Degradation.FEWER_PROPOSALS:
            cap = self.degraded_max_proposals_per_view if cap == 0 else min(cap, self.degraded_max_proposals_per_view)
        hypotheses, starts, rounds = nominal.num_hypotheses, nominal.max_starts, nominal.rounds
        if level >= Degradation.FEWER_HYPOTHESES:
            hypotheses, starts = min(hypotheses, self.degraded_num_hypotheses), min(starts, self.degraded_max_starts)
        if level >= Degradation.FEWER_ROUNDS:
            rounds = min(rounds, self.degraded_rounds)
        return StageLimits(cap, hypotheses, starts, rounds)


@dataclass(frozen=True)
class BudgetReport:
    """How one set used its budget.

    Attributes:
        level: the highest degradation level used in the set.
        budget_ms: the budget (0: off).
        spent_ms: the set's time by the budget's clock, milliseconds.
        limits: the limits of ``level``.
    """

    level: Degradation
    budget_ms: float
    spent_ms: float
    limits: StageLimits

    @property
    def over_budget(self) -> bool:
        return self.budget_ms > 0 and self.spent_ms > self.budget_ms


class TimeBudget:
    """The budget across sets: configuration, nominal limits, clock and running estimates.

    Args:
        config: the budget.
        nominal: the limits at level 0 (the pipeline's configured settings).
        clock: seconds, monotonic (default :func:`time.perf_counter`); injected in tests.
    """

    def __init__(self, config: TimeBudgetConfig, nominal: StageLimits, clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config
        self.nominal = nominal
        self.clock = clock
        self.estimates: dict[str, float] = {}

    def start_set(self, num_views: int) -> BudgetSession:
        """A session for one set of ``num_views`` views (its clock starts now)."""
        return BudgetSession(self, num_views)

    def _update(self, observed: dict[str, float]) -> None:
        a = self.config.smoothing
        for name, value in observed.items():
            old = self.estimates.get(name)
            self.estimates[name] = value if old is None else (1.0 - a) * old + a * value


@dataclass
class _Sums:
    """What one set measured so far."""

    views: int = 0
    proposals_ms: float = 0.0
    matching_ms: float = 0.0
    proposals_total: float = 0.0
    proposals_matched: float = 0.0
    detections: float = 0.0
    correspondence_ms: float = 0.0
    pnp_ms: float = 0.0
    hypotheses: float = 0.0
    fusion: dict[str, float] = field(default_factory=dict)

    def observed(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.views:
            out.update(proposals_ms_per_view=self.proposals_ms / self.views, proposals_per_view=self.proposals_total / self.views,
                       detections_per_view=self.detections / self.views)
        if self.proposals_matched:
            out["matching_ms_per_proposal"] = self.matching_ms / self.proposals_matched
        if self.detections:
            out["correspondence_ms_per_detection"] = self.correspondence_ms / self.detections
        if self.hypotheses:
            out["pnp_ms_per_hypothesis"] = self.pnp_ms / self.hypotheses
        out.update(self.fusion)
        return out


class BudgetSession:
    """One set's budget: asked for limits before each stage, told what each stage measured."""

    def __init__(self, budget: TimeBudget, num_views: int) -> None:
        self.budget = budget
        self.num_views = num_views
        self.level = Degradation.NONE
        self._sums = _Sums()
        self._refinement_work: tuple[int, int] | None = None  # (candidates, units) of the refinement asked for
        self._started = budget.clock()

    # -- decisions --------------------------------------------------------------------------------
    def spent_ms(self) -> float:
        return (self.budget.clock() - self._started) * 1e3

    def limits(self) -> StageLimits:
        """The limits of the current level."""
        return self.budget.config.limits(self.level, self.budget.nominal)

    def view_limits(self, view_index: int) -> StageLimits:
        """Limits for view ``view_index``'s detection (views ``view_index``.. still to come)."""
        return self._decide(lambda lim: self._remaining_ms(lim, views_left=self.num_views - view_index))

    def pose_limits(self, view_index: int, num_detections: int) -> StageLimits:
        """Limits for the pose stage of view ``view_index`` with ``num_detections`` detections."""
        def remaining(lim: StageLimits) -> float:
            return self._pose_ms(lim, num_detections) + self._remaining_ms(lim, views_left=self.num_views - view_index - 1)
        return self._decide(remaining)

    def refinement_limits(self, num_candidates: int) -> tuple[int, int]:
        """``(max_starts, rounds)`` for the refinement of ``num_candidates`` candidates."""
        lim = self._decide(lambda lim: self._refinement_ms(lim, num_candidates))
        self._refinement_work = (num_candidates, num_candidates * (lim.max_starts + lim.rounds - 1))
        return lim.max_starts, lim.rounds

    def _decide(self, remaining: Callable[[StageLimits], float]) -> StageLimits:
        config = self.budget.config
        if not config.enabled:
            return self.limits()
        spent = self.spent_ms()
        chosen = Degradation.FEWER_ROUNDS
        for level in Degradation:
            if level >= self.level and spent + remaining(config.limits(level, self.budget.nominal)) <= config.time_budget_ms:
                chosen = level
                break
        if chosen > self.level:
            logger.debug("time budget: %.1f ms spent of %.1f ms, degradation level %d -> %d (%s)", spent, config.time_budget_ms,
                         self.level, chosen, chosen.name)
            self.level = chosen
        return self.limits()

    def _estimate(self, name: str) -> float:
        """The running estimate, else this set's measurement so far, else 0 (nothing known yet)."""
        value = self.budget.estimates.get(name)
        return value if value is not None else self._sums.observed().get(name, 0.0)

    def _remaining_ms(self, lim: StageLimits, views_left: int) -> float:
        """Estimated cost of ``views_left`` whole views (detection + poses) and of the fusion."""
        proposals = self._estimate("proposals_per_view")
        matched = proposals if lim.max_proposals_per_view == 0 else min(proposals, lim.max_proposals_per_view)
        detections = min(self._estimate("detections_per_view"), matched)
        per_view = self._estimate("proposals_ms_per_view") + matched * self._estimate("matching_ms_per_proposal")
        return views_left * (per_view + self._pose_ms(lim, detections)) + self._refinement_ms(lim, None)

    def _pose_ms(self, lim: StageLimits, detections: float) -> float:
        """Estimated cost of the pose stage of ``detections`` detections of one view."""
        return detections * (self._estimate("correspondence_ms_per_detection")
                             + lim.num_hypotheses * self._estimate("pnp_ms_per_hypothesis"))

    def _refinement_ms(self, lim: StageLimits, candidates: int | None) -> float:
        """Estimated cost of association + refinement (``candidates`` None: the running estimate)."""
        n = self._estimate("candidates_per_set") if candidates is None else candidates
        return self._estimate("association_ms") + n * (self._estimate("observe_ms_per_candidate") + (
            lim.max_starts + lim.rounds - 1) * self._estimate("refinement_ms_per_unit"))

    # -- measurements -----------------------------------------------------------------------------
    def record_detection(self, timings: dict[str, float]) -> None:
        """One view's detector timings (``proposals``, ``matching`` ms and the proposal counts)."""
        s = self._sums
        s.views += 1
        s.proposals_ms += timings.get("proposals", 0.0)
        s.matching_ms += timings.get("matching", 0.0)
        s.proposals_total += timings.get("proposals_total", 0.0)
        s.proposals_matched += timings.get("proposals_matched", 0.0)

    def record_pose(self, num_detections: int, num_hypotheses: int, timings: dict[str, float]) -> None:
        """One view's pose stage (``correspondence`` and ``pnp`` ms) over its detections."""
        s = self._sums
        s.detections += num_detections
        s.hypotheses += num_detections * num_hypotheses
        s.correspondence_ms += timings.get("correspondence", 0.0)
        s.pnp_ms += timings.get("pnp", 0.0)

    def record_fusion(self, timings: dict[str, float]) -> None:
        """The fusion's timings (``association``, ``refinement`` and its part ``refinement_observe``, ms)."""
        f = self._sums.fusion
        f["association_ms"] = timings.get("association", 0.0)
        if self._refinement_work is not None:
            candidates, units = self._refinement_work
            f["candidates_per_set"] = float(candidates)
            observe = timings.get("refinement_observe", 0.0)
            if candidates > 0 and "refinement" in timings:
                f["observe_ms_per_candidate"] = observe / candidates
                f["refinement_ms_per_unit"] = max(timings["refinement"] - observe, 0.0) / units

    def finish(self) -> BudgetReport:
        """Close the set: fold its measurements into the running estimates and report it."""
        self.budget._update(self._sums.observed())
        return BudgetReport(self.level, self.budget.config.time_budget_ms, self.spent_ms(), self.limits())


__all__ = ["COUNT_KEYS", "BudgetReport", "BudgetSession", "Degradation", "StageLimits", "TimeBudget", "TimeBudgetConfig",
           "latency_items"]
