"""The results of one ``pose_eval`` run, typed (:class:`EvalResults`), and their JSON form.

:func:`pose_node.evaluation.runner.evaluate` builds an :class:`EvalResults` and returns its JSON
form (:meth:`EvalResults.to_json`), the mapping ``pose_eval --out`` writes; the keys and their
order are those of the results files written before this type existed, so existing readers keep
working. Readers that want attributes and types use :meth:`EvalResults.from_json`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pose_node.core.errors import InvalidInputError

#: Attribute -> JSON key, where the key is not a Python name.
_JSON_KEYS = {"add_s_recall": "ADD_S_recall_0.1d", "add_or_s_recall": "ADD(-S)_recall_0.1d"}
#: Set by :func:`pose_node.evaluation.runner.run` only (absent from :func:`evaluate`'s results when None).
_RUN_ONLY = ("stage_errors", "targets_source")


@dataclass
class EvalResults:
    """Scores, counts and provenance of one evaluation (units in the names: ``_ms``, ``_m``, ``_deg``).

    Attributes:
        AR, AR_VSD, AR_MSSD, AR_MSPD: BOP average recalls in [0, 1] (VSD and AR None when VSD is
            unavailable, see ``vsd_unavailable_reason``).
        recall_vsd, recall_mssd, recall_mspd: recall per error threshold (VSD: per tau, then threshold).
        add_s_recall, add_or_s_recall: ADD-S and ADD(-S) recall at 0.1 diameter (JSON
            ``ADD_S_recall_0.1d``, ``ADD(-S)_recall_0.1d``).
        n_targets, n_frames, n_images_scored, n_gt, n_estimates, n_estimates_scored: counts.
        latency_ms: ``{"total": stats, "per_stage": {stage: stats}}``, stats = median and p95, milliseconds.
        counts_per_set: count key (proposals, ``budget_level``) -> stats per pipeline call.
        covariance_coverage: nominal level -> share of estimates inside it (None without matches);
            covariance_coverage_n: matched estimates; covariance_d2: their squared Mahalanobis distances.
        matched_estimates: per matched estimate: score, MSSD (metres), diameter (metres),
            ``views_visible`` (images where its GT is at least ``multiview_visib_min`` visible),
            ``visib_fract`` (the GT's mean visible fraction over the images; nan where unknown) and ``nll``
            (Gaussian negative log-likelihood of its error, metres and radians); and
            ``unmatched_scores``: the scores of the estimates no GT was left for (wrong by definition).
        pose_errors: rotation (degrees) and translation (metres) error stats of the matched estimates.
        per_object: object id (str) -> its recalls.
        stages: stage -> ``available`` / ``missing`` / ``external``.
        mode: ``rgb`` or ``rgbd``.
        vsd_unavailable_reason: why VSD is null, else None.
        frame_errors: the frames whose pipeline call failed, with the reason.
        multiview_protocol: how multi-view targets were scored (None without multi-view targets).
        config: the evaluation settings.
        estimates_csv: the BOP CSV written, or None.
        detection: detection scores (None without detections; ``{"skipped": reason}`` without GT masks).
        images_without_depth: images without a depth file and how they were handled.
        visibility: where the GT visibility came from.
        stage_errors: stage -> why it could not be built (set by ``run``).
        targets_source: where the targets came from (set by ``run``).
    """

    AR: float | None
    AR_VSD: float | None
    AR_MSSD: float
    AR_MSPD: float
    recall_vsd: list | None
    recall_mssd: list
    recall_mspd: list
    add_s_recall: float | None
    add_or_s_recall: float | None
    n_targets: int
    n_frames: int
    n_images_scored: int
    n_gt: int
    n_estimates: int
    n_estimates_scored: int
    latency_ms: dict
    counts_per_set: dict
    covariance_coverage: dict | None
    covariance_coverage_n: int
    covariance_d2: list
    matched_estimates: dict
    pose_errors: dict
    per_object: dict
    stages: dict
    mode: str
    vsd_unavailable_reason: str | None
    frame_errors: list
    multiview_protocol: str | None
    config: dict
    estimates_csv: str | None
    detection: dict | None
    images_without_depth: dict
    visibility: dict
    stage_errors: dict | None = None
    targets_source: dict | None = None

    def to_json(self) -> dict[str, Any]:
        """The results file's mapping (keys in file order; ``stage_errors`` and ``targets_source``
        only when set)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _RUN_ONLY and value is None:
                continue
            out[_JSON_KEYS.get(f.name, f.name)] = value
        return out

    @classmethod
    def from_json(cls, mapping: dict[str, Any]) -> EvalResults:
        """Read a results mapping (e.g. ``json.load`` of a ``pose_eval --out`` file).

        Raises:
            InvalidInputError: a required key is missing or an unknown key is present.
        """
        names = {_JSON_KEYS.get(f.name, f.name): f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise InvalidInputError(f"evaluation results: unknown keys {unknown}")
        required = [key for key, name in names.items() if name not in _RUN_ONLY and key not in mapping]
        if required:
            raise InvalidInputError(f"evaluation results: missing keys {required}")
        return cls(**{names[key]: value for key, value in mapping.items()})


__all__ = ["EvalResults"]
