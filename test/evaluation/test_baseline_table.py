"""The README's out-of-domain table is read from the benchmark files, not typed by hand."""
from __future__ import annotations

import json

from pose_node.evaluation.baseline_table import markdown, table_rows


def test_rows_take_each_number_from_its_file(tmp_path):
    (tmp_path / "set_detection_rgbd.json").write_text(json.dumps({"detection": {"recall": 0.81, "precision": 0.74, "mask_ap": 0.665}}))
    (tmp_path / "set_refinement.json").write_text(json.dumps({"rows": [
        {"mode": "rgbd", "method": "single view", "AR": 0.5, "coverage_95": 0.7},
        {"mode": "rgbd", "method": "association", "AR": 0.6, "coverage_95": 0.8},
        {"mode": "rgbd", "method": "refinement", "AR": 0.75, "coverage_95": 0.9},
    ]}))
    (tmp_path / "set_bench_rgbd.json").write_text(json.dumps({"end_to_end_ms": {"median": 1500.0, "p95": 3250.0}}))
    rgbd, rgb = table_rows(tmp_path, "set")
    assert rgbd == ["set", "RGB-D", "0.81", "0.74", "0.67", "0.500", "0.600", "0.750", "0.70 / 0.90", "1.50 / 3.25"]
    assert rgb[:2] == ["set", "RGB"] and set(rgb[2:]) <= {"-", "- / -"}  # no RGB files: empty cells, not zeros
    text = markdown([rgbd, rgb])
    assert text.count("\n") == 3 and "| set | RGB-D | 0.81 |" in text
