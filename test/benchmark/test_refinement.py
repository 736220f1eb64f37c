"""pose_refinement_bench's pure parts: the covariance fit and the score AUROC."""
from __future__ import annotations

import numpy as np
import pytest

from pose_node.benchmark.refinement import auroc, fit_covariance


def test_fit_finds_the_score_dependence_of_the_errors():
    """Two validation sets whose errors grow as score^-2: the fit finds k = 2 and covers both."""
    rng = np.random.default_rng(0)
    scores = [np.full(300, 0.9), np.full(300, 0.4)]
    d2 = [rng.chisquare(6, 300) * 50.0 / s**2 for s in scores]
    scale, exponent, coverages = fit_covariance(d2, scores)
    assert exponent == 2.0
    assert abs(scale - 50.0) / 50.0 < 0.15
    assert all(0.92 <= c <= 0.98 for c in coverages)
    # Without a score dependence k = 0 is as good as any: the first (0) stays.
    flat = [rng.chisquare(6, 300) * 7.0, rng.chisquare(6, 300) * 7.0]
    assert fit_covariance(flat, scores)[1] == 0.0


def test_auroc():
    assert auroc([0.9, 0.8, 0.2], [True, True, False]) == 1.0
    assert auroc([0.1, 0.8], [True, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5], [True]) is None


def test_ablation_rows_switch_off_what_they_name():
    import pytest

    from pose_node.benchmark.refinement import ABLATIONS, variant_config
    from pose_node.refinement.fusion import FusionConfig

    base = FusionConfig()
    assert variant_config(base, "refinement") == base
    assert variant_config(base, "association").method == "association"
    r = [variant_config(base, name).refinement for name in ABLATIONS]
    assert not r[0].registration.enabled and r[0].verification.enabled and r[0].flip_hypotheses
    assert r[1].registration.enabled and not r[1].verification.enabled
    assert not r[2].registration.enabled and not r[2].verification.enabled and not r[2].flip_hypotheses
    assert base.refinement.min_supporting_views == 2 and r[3].min_supporting_views == 1 and r[3].verification.enabled
    assert all(variant_config(base, name).method == "refinement" for name in ABLATIONS)
    with pytest.raises(ValueError, match="calibration"):
        variant_config(base, "refinement -calibration")


def test_coverage_report_bins_and_the_published_poses():
    from scipy.stats import chi2

    from pose_node.benchmark.refinement import coverage_report

    inside, outside = 0.5 * chi2.ppf(0.6827, 6), 2.0 * chi2.ppf(0.9973, 6)
    raw = {"covariance_d2": [inside, outside, inside, outside],
           "matched_estimates": {"score": [0.9, 0.2, 0.8, 0.6], "mssd_m": [0.001, 0.05, 0.002, 0.03],
                                 "diameter_m": [0.1] * 4, "views_visible": [4, 1, 2, 4],
                                 "visib_fract": [0.9, 0.3, 0.6, 0.95], "nll": [1.0, 2.0, 3.0, float("inf")],
                                 "unmatched_scores": [0.7]}}
    report = coverage_report(raw, threshold=0.5)
    assert report["all"]["n"] == 4 and report["all"]["95"] == 0.5
    # Published: scores 0.9, 0.8, 0.6 matched (two right, one 0.3 d off) and 0.7 unmatched (wrong).
    assert report["published"]["n"] == 3 and report["published"]["precision"] == 0.5
    assert report["published"]["95"] == 2 / 3
    assert report["views"]["1 view"] == {"n": 1, "68": 0.0, "95": 0.0, "99.7": 0.0}
    assert report["views"]["3+ views"]["n"] == 2 and report["visibility"]["visib >= 0.8"]["n"] == 2
    assert report["nll_median"] == 2.0


class _Stop(Exception):
    pass


def test_weights_option_reaches_the_correspondence_stage(monkeypatch, tmp_path):
    """``--weights`` picks the network the single-view stage runs (a candidate beside the shipped one)."""
    import pose_node.datasets.bop as bop
    import pose_node.evaluation.stages.correspondence as stage_module
    from pose_node.benchmark import refinement

    seen = {}

    def factory(stages, config, models):
        seen["weights_path"] = config.correspondence.weights_path
        raise _Stop

    monkeypatch.setattr(stage_module, "correspondence_factory", factory)
    class NoDataset:
        def __init__(self, path):
            pass

        def models(self, subdir):
            return []

    monkeypatch.setattr(bop, "BopDataset", NoDataset)
    candidate = tmp_path / "candidate.pt"
    candidate.write_bytes(b"")
    for weights, expected in ((candidate, str(candidate)), (None, None)):
        with pytest.raises(_Stop):
            refinement.evaluate_dataset(tmp_path, "x", "rgbd", refinement.FusionConfig(), None, [], [], weights)
        assert seen["weights_path"] == expected
    with pytest.raises(SystemExit):
        refinement.main(["--weights", str(tmp_path / "missing.pt"), "--datasets"])
    with pytest.raises(SystemExit):
        refinement.main(["--weights", str(candidate), "--record", "--datasets"])
