"""The correspondence network's contracts (shapes, normalization, masking, grid convention)."""
import pytest
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.correspondence.network import (
    CorrespondenceNet,
    CorrespondenceNetConfig,
    cell_centres_px,
    mean_best_cosine,
    masked_cosine,
    to_grid,
)

CONFIG = CorrespondenceNetConfig()
G = CONFIG.grid_size


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CorrespondenceNet(CONFIG, pretrained_trunk=False).eval()


def head_inputs(B: int, H: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    desc = torch.nn.functional.normalize(torch.randn(B, CONFIG.descriptor_dim, G, G, generator=gen), dim=1)
    feat = torch.randn(B, CONFIG.feature_dim, G, G, generator=gen)
    det = (torch.rand(B, 1, G, G, generator=gen) > 0.3).float()
    t_desc = torch.nn.functional.normalize(torch.randn(B, H, CONFIG.descriptor_dim, G, G, generator=gen), dim=2)
    t_xyz = torch.randn(B, H, 3, G, G, generator=gen)
    t_mask = (torch.rand(B, H, 1, G, G, generator=gen) > 0.5).float()
    return desc, feat, det, t_desc, t_xyz, t_mask


def test_encoder_shapes_and_unit_descriptors(net):
    with torch.no_grad():
        desc, feat = net.encoder(torch.rand(2, 3, CONFIG.crop_size_px, CONFIG.crop_size_px))
    assert desc.shape == (2, CONFIG.descriptor_dim, G, G) and feat.shape == (2, CONFIG.feature_dim, G, G)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2, G, G))


@pytest.mark.parametrize("B,H", [(1, 1), (2, 3)])
def test_head_outputs_normalized_weights(net, B, H):
    with torch.no_grad():
        out = net.head.run(*head_inputs(B, H))
    N = G * G
    assert out.xyz_norm.shape == (B, H, N, 3) and out.weights.shape == (B, H, N, 2)
    assert out.mask_logit.shape == (B, N) and out.match_score.shape == (B, H)
    assert bool((out.weights >= 0).all())
    # EPro-PnP normalization: a spatial softmax per channel times one global scale per hypothesis.
    sums = out.weights.sum(dim=2)
    torch.testing.assert_close(sums[..., 0], sums[..., 1])


def test_background_template_cells_are_never_matched(net):
    desc, feat, det, t_desc, t_xyz, t_mask = head_inputs(1, 2, seed=3)
    with torch.no_grad():
        a = net.head.run(desc, feat, det, t_desc, t_xyz, t_mask)
        changed = torch.where(t_mask.bool().expand_as(t_xyz), t_xyz, torch.full_like(t_xyz, 1e3))
        b = net.head.run(desc, feat, det, t_desc, changed, t_mask)
    torch.testing.assert_close(a.xyz_norm, b.xyz_norm)
    # Coordinates are convex combinations of the object cells' coordinates.
    fg = t_xyz[0, 0, :, t_mask[0, 0, 0].bool()]
    assert bool((a.xyz_norm[0, 0] <= fg.max(1).values + 1e-5).all() and (a.xyz_norm[0, 0] >= fg.min(1).values - 1e-5).all())


def test_match_score_prefers_the_identical_template():
    desc, _, det, _, _, _ = head_inputs(1, 1, seed=5)
    other = torch.nn.functional.normalize(torch.randn_like(desc), dim=1)
    templates = torch.stack([other, desc], dim=1)
    scores = mean_best_cosine(masked_cosine(desc, templates, torch.ones(1, 2, 1, G, G)), det)
    assert scores[0, 1] == pytest.approx(1.0, abs=1e-5) and scores[0, 0] < 0.5


def test_gradients_reach_the_trainable_layers(net):
    net.train()
    try:
        images = torch.rand(2, 3, CONFIG.crop_size_px, CONFIG.crop_size_px)
        desc, feat = net.encoder(images)
        out = net.head.run(desc[:1], feat[:1], torch.ones(1, 1, G, G), desc[1:, None], torch.randn(1, 1, 3, G, G), torch.ones(1, 1, 1, G, G))
        (out.xyz_norm.square().mean() + out.weights.mean() + out.mask_logit.mean()).backward()
        for name in ("encoder.neck.0.weight", "head.to_log_weight.weight", "head.mask_net.0.weight", "head.log_inv_temperature"):
            grad = dict(net.named_parameters())[name].grad
            assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0, name
        assert net.encoder.trunk.training is False  # ImageNet batch-norm statistics stay
    finally:
        net.zero_grad(set_to_none=True)
        net.eval()


def test_grid_samples_cell_centres():
    ramp = torch.arange(CONFIG.crop_size_px, dtype=torch.float32).expand(1, 1, CONFIG.crop_size_px, -1)
    centres = cell_centres_px(G)
    torch.testing.assert_close(to_grid(ramp, G).reshape(-1), centres[:, 0])
    assert centres[0].tolist() == [3.5, 3.5] and centres[1].tolist() == [11.5, 3.5]


def test_config_rejects_bad_sizes():
    with pytest.raises(InvalidInputError, match="crop_size_px"):
        CorrespondenceNetConfig(crop_size_px=100)
