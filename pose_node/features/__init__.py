"""Image feature backbones shared by detection, correspondence and refinement (computed once per view)."""
from pose_node.features.backbones import (
    Backbone,
    BackboneConfig,
    BackboneFeatures,
    BackboneWeightsError,
    InputNormalization,
    stride_key,
)
from pose_node.features.registry import available_backbones, create_backbone, register_backbone

__all__ = [
    "Backbone", "BackboneConfig", "BackboneFeatures", "BackboneWeightsError", "InputNormalization",
    "available_backbones", "create_backbone", "register_backbone", "stride_key",
]
