"""Evaluation: BOP pose errors and recalls, covariance calibration, the ``pose_eval`` runner."""
from pose_node.evaluation.calibration import COVERAGE_LEVELS, covariance_coverage
from pose_node.evaluation.runner import EvalConfig, Estimator, evaluate, run
from pose_node.evaluation.scoring import BopScorer, ScoringConfig

__all__ = ["COVERAGE_LEVELS", "BopScorer", "EvalConfig", "Estimator", "ScoringConfig", "covariance_coverage",
           "evaluate", "run"]
