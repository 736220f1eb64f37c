"""Replay throughput figures on synthetic inputs (the node run itself is too slow for a unit test:
``pose_bench --replay`` in the README measures it)."""
import pytest

from pose_node.benchmark.harness import BenchConfig
from pose_node.benchmark.scenario import ScenarioConfig
from pose_node.benchmark.throughput import ThroughputConfig, loop_rate_factor, parse_rates, summarize_rate
from pose_node.core.errors import InvalidInputError

MS = 1_000_000
T0 = 1_800_000_000_000_000_000


def test_rates_latency_and_drops_from_stamps():
    # 10 sets at 10 Hz; the node answers every other one, 250 ms after the image stamp, delivered 1 ms later.
    inputs = [T0 + i * 100 * MS for i in range(10)]
    outputs = [(s, s + 250 * MS, s + 251 * MS) for s in inputs[::2]]
    outputs.append((T0 - 100 * MS, T0 + 5 * MS, T0 + 6 * MS))  # answer to a set of an earlier rate: not counted
    summary = summarize_rate(inputs + inputs[:3], outputs, 10.0)  # repeated stamps are one set
    assert summary["rate"] == "10 Hz" and summary["target_hz"] == 10.0
    assert summary["input_sets"] == 10 and summary["input_rate_hz"] == pytest.approx(10.0)
    assert summary["outputs"] == 5 and summary["output_rate_hz"] == pytest.approx(5.0)
    assert summary["dropped_sets"] == 5 and summary["drop_fraction"] == 0.5
    assert summary["end_to_end_ms"] == {"median": 250.0, "p95": 250.0, "max": 250.0, "n": 5}
    assert summary["delivered_ms"]["median"] == 251.0


def test_nothing_answered():
    summary = summarize_rate([T0, T0 + 33 * MS], [], None)
    assert summary["rate"] == "max" and summary["outputs"] == 0 and summary["dropped_sets"] == 2
    assert summary["end_to_end_ms"] is None and summary["output_rate_hz"] is None
    empty = summarize_rate([], [], None)
    assert empty["input_sets"] == 0 and empty["drop_fraction"] is None


def test_loop_rate_factor_paces_a_looped_bag():
    # 10 frames recorded at 10 Hz span 0.9 s; looping back to back, 10 sets per pass.
    factor = loop_rate_factor(10.0, 10.0, 10)
    assert factor == pytest.approx(0.9)
    pass_s = (10 - 1) / 10.0 / factor
    assert 10 / pass_s == pytest.approx(10.0)
    assert loop_rate_factor(30.0, 10.0, 10) == pytest.approx(2.7)
    assert loop_rate_factor(None, 10.0, 10) == 0.0
    with pytest.raises(InvalidInputError, match=">= 2 frames"):
        loop_rate_factor(10.0, 10.0, 1)


def test_parse_rates():
    assert parse_rates("10,30,max") == [10.0, 30.0, None]
    assert parse_rates(" 2.5 ") == [2.5]
    for bad in ("", "0", "-5", "fast", "10,,max"):
        with pytest.raises(InvalidInputError, match="rates"):
            parse_rates(bad)


def test_throughput_config_validation():
    with pytest.raises(InvalidInputError, match="duration_s"):
        ThroughputConfig(duration_s=0.0)
    with pytest.raises(InvalidInputError, match=">= 2 frames"):
        ThroughputConfig(bench=BenchConfig(scenario=ScenarioConfig(frames=1)))
    with pytest.raises(InvalidInputError, match="at least one rate"):
        ThroughputConfig(rates_hz=())
