"""The messages ``pose_node`` publishes for one processed set, built from the pipeline's estimates.

Shared by the node (which publishes them) and ``pose_bench`` (which times building and
serializing them as the "publishing" stage), so the benchmark measures exactly what the node does.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import TransformStamped
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from pose_node.core.types import ObjectModel, PoseEstimate, as_rigid_transform
from pose_node.ros import conversions as conv

MESH_MARKER_MAX_TRIANGLES = 2000  # a marker with many points is slow to build and to send
LABEL_HEIGHT_DIAMETERS = 0.6  # the label floats this many object diameters above the object
# Outline colours of the debug images, by object id (distinct on grey and on table wood).
DEBUG_COLORS_RGB = ((0, 255, 0), (255, 0, 255), (0, 200, 255), (255, 160, 0), (255, 255, 0), (255, 60, 60))


@dataclass(frozen=True)
class SetOutputs:
    """What one processed set produces.

    Attributes:
        detections: ``~/detections`` (one Detection3D per estimate; empty when nothing was found).
        transforms: ``/tf``, ``world_frame -> <object name>_<instance id>`` per estimate.
        markers: ``~/markers``: DELETEALL, then a mesh, a covariance ellipsoid and a label per estimate.
    """

    detections: Detection3DArray
    transforms: list[TransformStamped]
    markers: MarkerArray


class SetOutputBuilder:
    """Builds the node's messages for one set (:class:`SetOutputs`).

    The mesh marker of an object is thousands of ``geometry_msgs/Point`` messages, fixed in the
    object's frame: building them was most of the publishing time (about 20 ms per estimate on
    one core), so each object's is built once, on its first estimate, and later markers are
    shallow copies sharing its points (never modified) with their own header, id and pose.

    Args:
        world_frame: the frame the estimates are in.
        names: object id -> object name (TF child frames and class ids).
        models: object id -> model (bounding boxes, meshes, diameters).
    """

    def __init__(self, world_frame: str, names: Mapping[int, str], models: Mapping[int, ObjectModel]) -> None:
        self.world_frame = world_frame
        self.names = dict(names)
        self.models = dict(models)
        self._mesh_templates: dict[int, Marker] = {}

    def mesh_marker(self, header, T_world_object: np.ndarray, object_id: int, marker_id: int) -> Marker:
        """:func:`~pose_node.ros.conversions.mesh_marker` of the object's model (TRIANGLE_LIST), from the cache."""
        template = self._mesh_templates.get(object_id)
        if template is None:
            template = conv.mesh_marker(header, np.eye(4), model=self.models[object_id], marker_id=0,
                                        max_triangles=MESH_MARKER_MAX_TRIANGLES)
            self._mesh_templates[object_id] = template
        marker = copy.copy(template)
        marker.header = header
        marker.id = int(marker_id)
        marker.pose = conv.pose_to_msg(as_rigid_transform("T_world_object", T_world_object))
        return marker

    def build(self, stamp_ns: int, estimates: Sequence[PoseEstimate]) -> SetOutputs:
        """The messages of one set.

        Args:
            stamp_ns: the set's image stamp, nanoseconds (every output carries it).
            estimates: world-frame estimates with tracked instance ids.
        """
        header = conv.make_header(stamp_ns, self.world_frame)
        detections = Detection3DArray(header=header)
        transforms = []
        markers = MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])
        for k, e in enumerate(estimates):
            object_name = self.names[e.object_id]
            name = f"{object_name}_{e.instance_id}"
            model = self.models[e.object_id]
            detections.detections.append(conv.estimate_to_detection3d(e, header, model.bbox_min_max, object_name))
            transforms.append(conv.estimate_to_transform(e, header, name))
            position = e.T_world_object[:3, 3]
            markers.markers += [
                self.mesh_marker(header, e.T_world_object, e.object_id, k),
                conv.covariance_ellipsoid_marker(header, position, e.covariance[:3, :3], marker_id=k),
                conv.label_marker(header, position + np.array([0.0, 0.0, LABEL_HEIGHT_DIAMETERS * model.diameter_m]),
                                  f"{name} {e.score:.2f}", marker_id=k),
            ]
        return SetOutputs(detections=detections, transforms=transforms, markers=markers)


    def debug_image(self, view, estimates: Sequence[PoseEstimate]) -> np.ndarray:
        """One view's image with every estimate drawn: model outline, axes, ``<name>_<instance> <score>``.

        Args:
            view: a :class:`~pose_node.core.types.View` (rgb (H, W, 3) uint8, camera with K and
                ``T_world_camera``).
            estimates: world-frame estimates with tracked instance ids.
        Returns:
            (H, W, 3) uint8, a copy.
        """
        from pose_node.visualization import draw_pose_overlay

        image = np.ascontiguousarray(view.rgb)
        T_camera_world = np.linalg.inv(view.camera.T_world_camera)
        for e in estimates:
            image = draw_pose_overlay(image, self.models[e.object_id], view.camera.K, T_camera_world @ e.T_world_object,
                                      color_rgb=DEBUG_COLORS_RGB[e.object_id % len(DEBUG_COLORS_RGB)],
                                      label=f"{self.names[e.object_id]}_{e.instance_id} {e.score:.2f}")
        return image


__all__ = ["SetOutputBuilder", "SetOutputs"]
