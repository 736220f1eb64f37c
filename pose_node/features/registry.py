"""Backbones by name: ``create_backbone(BackboneConfig(name=...))``.

Registered: ``efficientnet_lite0`` (default; packaged ImageNet weights), ``dinov2_vits14``,
``dinov2_vitb14``, ``dinov2_vitl14`` (local official weights) and ``onnx`` (any model following the
contract of :mod:`pose_node.features.onnx_backbone`). Every backbone loads from local files only.
"""
from __future__ import annotations

from collections.abc import Callable

from pose_node.core.errors import InvalidInputError
from pose_node.features.backbones import Backbone, BackboneConfig
from pose_node.features.dinov2 import DINOV2_ARCHITECTURES, DinoV2Backbone
from pose_node.features.efficientnet_lite import EfficientNetLiteBackbone
from pose_node.features.onnx_backbone import OnnxBackbone

BackboneFactory = Callable[[BackboneConfig], Backbone]

_FACTORIES: dict[str, BackboneFactory] = {
    "efficientnet_lite0": EfficientNetLiteBackbone,
    **{name: DinoV2Backbone for name in DINOV2_ARCHITECTURES},
    "onnx": OnnxBackbone,
}


def register_backbone(name: str, factory: BackboneFactory) -> None:
    """Make ``factory(config)`` available as ``BackboneConfig(name=name)``.

    Raises:
        InvalidInputError: the name is taken.
    """
    if name in _FACTORIES:
        raise InvalidInputError(f"register_backbone: name {name!r} is already registered")
    _FACTORIES[name] = factory


def available_backbones() -> tuple[str, ...]:
    """Registered backbone names, sorted."""
    return tuple(sorted(_FACTORIES))


def create_backbone(config: BackboneConfig | None = None) -> Backbone:
    """Build the configured backbone on ``config.device`` in eval mode, with frozen weights.

    Args:
        config: None selects the default (EfficientNet-Lite0 on the CPU).
    Raises:
        InvalidInputError: unknown ``BackboneConfig.name`` or an invalid option (named).
        BackboneWeightsError: the weights file is missing, unreadable or does not match.
    """
    config = config or BackboneConfig()
    factory = _FACTORIES.get(config.name)
    if factory is None:
        raise InvalidInputError(f"BackboneConfig.name: unknown backbone {config.name!r}; available: {available_backbones()}")
    if config.vit_feature_layer is not None and factory is not DinoV2Backbone:
        raise InvalidInputError(f"BackboneConfig.vit_feature_layer: only for DINOv2 backbones, not {config.name!r}")
    return factory(config)
