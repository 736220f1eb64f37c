"""Fixtures of the renderer tests: one GL renderer per (size, settings), shared by the session."""
from __future__ import annotations

import pytest

from pose_node.core.errors import StageUnavailableError
from pose_node.render.renderer import Renderer, RenderSettings


@pytest.fixture(scope="session")
def make_renderer():
    """``make_renderer(width, height, **settings)``: a cached Renderer (skips without EGL)."""
    cache: dict = {}

    def make(width: int, height: int, **settings) -> Renderer:
        key = (width, height, tuple(sorted(settings.items())))
        if key not in cache:
            renderer = Renderer(width, height, RenderSettings(**settings))
            try:
                renderer.gl_renderer  # creates the context
            except StageUnavailableError as exc:
                pytest.skip(f"headless OpenGL unavailable: {exc}")
            cache[key] = renderer
        return cache[key]

    yield make
    for renderer in cache.values():
        renderer.release()
