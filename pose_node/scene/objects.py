"""A workcell's objects described as the node describes them: its YAML file or mesh files with units.

Besides procedural objects and a BOP models folder (see
:func:`pose_node.scene.generator.load_objects`), ``pose_scene`` renders

- the objects of the node's YAML file (the whole configuration file, or one holding only an
  ``objects:`` list), parsed by the node's own parser
  (:func:`pose_node.ros.node_config.load_object_configs`);
- mesh files written ``PATH:UNITS`` (``mug.ply:mm``), ids 1..N in argument order, names from the
  file stems; they become the node's ``{id, name, mesh, units}`` entries, parsed by the same parser.

Either way the models are built by the node's :func:`~pose_node.onboarding.object_models.load_object_models`,
so ids, names, units (metres after loading) and symmetries equal those of a node configured with
the same objects, and the TF frames it publishes (``<name>_<k>``) match the names written in
``scene_world.json``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel
from pose_node.datasets.bop import MM_PER_M
from pose_node.onboarding.object_models import load_object_models
from pose_node.ros.node_config import (
    MESH_UNITS, ObjectConfig, load_object_configs, parse_objects_section,
)

logger = logging.getLogger(__name__)

YAML_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")
# The formats mesh_loading.load_object_model reads; used only to tell "units missing" from "unknown source".
MESH_SUFFIXES: tuple[str, ...] = (".ply", ".obj", ".gltf", ".glb", ".stl", ".off")
_MESH_SPEC_KEY = "--objects"


def is_yaml_source(source: str) -> bool:
    """Whether an ``objects`` source names a YAML file (by its suffix)."""
    return Path(source).suffix.lower() in YAML_SUFFIXES


def parse_mesh_spec(spec: str) -> tuple[str, str]:
    """Split ``PATH:UNITS`` (the last colon separates) into the path and the declared units.

    Raises:
        InvalidInputError: no units, or units that are not one of :data:`MESH_UNITS`; the message
            names the argument and the accepted units.
    """
    path, sep, units = spec.rpartition(":")
    accepted = ", ".join(MESH_UNITS)
    if not sep or not path:
        if Path(spec).suffix.lower() in MESH_SUFFIXES:
            raise InvalidInputError(
                f"{_MESH_SPEC_KEY} {spec}: mesh file without units (meshes carry no reliable unit); "
                f"write {spec}:UNITS with UNITS one of {accepted}")
        raise InvalidInputError(
            f"{_MESH_SPEC_KEY} {spec}: expected 'procedural', a BOP models folder, the node's YAML file "
            f"({'/'.join(YAML_SUFFIXES)}) or mesh files PATH:UNITS with UNITS one of {accepted}")
    if units not in MESH_UNITS:
        raise InvalidInputError(f"{_MESH_SPEC_KEY} {spec}: unknown units {units!r}; expected one of {accepted}")
    return path, units


def mesh_file_objects(specs: Sequence[str], *, base_dir: str | Path | None = None) -> tuple[ObjectConfig, ...]:
    """Object configurations of mesh files given as ``PATH:UNITS``: ids 1..N, names the file stems.

    Args:
        specs: ``PATH:UNITS`` strings; relative paths resolve against ``base_dir``.
        base_dir: default: the working directory.
    Raises:
        InvalidInputError: a malformed spec, unknown units, a missing file, a stem that is not a
            valid object name (``[A-Za-z_][A-Za-z0-9_]*``, the node's rule) or two equal stems.
    """
    entries = []
    for object_id, spec in enumerate(specs, start=1):
        path, units = parse_mesh_spec(spec)
        entries.append({"id": object_id, "name": Path(path).stem, "mesh": path, "units": units})
    return parse_objects_section(entries, base_dir=Path.cwd() if base_dir is None else base_dir, key=_MESH_SPEC_KEY)


def bop_symmetries_mm(obj: ObjectConfig) -> dict[str, list] | None:
    """The object's symmetries as a BOP ``models_info.json`` entry in millimetres (translations and
    offsets scaled from the mesh's units, as the written PLY is), or None for procedural objects
    (their models carry the symmetries: ``write_bop_models`` writes those)."""
    if obj.procedural is not None:
        return None
    from pose_node.onboarding.mesh_loading import UNIT_TO_METRES

    scale = UNIT_TO_METRES[obj.units] * MM_PER_M
    entry = obj.bop_symmetries()
    for T in entry["symmetries_discrete"]:
        for i in (3, 7, 11):  # the translation of a row-major 4x4
            T[i] *= scale
    for sym in entry["symmetries_continuous"]:
        sym["offset"] = [v * scale for v in sym["offset"]]
    return {k: v for k, v in entry.items() if v}


def load_configured_objects(objects: Sequence[ObjectConfig]) -> tuple[list[ObjectModel], dict[int, dict]]:
    """The models of configured objects (the node's loader) and their BOP symmetry entries (mm).

    Raises:
        MeshLoadError: an unreadable or broken mesh, or a size implausible for the declared units.
    """
    models = load_object_models(objects)
    symmetries = {obj.object_id: entry for obj in objects if (entry := bop_symmetries_mm(obj)) is not None}
    for m in models:
        logger.info("object %d %s: %s (%s), diameter %.3f m", m.object_id, m.name, m.source_path, m.source_units,
                    m.diameter_m)
    return models, symmetries


def load_listed_objects(sources: Sequence[str]) -> tuple[list[ObjectModel], dict[int, dict]]:
    """Every object of one YAML file, or of mesh files ``PATH:UNITS`` (see the module docstring).

    Raises:
        InvalidInputError: unreadable YAML, no or invalid objects, malformed mesh specs, missing files.
        MeshLoadError: an unreadable or broken mesh, or a size implausible for the declared units.
    """
    if len(sources) == 1 and is_yaml_source(sources[0]):
        return load_configured_objects(load_object_configs(sources[0]))
    for source in sources:
        if is_yaml_source(source):
            raise InvalidInputError(f"{_MESH_SPEC_KEY} {source}: a YAML file must be the only objects source")
    return load_configured_objects(mesh_file_objects(sources))
