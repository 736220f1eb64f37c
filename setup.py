"""ament_python package definition for pose_node (also a plain pip-installable package)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "pose_node"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.json") + glob("models/*.pt") + glob("models/*.onnx")),
        # pose_export's default output: found next to the installed checkpoint by create_backend
        (f"share/{PACKAGE}/models/onnx", glob("models/onnx/*.onnx") + glob("models/onnx/*.json")),
    ],
    package_data={PACKAGE: ["ros/fastdds_shm_only.xml"]},
    install_requires=["setuptools"],
    zip_safe=False,  # local_env reads its Fast DDS profile through __file__
    maintainer="pose_node maintainers",
    maintainer_email="maintainers@pose-node.dev",
    description="Multi-camera 6D object pose estimation with calibrated covariance for ROS 2.",
    license="Apache-2.0",
    tests_require=["pytest"],
    extras_require={"tensorrt": ["tensorrt>=10"]},  # correspondence engines on NVIDIA GPUs (JetPack ships its own)
    entry_points={
        "console_scripts": [
            "pose_scene = pose_node.scene.cli:main",
            "pose_ood_set = pose_node.scene.ood_set:main",
            "pose_eval = pose_node.evaluation.cli:main",
            "pose_render_bench = pose_node.benchmark.render:main",
            "pose_metrics_bench = pose_node.evaluation.bench:main",
            "pose_onboard = pose_node.onboarding.cli:main",
            "pose_train_rgb_proposals = pose_node.training.rgb_proposals:main",
            "pose_detection_bench = pose_node.benchmark.detection:main",
            "pose_demo = pose_node.apps.demo:main",
            "pose_replay = pose_node.ros.replay:main",
            "pose_node = pose_node.ros.node:main",
            "pose_train = pose_node.training.correspondence:main",
            "pose_export = pose_node.correspondence.export:main",
            "pose_correspondence_bench = pose_node.benchmark.correspondence:main",
            "pose_refinement_bench = pose_node.benchmark.refinement:main",
            "pose_bench = pose_node.benchmark.cli:main",
        ],
    },
)
