"""ROS-free core types and geometry."""
from pose_node.core.errors import InvalidInputError, MeshLoadError, PoseNodeError, StageUnavailableError
from pose_node.core.geometry import COVARIANCE_ORDER, Pose
from pose_node.core.types import Camera, Detection, MultiViewFrame, ObjectModel, PoseEstimate, View

__all__ = [
    "COVARIANCE_ORDER", "Camera", "Detection", "InvalidInputError", "MeshLoadError", "MultiViewFrame",
    "ObjectModel", "Pose", "PoseEstimate", "PoseNodeError", "StageUnavailableError", "View",
]
