"""tf2_msgs and vision_msgs (built from ros_interfaces/ or from a sourced ROS 2) talk to real nodes.

DDS endpoints only match when the RIHS01 type hashes agree, so the hashes announced in the graph
must equal upstream's. TFMessage's is the one rosbags' Jazzy/Kilted typestores compute; the
vision_msgs ones are those of upstream vision_msgs 4.1.x's generated type descriptions.
"""
import pytest

UPSTREAM_RIHS01 = {
    "tf2_msgs/msg/TFMessage":
        "e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087",
    "tf2_msgs/msg/TF2Error":
        "db2485e7d6a0ec75bf087e058ee45df682acc3a621ca7780503d10aac141809a",
    "vision_msgs/msg/BoundingBox2D":
        "008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "vision_msgs/msg/BoundingBox2DArray":
        "2464e82838009386d371b523211c21c91d74d313fcdd6788223c531d621cf691",
    "vision_msgs/msg/BoundingBox3D":
        "bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "vision_msgs/msg/Classification":
        "f74db28d0eaef3afb78f48bf2161cd709a1383a0309d3454383b25be11345143",
    "vision_msgs/msg/Detection2D":
        "0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "vision_msgs/msg/Detection2DArray":
        "214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "vision_msgs/msg/Detection3D":
        "ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "vision_msgs/msg/Detection3DArray":
        "793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "vision_msgs/msg/LabelInfo":
        "3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "vision_msgs/msg/ObjectHypothesis":
        "51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "vision_msgs/msg/ObjectHypothesisWithPose":
        "41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "vision_msgs/msg/Point2D":
        "eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "vision_msgs/msg/Pose2D":
        "b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "vision_msgs/msg/VisionClass":
        "1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
    "vision_msgs/msg/VisionInfo":
        "95d3116a17484ad91c9a2686e1d54890bbfc3ff6c6a2de137738c4950d45d284",
}


def test_tfmessage_hash_equals_rosbags_kilted_typestore():
    from rosbags.typesys import Stores, get_typestore

    expected = "RIHS01_" + UPSTREAM_RIHS01["tf2_msgs/msg/TFMessage"]
    assert get_typestore(Stores.ROS2_KILTED).hash_rihs01("tf2_msgs/msg/TFMessage") == expected


@pytest.mark.parametrize("type_name", sorted(UPSTREAM_RIHS01))
def test_announced_type_hash_matches_upstream(ros, type_name):
    import importlib

    package, kind, name = type_name.split("/")
    msg_type = getattr(importlib.import_module(f"{package}.{kind}"), name)
    topic = "/hash_check_" + name.lower()
    ros.node.create_publisher(msg_type, topic, 1)
    (info,) = ros.node.get_publishers_info_by_topic(topic)
    assert info.topic_type == type_name
    assert str(info.topic_type_hash) == "RIHS01_" + UPSTREAM_RIHS01[type_name]
