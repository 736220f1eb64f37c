"""Synthetic multi-camera workcells: layout, object placement, appearance, BOP + rosbag2 output.

Entry points: :func:`generate_workcell` (Python) and the ``pose_scene`` console script.
"""
from pose_node.scene.appearance import AppearanceConfig
from pose_node.scene.generator import WorkcellConfig, generate_workcell, read_scene_world
from pose_node.scene.layout import LayoutConfig, WorkcellLayout, sample_layout
from pose_node.scene.photoreal import PhotorealConfig
from pose_node.scene.placement import PlacementConfig, PlacementError, place_objects

__all__ = [
    "AppearanceConfig", "LayoutConfig", "PhotorealConfig", "PlacementConfig", "PlacementError", "WorkcellConfig", "WorkcellLayout",
    "generate_workcell", "place_objects", "read_scene_world", "sample_layout",
]
