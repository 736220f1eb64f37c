"""Debug visualizations: models projected onto camera images."""
from pose_node.visualization.overlay import draw_pose_overlay, project_silhouette

__all__ = ["draw_pose_overlay", "project_silhouette"]
