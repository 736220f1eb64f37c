"""The ONNX backbone: a tiny torch conv model exported in the test, run through onnxruntime."""
import warnings

import pytest
import torch
from torch import nn

from pose_node.core import InvalidInputError
from pose_node.features import BackboneConfig, BackboneWeightsError, create_backbone

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


class _TinyFeatures(nn.Module):
    """Maps at strides 4 and 8 and a pooled descriptor, named per the ONNX contract."""

    def __init__(self) -> None:
        super().__init__()
        self.s4 = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.s8 = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(16, 32)

    def forward(self, images):
        f4 = torch.relu(self.s4(images))
        f8 = torch.relu(self.s8(f4))
        return self.head(f8.mean(dim=(2, 3))), f4, f8


def _export(model, path, output_names, dynamic=True):
    axes = {"images": {0: "B", 2: "H", 3: "W"}, **{n: {0: "B"} for n in output_names}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter warns that it is deprecated
        torch.onnx.export(model, (torch.rand(1, 3, 64, 64),), str(path), input_names=["images"],
                          output_names=output_names, dynamic_axes=axes, dynamo=False)
    return path


@pytest.fixture(scope="module")
def model_and_file(tmp_path_factory):
    torch.manual_seed(0)
    model = _TinyFeatures().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return model, _export(model, path, ["descriptor", "features_stride4", "features_stride8"])


def _config(path, **kw):
    return BackboneConfig(name="onnx", weights_path=str(path), input_mean=MEAN, input_std=STD, **kw)


def test_outputs_match_the_torch_model_after_normalization(model_and_file):
    model, path = model_and_file
    backbone = create_backbone(_config(path))
    assert backbone.descriptor_dim == 32 and backbone.channels_per_stride == {4: 8, 8: 16}
    images = torch.rand(3, 3, 128, 96)
    feats = backbone(images)
    with torch.no_grad():
        desc, f4, f8 = model((images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    assert feats.feature_maps["stride4"].shape == (3, 8, 32, 24)
    assert feats.feature_maps["stride8"].shape == (3, 16, 16, 12)
    torch.testing.assert_close(feats.feature_maps["stride4"], f4, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats.feature_maps["stride8"], f8, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats.global_descriptor, torch.nn.functional.normalize(desc, dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats.global_descriptor.norm(dim=-1), torch.ones(3))
    assert feats.global_descriptor.device.type == "cpu" and feats.global_descriptor.dtype == torch.float32
    assert backbone.cache_key.startswith("onnx@")


def test_fixed_batch_of_one_runs_per_image(tmp_path, model_and_file):
    model, _ = model_and_file
    path = _export(model, tmp_path / "fixed.onnx", ["descriptor", "features_stride4", "features_stride8"], dynamic=False)
    backbone = create_backbone(_config(path))
    feats = backbone(torch.rand(2, 3, 64, 64))
    assert feats.global_descriptor.shape == (2, 32) and feats.feature_maps["stride8"].shape == (2, 16, 8, 8)
    with pytest.raises(InvalidInputError, match=r"takes H x W = 64 x 64, got 32 x 64"):
        backbone(torch.rand(1, 3, 32, 64))


def test_contract_violations_and_missing_normalization_are_named(tmp_path, model_and_file):
    model, path = model_and_file
    with pytest.raises(InvalidInputError, match=r"BackboneConfig.input_mean / input_std: required.*onnx"):
        create_backbone(BackboneConfig(name="onnx", weights_path=str(path)))
    with pytest.raises(InvalidInputError, match="BackboneConfig.dtype"):
        create_backbone(_config(path, dtype="float16"))
    with pytest.raises(InvalidInputError, match="BackboneConfig.onnx_providers"):
        create_backbone(_config(path, onnx_providers=("NoSuchExecutionProvider",)))
    bad = _export(model, tmp_path / "bad.onnx", ["embedding", "features_stride4", "features_stride8"])
    with pytest.raises(BackboneWeightsError, match=r"ONNX feature contract.*'descriptor'"):
        create_backbone(_config(bad))
    no_maps = _export(model, tmp_path / "no_maps.onnx", ["descriptor", "f4", "f8"])
    with pytest.raises(BackboneWeightsError, match="no output named features_stride"):
        create_backbone(_config(no_maps))
    wrong_stride = _export(model, tmp_path / "wrong.onnx", ["descriptor", "features_stride2", "features_stride8"])
    with pytest.raises(BackboneWeightsError, match=r"features_stride2 should be"):
        create_backbone(_config(wrong_stride))(torch.rand(1, 3, 64, 64))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    with pytest.raises(BackboneWeightsError, match="cannot load ONNX model"):
        create_backbone(_config(garbage))
