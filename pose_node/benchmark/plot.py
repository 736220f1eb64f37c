"""The scaling plot: end-to-end latency and its stages against the number of cameras and of objects.

One panel per swept axis. In each, stacked bars are the stage medians (the stage groups of
:mod:`pose_node.benchmark.stats`) and the lines are the end-to-end median (solid) and 95th
percentile (dashed), so both where the time goes and how it grows are visible at a glance. Bars
stand at the swept values (1, 2, 3, 4, 6 cameras are not evenly spaced). A point that failed (its
``error`` is set) is left out of its panel and named under it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display is needed to write a PNG
import matplotlib.pyplot as plt  # noqa: E402

PANEL_SIZE_IN = (6.4, 4.8)
DPI = 100  # one panel is 640 x 480 pixels
AXIS_LABELS = {"cameras": "cameras", "objects": "objects on the table"}


def panel_size_px(panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with ``panels`` panels side by side."""
    return int(round(PANEL_SIZE_IN[0] * DPI * panels)), int(round(PANEL_SIZE_IN[1] * DPI))


def _stage_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for point in points:
        names += [k for k, v in point["stages_ms"].items() if v is not None and k not in names]
    return names


def plot_scaling(sweeps: Mapping[str, Sequence[Mapping[str, Any]]], out_png: Path, title: str = "") -> Path:
    """Write the scaling plot.

    Args:
        sweeps: swept axis (``cameras`` or ``objects``) -> result JSONs of its points (each with
            ``config``, ``end_to_end_ms`` and ``stages_ms``; failed points carry ``error``).
        out_png: the PNG to write (its folder is created).
        title: figure title (the fixed part of the configuration).
    Returns:
        ``out_png``.
    """
    axes_names = [name for name, points in sweeps.items() if points]
    figure, axes = plt.subplots(1, max(1, len(axes_names)), figsize=(PANEL_SIZE_IN[0] * max(1, len(axes_names)), PANEL_SIZE_IN[1]),
                                dpi=DPI, squeeze=False)
    for ax, name in zip(axes[0], axes_names):
        points = sorted((p for p in sweeps[name] if not p.get("error")), key=lambda p: p["config"][name])
        failed = sorted(p["config"][name] for p in sweeps[name] if p.get("error"))
        # Bars at the swept values themselves (not evenly spaced): a jump from 4 to 6 cameras looks like one.
        x = [p["config"][name] for p in points]
        width = 0.6 * (min(b - a for a, b in zip(x, x[1:])) if len(x) > 1 else 1.0)
        bottom = [0.0] * len(points)
        for stage in _stage_names(points):
            heights = [p["stages_ms"].get(stage) or 0.0 for p in points]
            ax.bar(x, heights, bottom=bottom, width=width, label=stage)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.plot(x, [p["end_to_end_ms"]["median"] for p in points], "k-o", label="end to end, median")
        ax.plot(x, [p["end_to_end_ms"]["p95"] for p in points], "k--", label="end to end, p95")
        ax.set_xticks(x, [str(v) for v in x])
        fixed = "objects" if name == "cameras" else "cameras"
        fixed_values = sorted({p["config"][fixed] for p in sweeps[name]})
        note = f"; failed: {', '.join(map(str, failed))}" if failed else ""
        ax.set_xlabel(f"{AXIS_LABELS.get(name, name)} ({fixed}: {', '.join(map(str, fixed_values))}{note})")
        ax.set_ylabel("latency per multi-view frame, ms")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    if not axes_names:
        axes[0][0].text(0.5, 0.5, "no sweep points", ha="center", va="center")
    if title:
        figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=DPI)  # no bbox_inches="tight": the size stays panel_size_px
    plt.close(figure)
    return out_png


__all__ = ["panel_size_px", "plot_scaling"]
