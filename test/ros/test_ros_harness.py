"""The ROS test harness of test/conftest.py: subprocess nodes, ROS arguments, clean SIGINT exit."""
import textwrap

import pytest

from pose_node.ros.local_env import PROFILE_FILE

# A minimal node that behaves like pose_node's nodes should: exits 0 on Ctrl-C (rclpy 9 raises
# ExternalShutdownException from spin, or an RCLError when the shutdown races the wait set), prints
# its parameters, publishes `greeting` on chatter.
ECHO_NODE = textwrap.dedent("""
    import json, sys
    import rclpy
    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.executors import ExternalShutdownException
    from std_msgs.msg import String

    def main():
        rclpy.init(args=sys.argv)
        node = rclpy.create_node("echo_node")
        greeting = node.declare_parameter("greeting", "hello").value
        gain = node.declare_parameter("gain", 0.0).value
        flags = node.declare_parameter("flags", [False]).value
        print("PARAMS " + json.dumps({"greeting": greeting, "gain": gain, "flags": list(flags)}),
              flush=True)
        publisher = node.create_publisher(String, "chatter", 10)
        node.create_timer(0.05, lambda: publisher.publish(String(data=greeting)))
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except RCLError:  # SIGINT's shutdown raced spin's wait set (ros2/rclpy#398): a normal stop
            if rclpy.ok():
                raise
        finally:
            node.destroy_node()
            rclpy.try_shutdown()

    main()
""")


@pytest.fixture
def echo_node_script(tmp_path):
    path = tmp_path / "echo_node.py"
    path.write_text(ECHO_NODE)
    return path


def test_subprocess_runs_local_only(ros, echo_node_script, local_ros_env):
    import sys

    process = ros.start([sys.executable, str(echo_node_script)])
    ros.wait_for_node("echo_node")
    env = process.environ()
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["ROS_DOMAIN_ID"] == local_ros_env["ROS_DOMAIN_ID"] != "0"
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE_FILE)
    assert PROFILE_FILE.is_file()
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert env["ROS_STATIC_PEERS"] == ""


def test_sigint_stop_gives_exit_code_zero(ros, echo_node_script):
    import sys

    process = ros.start([sys.executable, str(echo_node_script)])
    ros.wait_for_node("echo_node")
    assert process.running()
    assert process.stop() == 0, process.output()
    assert not process.running()


def test_ros_arguments_reach_the_node(ros, echo_node_script, tmp_path):
    import json
    import sys

    from std_msgs.msg import String

    params_file = tmp_path / "params.yaml"
    params_file.write_text("/**:\n  ros__parameters:\n    flags: [true, false, true]\n")
    inbox = ros.collect(String, "/remapped/chatter")
    process = ros.start(
        [sys.executable, str(echo_node_script)],
        node_name="renamed_echo",
        remap={"chatter": "/remapped/chatter"},
        params={"greeting": "1.5", "gain": 2.5},  # "1.5" must stay a string
        params_file=params_file,
    )
    ros.wait_for_node("renamed_echo")
    params = json.loads(process.wait_for_output("PARAMS ").split("PARAMS ", 1)[1].splitlines()[0])
    assert params == {"greeting": "1.5", "gain": 2.5, "flags": [True, False, True]}
    ros.wait_for_match(inbox.subscription)
    ros.spin_until(lambda: len(inbox.messages) >= 2, what="2 messages on /remapped/chatter")
    assert {m.data for m in inbox.messages} == {"1.5"}
    process.assert_clean_exit()


def test_waiting_for_a_match_that_never_comes_fails_with_a_message(ros):
    from std_msgs.msg import String

    inbox = ros.collect(String, "/nobody_publishes_here")
    with pytest.raises(AssertionError, match="matched publisher"):
        ros.wait_for_match(inbox.subscription, timeout_s=0.3)


def test_exit_status_of_a_finished_process_is_reported(ros):
    import sys

    process = ros.start([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert process.wait() == 3
