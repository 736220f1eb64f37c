"""pose_node: multi-camera 6D object pose estimation with calibrated covariance.

The core (``pose_node.core`` and the stage packages) never imports rclpy; ROS adapters live in
``pose_node.ros``.
"""
__version__ = "0.1.0"
