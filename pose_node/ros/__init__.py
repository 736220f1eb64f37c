"""ROS 2 adapters of pose_node: nodes, bag replay (``replay``), local-only ROS environment
(``local_env``).

Importing this package imports neither rclpy nor any of its modules; each module imports
rclpy itself, so the core stays usable without ROS.
"""
