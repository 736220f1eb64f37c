"""Typed exceptions of the core. ROS adapters catch these, log a diagnostic and drop the input."""

from collections.abc import Iterable


class PoseNodeError(Exception):
    """Base class of every error raised on purpose by pose_node."""


class InvalidInputError(PoseNodeError, ValueError):
    """An input has the wrong shape, type, unit or value (the message names the field)."""


def check_fields(config: object, checks: Iterable[tuple[str, bool]]) -> None:
    """Raise for the first ``(field name, ok)`` of ``checks`` that is not ok, naming the field.

    The shared validation of the configuration dataclasses' ``__post_init__``.

    Raises:
        InvalidInputError: ``"<ClassName>.<field>: invalid value <value>"``.
    """
    for name, ok in checks:
        if not ok:
            raise InvalidInputError(f"{type(config).__name__}.{name}: invalid value {getattr(config, name)!r}")


class MeshLoadError(PoseNodeError):
    """A mesh file is missing, unreadable, empty, broken or of an implausible size."""


class StageUnavailableError(PoseNodeError):
    """A pipeline stage is not available (not implemented yet, or its backend is missing)."""
