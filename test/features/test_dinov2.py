"""DINOv2 backbones: the ViT matches the official state-dict layout; shapes with random weights."""
import pytest
import torch

from pose_node.core import InvalidInputError
from pose_node.features import BackboneConfig, BackboneWeightsError, create_backbone
from pose_node.features.dinov2 import DINOV2_ARCHITECTURES, DinoVisionTransformer

POS_GRID = 6  # a small position grid keeps the file small and exercises interpolation


@pytest.fixture(scope="module")
def vits14_file(tmp_path_factory):
    torch.manual_seed(0)
    vit = DinoVisionTransformer(DINOV2_ARCHITECTURES["dinov2_vits14"], pos_grid=POS_GRID)
    with torch.no_grad():  # non-trivial LayerScale and norms, as in trained weights
        for name, p in vit.named_parameters():
            if name.endswith(("gamma", "norm.weight")):
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_random.pth"
    torch.save(vit.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vits14(vits14_file):
    return create_backbone(BackboneConfig(name="dinov2_vits14", weights_path=str(vits14_file)))


@pytest.mark.parametrize(
    "name, params_m", [("dinov2_vits14", 22.056576), ("dinov2_vitb14", 86.58048), ("dinov2_vitl14", 304.36864)]
)
def test_architectures_match_the_official_parameter_counts(name, params_m):
    """22,056,576 is the official dinov2_vits14 count (518 px, 37 x 37 grid); B and L agree to 0.1 M."""
    with torch.device("meta"):
        vit = DinoVisionTransformer(DINOV2_ARCHITECTURES[name], pos_grid=37)
    assert sum(p.numel() for p in vit.parameters()) == pytest.approx(params_m * 1e6, abs=1)
    keys = set(vit.state_dict())
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "norm.bias"} <= keys
    assert {"blocks.0.attn.qkv.weight", "blocks.0.ls1.gamma", "blocks.0.mlp.fc2.bias", "blocks.0.ls2.gamma"} <= keys


@pytest.mark.parametrize("hw, grid", [((126, 126), (9, 9)), ((128, 100), (10, 8))])
def test_shapes_unit_norm_and_device(vits14, hw, grid):
    feats = vits14(torch.rand(2, 3, *hw))
    assert vits14.descriptor_dim == 384 and vits14.channels_per_stride == {14: 384}
    assert feats.global_descriptor.shape == (2, 384)
    torch.testing.assert_close(feats.global_descriptor.norm(dim=-1), torch.ones(2))
    assert set(feats.feature_maps) == {"stride14"}
    assert feats.feature_maps["stride14"].shape == (2, 384, *grid)
    assert feats.feature_maps["stride14"].device.type == "cpu"
    assert vits14.input_normalization.mean == (0.485, 0.456, 0.406)


def test_inputs_are_padded_with_the_mean_colour_to_whole_patches(vits14):
    """A 130 x 130 image gives the features of the same image padded to 140 x 140 with the mean colour."""
    image = torch.rand(1, 3, 130, 130)
    mean_colour = torch.tensor(vits14.input_normalization.mean).view(1, 3, 1, 1)
    padded = mean_colour.expand(1, 3, 140, 140).clone()
    padded[..., :130, :130] = image
    a, b = vits14(image), vits14(padded)
    assert a.feature_maps["stride14"].shape[-2:] == (10, 10) and a.image_hw == (130, 130)
    torch.testing.assert_close(a.feature_maps["stride14"], b.feature_maps["stride14"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.global_descriptor, b.global_descriptor, atol=1e-5, rtol=1e-4)


def test_pos_embed_is_unchanged_on_the_native_grid_and_resized_otherwise(vits14):
    vit = vits14.vit
    assert vit.interpolated_pos_embed(POS_GRID, POS_GRID) is vit.pos_embed
    resized = vit.interpolated_pos_embed(10, 8)
    assert resized.shape == (1, 1 + 80, 384)
    torch.testing.assert_close(resized[:, 0], vit.pos_embed[:, 0])


def test_feature_layer_selects_an_intermediate_block(vits14_file, vits14):
    mid = create_backbone(BackboneConfig(name="dinov2_vits14", weights_path=str(vits14_file), vit_feature_layer=6))
    image = torch.rand(1, 3, 70, 70)
    last, six = vits14(image), mid(image)
    torch.testing.assert_close(six.global_descriptor, last.global_descriptor)
    assert not torch.allclose(six.feature_maps["stride14"], last.feature_maps["stride14"])
    assert mid.cache_key != vits14.cache_key
    with pytest.raises(InvalidInputError, match=r"vit_feature_layer.*12 blocks.*13"):
        create_backbone(BackboneConfig(name="dinov2_vits14", weights_path=str(vits14_file), vit_feature_layer=13))


def test_weights_of_another_size_are_rejected(vits14_file):
    with pytest.raises(BackboneWeightsError, match=r"dinov2_vitb14.*pos_embed.*768.*384"):
        create_backbone(BackboneConfig(name="dinov2_vitb14", weights_path=str(vits14_file)))
