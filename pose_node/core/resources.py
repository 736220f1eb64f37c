"""Where files shipped with the package (``models/``) are found, in a checkout or an install."""
from __future__ import annotations

import os
import sys
from pathlib import Path


#: The refinement's calibration (covariance scales, score exponents, publishing thresholds per mode),
#: read by the fusion and, for the default ``pose_score``, by the node's configuration.
REFINEMENT_CALIBRATION_FILE = "refinement_effl0.json"


def shipped_file_candidates(file_name: str, folder: str = "models") -> list[Path]:
    """Where a shipped file is looked for, in order.

    1. ``<folder>/`` at the repository root (source checkout, editable install);
    2. ``share/pose_node/<folder>`` under every prefix of ``AMENT_PREFIX_PATH`` (colcon install);
    3. ``share/pose_node/<folder>`` under ``sys.prefix`` (pip install, see setup.py ``data_files``).
    """
    paths = [Path(__file__).resolve().parents[2] / folder / file_name]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            paths.append(Path(prefix) / "share" / "pose_node" / folder / file_name)
    paths.append(Path(sys.prefix) / "share" / "pose_node" / folder / file_name)
    return list(dict.fromkeys(paths))


def shipped_file(file_name: str, folder: str = "models") -> Path:
    """The first existing file of :func:`shipped_file_candidates`, else the first candidate."""
    candidates = shipped_file_candidates(file_name, folder)
    return next((p for p in candidates if p.is_file()), candidates[0])
