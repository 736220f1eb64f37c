"""Multi-view fusion: association of single-view hypotheses across calibrated views and
AlignPose-style feature-metric refinement of one world pose per object.

Modules: :mod:`~pose_node.refinement.association` (grouping, symmetric equivalents, fused initial
pose), :mod:`~pose_node.refinement.alignment` (batched LM over world poses), :mod:`~pose_node.refinement.problem`
(crops, renders, dense features, lifted points), :mod:`~pose_node.refinement.registration` (model-to-depth
ICP hypotheses), :mod:`~pose_node.refinement.verification` (render-and-compare), :mod:`~pose_node.refinement.refiner`
(hypotheses, starts, rounds, covariance, score) and :mod:`~pose_node.refinement.fusion` (the two together, shared by the node and the
evaluation's :mod:`~pose_node.evaluation.stages.refinement`).
"""
