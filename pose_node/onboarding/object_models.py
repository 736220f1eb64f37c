"""Object models from their configuration: CAD meshes in declared units, or procedural objects.

What the node (and ``pose_scene``) does with the ``objects:`` entries of a configuration once
they are parsed (:mod:`pose_node.ros.node_config` reads the file; this module builds the models).
The mesh loaders are imported by :func:`load_object_models` only, so the configuration types load fast.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from pose_node.core.types import ObjectModel


@dataclass(frozen=True)
class ContinuousSymmetry:
    """A continuous rotational symmetry (BOP ``symmetries_continuous`` entry).

    Attributes:
        axis: (3,) rotation axis in the object frame (any non-zero length).
        offset: (3,) a point on the axis, in the mesh file's units.
    """

    axis: tuple[float, float, float]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ProceduralSpec:
    """Procedural objects ``make_procedural_objects(count, seed, first_id=first_id)``, ids ``first_id .. first_id + count - 1``."""

    seed: int
    count: int
    first_id: int = 1


class ObjectSource(Protocol):
    """What :func:`load_object_models` reads of one configured object (e.g. a
    :class:`pose_node.ros.node_config.ObjectConfig`)."""

    object_id: int
    name: str
    mesh_path: Path | None
    units: str
    procedural: ProceduralSpec | None

    def bop_symmetries(self) -> dict[str, list]:
        """The symmetries as a BOP ``models_info.json`` entry."""
        ...


def load_object_models(objects: Sequence[ObjectSource]) -> list[ObjectModel]:
    """Build the :class:`~pose_node.core.types.ObjectModel` of every configured object.

    Procedural entries are generated once per entry (the generator makes a whole entry at once,
    so the objects equal ``pose_scene``'s with the same seed and count); names come from the
    configuration.

    Args:
        objects: the configured objects, e.g. the node's
            :class:`~pose_node.ros.node_config.ObjectConfig` s.
    Returns:
        ``list[ObjectModel]`` in the order of ``objects``.
    Raises:
        MeshLoadError: an unreadable mesh or an implausible size for the declared units.
    """
    from pose_node.onboarding.mesh_loading import UNIT_TO_METRES, load_object_model, symmetry_transforms
    from pose_node.onboarding.procedural import make_procedural_objects

    generated: dict[ProceduralSpec, dict[int, ObjectModel]] = {}
    models = []
    for obj in objects:
        if obj.procedural is not None:
            spec = obj.procedural
            if spec not in generated:
                batch = make_procedural_objects(spec.count, spec.seed, first_id=spec.first_id)
                generated[spec] = {m.object_id: m for m in batch}
            models.append(replace(generated[spec][obj.object_id], name=obj.name))
        else:
            symmetries = symmetry_transforms(obj.bop_symmetries(), unit_to_m=UNIT_TO_METRES[obj.units])
            models.append(load_object_model(obj.mesh_path, units=obj.units, object_id=obj.object_id, name=obj.name,
                                            symmetries=symmetries))
    return models


__all__ = ["ContinuousSymmetry", "ObjectSource", "ProceduralSpec", "load_object_models"]
