"""Evaluation (tooling): BOP pose errors and recalls, covariance calibration, and the ``pose_eval`` runner with the
stage adapters it builds from the pipeline (:mod:`pose_node.evaluation.stages`)."""
from pose_node.evaluation.calibration import COVERAGE_LEVELS, covariance_coverage
from pose_node.evaluation.results import EvalResults
from pose_node.evaluation.runner import EvalConfig, Estimator, evaluate, run
from pose_node.evaluation.scoring import BopScorer, ScoringConfig

__all__ = ["COVERAGE_LEVELS", "BopScorer", "EvalConfig", "EvalResults", "Estimator", "ScoringConfig", "covariance_coverage",
           "evaluate", "run"]
