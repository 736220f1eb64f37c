"""Training of the RGB proposal head (:mod:`pose_node.training.rgb_proposals`): its targets, its
match counting and a few training steps on known maps. The head itself, the shipped weights and the
instance extraction are tested in test/detection/test_proposals_rgb.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pose_node.detection.proposals_rgb import RgbProposalHeadConfig, RgbProposalModel
from pose_node.training.rgb_proposals import FeatureSet, TrainConfig, count_matches, head_loss, stride_targets, train_head


def test_stride_targets_of_a_square():
    mask = np.zeros((32, 48), bool)
    mask[8:24, 8:24] = True
    fg, dist = stride_targets([mask], 32, 48, 4)
    assert fg.shape == dist.shape == (8, 12)
    assert fg.sum() == pytest.approx(mask.sum() / 16)
    np.testing.assert_array_equal(fg[2:6, 2:6], 1.0)
    assert fg[:2].sum() == 0 and fg[:, 6:].sum() == 0
    assert dist.max() == pytest.approx(dist[3:5, 3:5].max()) and 0.7 < dist.max() <= 1.0
    assert dist[2, 2] < dist[3, 3]


def test_count_matches_recall_precision():
    a, b, c = (np.zeros((10, 10), bool) for _ in range(3))
    a[:5, :5], b[5:, 5:], c[:5, 5:] = True, True, True
    half_a = a.copy()
    half_a[:, 3:] = False  # IoU 0.6 with a
    part_b = b.copy()
    part_b[:, 7:] = False  # IoU 0.4 with b
    counts = count_matches([half_a, part_b], [a, b, c], [1.0, 0.5, 0.1])
    assert (counts.gt, counts.recalled, counts.proposals, counts.correct) == (2, 1, 2, 1)


def test_training_reduces_the_loss_on_a_tiny_set():
    rng = np.random.default_rng(0)
    n, h, w = 6, 16, 16
    masks = [[np.pad(np.ones((s, s), bool), ((2, 64 - 2 - s), (3, 64 - 3 - s)))] for s in rng.integers(20, 40, n)]
    targets = [stride_targets(m, 64, 64, 4) for m in masks]
    fg = np.stack([t[0] for t in targets])
    maps = {"stride4": np.repeat(fg[:, None], 24, 1) + rng.normal(0, 0.1, (n, 24, h, w)),
            "stride8": rng.normal(0, 1, (n, 40, 8, 8)), "stride16": rng.normal(0, 1, (n, 112, 4, 4)),
            "stride32": rng.normal(0, 1, (n, 320, 2, 2))}
    data = FeatureSet({k: v.astype(np.float16) for k, v in maps.items()}, fg, np.stack([t[1] for t in targets]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest, more only contend
    try:
        model, log = train_head(data, RgbProposalHeadConfig(hidden_channels=8, fine_channels=8),
                                TrainConfig(steps=100, batch_size=3, warmup_steps=5))
    finally:
        torch.set_num_threads(threads)
    assert not model.training
    assert log[-1]["step"] == 100
    with torch.no_grad():
        before = head_loss(RgbProposalModel(RgbProposalHeadConfig(hidden_channels=8, fine_channels=8)).eval()(
            {k: torch.from_numpy(v).float() for k, v in maps.items()}), torch.from_numpy(fg),
            torch.from_numpy(data.distance), 2.0)["fg_bce"]
        after = head_loss(model({k: torch.from_numpy(v).float() for k, v in maps.items()}), torch.from_numpy(fg),
                          torch.from_numpy(data.distance), 2.0)["fg_bce"]
    assert after < 0.5 * before
