"""A headless OpenGL context through EGL (no display server), with errors that say what is missing."""
from __future__ import annotations

from ctypes.util import find_library

from pose_node.core.errors import StageUnavailableError


def create_egl_context(device_index: int | None):
    """A standalone EGL OpenGL >= 3.3 core context, or a StageUnavailableError naming what is missing."""
    libs = {"libEGL": find_library("EGL"), "libGL": find_library("GL")}
    missing = [name for name, path in libs.items() if path is None]
    if missing:
        raise StageUnavailableError(
            f"headless rendering needs EGL and OpenGL, but {', '.join(n + '.so.1' for n in missing)} "
            "cannot be found (Debian/Ubuntu: apt-get install libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri; "
            "on NVIDIA machines the driver provides them)"
        )
    try:
        import moderngl
    except ImportError as exc:
        raise StageUnavailableError(f"headless rendering needs moderngl (pip install moderngl): {exc}") from exc
    kwargs = {"libegl": libs["libEGL"], "libgl": libs["libGL"]}
    if device_index is not None:
        kwargs["device_index"] = int(device_index)
    try:
        return moderngl.create_context(standalone=True, backend="egl", require=330, **kwargs)
    except Exception as exc:  # glcontext raises bare Exception subclasses with the EGL error text
        raise StageUnavailableError(
            f"could not create a headless EGL OpenGL 3.3 context ({libs['libEGL']}, {libs['libGL']}): {exc}. "
            "Is an EGL vendor installed (Mesa: libegl-mesa0 and libgl1-mesa-dri, /usr/share/glvnd/egl_vendor.d/50_mesa.json; "
            "or the NVIDIA driver)? Set EGL_LOG_LEVEL=debug for details."
        ) from exc
