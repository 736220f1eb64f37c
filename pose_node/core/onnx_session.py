"""The one ONNX Runtime session opener: providers, threads, no spinning, one error type.

``onnxruntime`` is imported lazily, so importing this module costs nothing where it is not installed.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pose_node.core.errors import PoseNodeError

logger = logging.getLogger(__name__)


class OnnxSessionError(PoseNodeError):
    """ONNX Runtime cannot load a model file (missing, unreadable, corrupt or unsupported).

    Loaders raise a subclass that also derives from their own historical error type, so callers
    may catch either.
    """


def open_onnx_session(
    path: str | Path, providers: Sequence[Any], *, intra_op_threads: int | None = None,
    error: type[OnnxSessionError] = OnnxSessionError, message: str | None = None,
) -> Any:
    """Open an ``onnxruntime.InferenceSession`` with the project's session options.

    Options: sequential execution, one inter-op thread, all graph optimizations, and idle intra-op
    worker threads that sleep instead of spinning (spinning steals cycles from torch on a shared CPU).

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in order of preference (names or ``(name, options)`` pairs),
            passed to ONNX Runtime unchanged.
        intra_op_threads: CPU threads per call; None: ONNX Runtime's default (one per core).
        error: the :class:`OnnxSessionError` subclass to raise.
        message: the error message before ``": <onnxruntime's reason>"``; default names the file.
    Returns:
        The ``onnxruntime.InferenceSession``.
    Raises:
        ImportError: onnxruntime is not installed.
        OnnxSessionError (``error``): ONNX Runtime cannot load the file.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as err:  # onnxruntime raises its own exception types for unloadable models
        raise error(f"{message or f'ONNX Runtime cannot load {path}'}: {err}") from err
    logger.debug("opened ONNX session %s with providers %s", path, session.get_providers())
    return session
