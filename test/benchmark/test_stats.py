"""pose_bench statistics: median / p95 / max against numpy, and the stage-group table."""
import numpy as np
import pytest

from pose_node.benchmark.stats import STAGE_GROUPS, group_of, group_timings, rate_hz, stage_table, summarize
from pose_node.core.errors import InvalidInputError


@pytest.mark.parametrize("values", [[5.0], [3.0, 1.0], list(np.random.default_rng(0).gamma(2.0, 50.0, 37))])
def test_summarize_matches_numpy(values):
    stats = summarize(values)
    assert stats.median == pytest.approx(np.median(values))
    assert stats.p95 == pytest.approx(np.percentile(values, 95))
    assert stats.max == max(values) and stats.n == len(values)
    assert stats.to_json() == {"median": stats.median, "p95": stats.p95, "max": stats.max, "n": len(values)}


def test_summarize_known_values():
    stats = summarize(range(1, 101))  # 1..100
    assert (stats.median, stats.p95, stats.max) == (50.5, pytest.approx(95.05), 100.0)


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf")]])
def test_summarize_rejects_empty_and_non_finite(values):
    with pytest.raises(InvalidInputError, match="summarize"):
        summarize(values)


def test_group_timings_maps_todays_keys_to_the_issue_stages():
    timings = {"decode": 1.0, "sync": 0.5, "proposals": 10.0, "matching": 20.0, "correspondence": 30.0, "pnp": 5.0,
               "fusion": 0.25, "total": 70.0, "publishing": 4.0}
    assert group_timings(timings) == {"sync": 1.5, "detection": 30.0, "correspondence_pnp": 35.0, "association": 0.25,
                                      "publishing": 4.0}


def test_group_timings_takes_new_and_unknown_keys_without_failing():
    # The refinement issue replaces fusion with association and adds refinement (and maybe more).
    timings = {"proposals": 1.0, "association": 2.0, "refinement": 3.0, "tracking": 4.0, "total": 11.0}
    grouped = group_timings(timings)
    assert grouped == {"detection": 1.0, "association": 2.0, "refinement": 3.0, "tracking": 4.0}
    assert group_of("refinement_render") == "refinement_render" and group_of("pnp") == "correspondence_pnp"
    assert group_timings({}) == {}


def test_stage_table_has_every_group_and_none_where_unmeasured():
    frames = [{"detection": 10.0, "extra": 1.0}, {"detection": 30.0}, {"detection": 20.0}]
    table = stage_table(frames)
    assert list(table)[:len(STAGE_GROUPS)] == [g for g, _ in STAGE_GROUPS]
    assert table["detection"].median == 20.0 and table["detection"].n == 3
    assert table["refinement"] is None and table["sync"] is None
    assert table["extra"].n == 1 and table["extra"].max == 1.0


def test_rate_hz():
    assert rate_hz([0, 10**9, 2 * 10**9]) == pytest.approx(1.0)
    assert rate_hz([5 * 10**8, 0]) == pytest.approx(2.0)  # order does not matter
    assert rate_hz([7]) is None and rate_hz([3, 3]) is None


def test_parts_of_a_stage_are_not_counted_as_stages():
    from pose_node.benchmark.stats import group_timings

    grouped = group_timings({"association": 1.0, "refinement": 10.0, "refinement_align": 6.0, "refinement_render": 3.0})
    assert grouped == {"association": 1.0, "refinement": 10.0}
