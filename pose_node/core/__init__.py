"""ROS-free core: the data model (cameras, views, objects, detections, poses), geometry, the shared solver, units and errors."""
from pose_node.core.errors import InvalidInputError, MeshLoadError, PoseNodeError, StageUnavailableError
from pose_node.core.geometry import COVARIANCE_ORDER, Pose
from pose_node.core.onnx_session import OnnxSessionError
from pose_node.core.types import Camera, Detection, MultiViewFrame, ObjectModel, PoseEstimate, View

__all__ = [
    "COVARIANCE_ORDER", "Camera", "Detection", "InvalidInputError", "MeshLoadError", "MultiViewFrame",
    "ObjectModel", "OnnxSessionError", "Pose", "PoseEstimate", "PoseNodeError", "StageUnavailableError", "View",
]
