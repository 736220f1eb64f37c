"""The backbone interface: configuration, registry errors and the feature-sampling convention."""
import math

import pytest
import torch

from pose_node.core import InvalidInputError
from pose_node.features import (
    BackboneConfig,
    BackboneFeatures,
    BackboneWeightsError,
    available_backbones,
    create_backbone,
    register_backbone,
    stride_key,
)


def test_registry_lists_every_backbone():
    assert set(available_backbones()) >= {"efficientnet_lite0", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "onnx"}
    with pytest.raises(InvalidInputError, match="already registered"):
        register_backbone("onnx", lambda config: None)


def test_unknown_name_and_bad_options_name_the_config_field():
    with pytest.raises(InvalidInputError, match=r"BackboneConfig.name.*resnet"):
        create_backbone(BackboneConfig(name="resnet"))
    with pytest.raises(InvalidInputError, match="BackboneConfig.dtype"):
        BackboneConfig(dtype="float64")
    with pytest.raises(InvalidInputError, match="input_mean / input_std"):
        BackboneConfig(input_mean=(0.5, 0.5, 0.5))
    with pytest.raises(InvalidInputError, match="std"):
        BackboneConfig(input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.0, 0.5))
    with pytest.raises(InvalidInputError, match="vit_feature_layer"):
        create_backbone(BackboneConfig(vit_feature_layer=3))
    with pytest.raises(InvalidInputError, match="BackboneConfig.device"):
        create_backbone(BackboneConfig(device="not-a-device"))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "dinov2_vits14", "dinov2_vitl14", "onnx"])
def test_missing_weights_file_names_the_key_and_path(tmp_path, name):
    missing = tmp_path / "nope.bin"
    extra = {"input_mean": (0.5,) * 3, "input_std": (0.5,) * 3} if name == "onnx" else {}
    with pytest.raises(BackboneWeightsError, match=rf"BackboneConfig.weights_path.*{name}.*not found: .*nope.bin"):
        create_backbone(BackboneConfig(name=name, weights_path=str(missing), **extra))


def test_weights_path_is_required_without_a_packaged_default():
    with pytest.raises(BackboneWeightsError, match=r"BackboneConfig.weights_path: required.*dinov2_vitb14"):
        create_backbone(BackboneConfig(name="dinov2_vitb14"))


def test_sample_hits_cell_centres_and_flags_points_outside_the_image():
    stride, Hs, Ws = 4, 3, 5
    fmap = torch.arange(Hs * Ws, dtype=torch.float64).reshape(1, 1, Hs, Ws).repeat(2, 1, 1, 1)
    fmap[1] *= -1
    feats = BackboneFeatures(torch.zeros(2, 1), {stride_key(stride): fmap}, image_hw=(12, 18))
    # Cell (i, j) is centred at pixel (4 j + 1.5, 4 i + 1.5).
    uv = torch.tensor([[[1.5, 1.5], [4 * 3 + 1.5, 4 * 2 + 1.5], [3.5, 1.5], [17.5, 0.0], [18.0, 0.0]]] * 2,
                      dtype=torch.float64, requires_grad=True)
    values, valid = feats.sample(stride, uv)
    assert values.shape == (2, 5, 1) and valid.shape == (2, 5)
    torch.testing.assert_close(values[0, :3, 0], torch.tensor([0.0, 13.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(values[1, :2, 0], torch.tensor([0.0, -13.0], dtype=torch.float64))
    assert valid[0].tolist() == [True, True, True, True, False]
    values[0, 2, 0].backward()  # differentiable in the pixel position (refinement needs it)
    assert math.isclose(uv.grad[0, 2, 0].item(), 0.25)


def test_sample_rejects_unknown_stride_and_bad_shape():
    feats = BackboneFeatures(torch.zeros(1, 1), {"stride8": torch.zeros(1, 2, 4, 4)}, image_hw=(32, 32))
    with pytest.raises(InvalidInputError, match="stride4"):
        feats.sample(4, torch.zeros(1, 3, 2))
    with pytest.raises(InvalidInputError, match=r"uv_img.*\(1, N, 2\).*\(3, 2\)"):
        feats.sample(8, torch.zeros(3, 2))
