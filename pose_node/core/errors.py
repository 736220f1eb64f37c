"""Typed exceptions of the core. ROS adapters catch these, log a diagnostic and drop the input."""


class PoseNodeError(Exception):
    """Base class of every error raised on purpose by pose_node."""


class InvalidInputError(PoseNodeError, ValueError):
    """An input has the wrong shape, type, unit or value (the message names the field)."""


class MeshLoadError(PoseNodeError):
    """A mesh file is missing, unreadable, empty, broken or of an implausible size."""


class StageUnavailableError(PoseNodeError):
    """A pipeline stage is not available (not implemented yet, or its backend is missing)."""
