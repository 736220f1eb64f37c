"""Launch the pose_node lifecycle node (configured and activated by lifecycle events) and, optionally, RViz.

    ros2 launch pose_node pose_estimation.launch.py config_file:=/path/to/pose_node.yaml \
        use_sim_time:=true rviz:=true namespace:=cell1

Arguments:
    config_file   the pose_node YAML (default: the package's config/pose_node.yaml)
    use_sim_time  take time from /clock (bag replay with pose_replay)
    rviz          also start rviz2 with config/pose_node.rviz
    namespace     namespace of the node (its ~/detections, ~/markers, ~/reset move with it)

The node is brought to *active* by lifecycle events: configure when the process starts,
activate once it reaches *inactive*. With a lifecycle manager of your own, drop those events.
"""
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

PACKAGE = "pose_node"


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory(PACKAGE))
    config_file = LaunchConfiguration("config_file")
    use_sim_time = LaunchConfiguration("use_sim_time")
    namespace = LaunchConfiguration("namespace")

    pose_node = LifecycleNode(
        package=PACKAGE, executable="pose_node", name="pose_node", namespace=namespace, output="screen",
        parameters=[{
            "config_file": config_file,
            "use_sim_time": ParameterValue(use_sim_time, value_type=bool),
        }],
    )
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(pose_node),
                                            transition_id=Transition.TRANSITION_CONFIGURE))
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=pose_node, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(pose_node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))],
    ))
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", output="screen",
        arguments=["-d", str(share / "config" / "pose_node.rviz")],
        parameters=[{"use_sim_time": ParameterValue(use_sim_time, value_type=bool)}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value=str(share / "config" / "pose_node.yaml"),
                              description="pose_node YAML configuration"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with config/pose_node.rviz"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        activate_when_inactive,
        pose_node,
        configure,
    ])
