#!/usr/bin/env bash
# The out-of-domain measurements of the README, for one multi-view BOP dataset (a pose_ood_set output):
# detection (pose_eval --stages detection), single view / association / refinement (pose_refinement_bench),
# latency of the node's pipeline on the same frames (pose_bench --dataset), then one table.
#
#   scripts/ood_baseline.sh NAME DATASET_DIR [OUT_DIR]      e.g. scripts/ood_baseline.sh ood_test out/ood_test
#
# Every command runs local-only (pose_node.ros.local_env). Two torch threads (this machine has two cores).
set -euo pipefail
name=$1; dataset=$2; out=${3:-out/ood_baseline}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${VENV:-$root/.venv}/bin/python"
run() { echo "+ $*" >&2; "$py" -m pose_node.ros.local_env -- "$py" -m "$@"; }
mkdir -p "$out"
for mode in rgbd rgb; do
  run pose_node.evaluation.cli --dataset "$dataset" --targets test_targets_multiview.json --stages detection \
    --mode "$mode" --threads 2 --out "$out/${name}_detection_${mode}.json"
done
run pose_node.benchmark.refinement --datasets --dataset-dir "$name=$dataset" --threads 2 --json "$out/${name}_refinement.json"
for mode in rgbd rgb; do
  run pose_node.benchmark.cli --dataset "$dataset" --mode "$mode" --threads 2 --out "$out/${name}_bench_${mode}.json"
done
"$py" -m pose_node.evaluation.baseline_table --out-dir "$out" "$name"
