"""Dataset I/O (BOP format)."""
from pose_node.datasets.bop import (
    BopDataset,
    BopEstimate,
    BopFormatError,
    BopGt,
    BopGtInfo,
    BopImageCamera,
    BopSceneWriter,
    Target,
    read_estimates_csv,
    read_targets,
    write_bop_models,
    write_estimates_csv,
    write_models_info,
    write_targets_bop19,
    write_targets_multiview,
)

__all__ = [
    "BopDataset", "BopEstimate", "BopFormatError", "BopGt", "BopGtInfo", "BopImageCamera", "BopSceneWriter",
    "Target", "read_estimates_csv", "read_targets", "write_bop_models", "write_estimates_csv",
    "write_models_info", "write_targets_bop19", "write_targets_multiview",
]
