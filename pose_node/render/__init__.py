"""Headless rendering (EGL + OpenGL) of RGB, metric depth, object coordinates and instance masks."""
from pose_node.render.renderer import (
    MAX_OBJECTS_PER_RENDER,
    OUTPUT_NAMES,
    RenderOutput,
    Renderer,
    RenderSettings,
    opengl_projection_from_K,
)

__all__ = ["MAX_OBJECTS_PER_RENDER", "OUTPUT_NAMES", "RenderOutput", "RenderSettings", "Renderer", "opengl_projection_from_K"]
