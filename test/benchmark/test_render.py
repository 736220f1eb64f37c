"""pose_render_bench runs end to end and writes its numbers."""
from __future__ import annotations

import json

from pose_node.benchmark import render as bench


def test_bench_main_writes_json(tmp_path, capsys, make_renderer):
    make_renderer(8, 8)  # skips without EGL
    out = tmp_path / "bench.json"
    assert bench.main(["--faces", "2000", "--repeats", "1", "--warmup", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [t["views"] for t in result["templates"]] == [42, 162]
    assert all(t["templates_per_s"] > 0 for t in result["templates"])
    assert result["frames"]["frames_per_s"] > 0 and 0.01 < result["frames"]["object_pixel_fraction"] < 0.5
    assert 1000 < result["object"]["faces"] < 3000
    printed = capsys.readouterr().out
    assert "templates/s" in printed and "frames/s" in printed
