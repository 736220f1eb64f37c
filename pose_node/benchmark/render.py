"""``pose_render_bench``: throughput of the headless renderer on one ~16k-face textured object.

Measures, after warm-up, the median of several repeats of:
- templates/s at 128x128: batches of viewpoints on a sphere (42 and 162), rgb+depth+xyz+instance;
- frames/s at 640x480: one camera, the object filling about 40 % of the image width,
  rgb+depth+instance.

Example: ``pose_render_bench --json out/render_bench.json``
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from pose_node.onboarding.procedural import SHAPES, make_procedural_object
from pose_node.render.renderer import Renderer, RenderSettings
from pose_node.render.viewpoints import look_at_T_camera_object, sphere_viewpoints

logger = logging.getLogger(__name__)

TEMPLATE_SIZE_PX = 128
TEMPLATE_FILL = 0.8  # object diameter / template width
FRAME_SIZE_PX = (640, 480)
FRAME_FILL = 0.4  # object diameter / image width


def _timings_s(fn, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, min) wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def _K(width: int, height: int, f_px: float) -> np.ndarray:
    return np.array([[f_px, 0.0, (width - 1) / 2], [0.0, f_px, (height - 1) / 2], [0.0, 0.0, 1.0]])


def run_benchmark(*, shape: str = "ellipsoid", target_faces: int = 16000, repeats: int = 7, warmup: int = 2,
                  settings: RenderSettings = RenderSettings()) -> dict:
    """Run both measurements; returns a JSON-serializable dict of the numbers and the setup."""
    load_before = os.getloadavg()[0]  # other processes on the machine slow the numbers down
    model = make_procedural_object(1, seed=0, target_faces=target_faces, shape=shape)
    center = (model.vertices.min(0) + model.vertices.max(0)) / 2
    result: dict = {
        "object": {"name": model.name, "faces": int(len(model.faces)), "texture_px": list(model.texture.shape[:2])},
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "settings": {"cull_back_faces": settings.cull_back_faces},
        "repeats": repeats,
        "warmup": warmup,
    }

    f_px = 150.0
    distance_m = f_px * model.diameter_m / (TEMPLATE_FILL * TEMPLATE_SIZE_PX)
    with Renderer(TEMPLATE_SIZE_PX, TEMPLATE_SIZE_PX, settings) as renderer:
        result["gl_renderer"] = renderer.gl_renderer
        handle = renderer.add_object(model)
        result["templates"] = []
        for subdivisions in (1, 2):
            T = sphere_viewpoints(subdivisions, distance_m, center)[:, None]
            K = np.repeat(_K(TEMPLATE_SIZE_PX, TEMPLATE_SIZE_PX, f_px)[None], len(T), 0)
            seconds, fastest = _timings_s(lambda: renderer.render(K, T, [handle]), warmup, repeats)
            result["templates"].append({
                "views": len(T), "size_px": [TEMPLATE_SIZE_PX, TEMPLATE_SIZE_PX],
                "outputs": ["rgb", "depth", "xyz", "instance"],
                "median_s_per_batch": seconds, "min_s_per_batch": fastest, "templates_per_s": len(T) / seconds,
            })

    width, height = FRAME_SIZE_PX
    f_px = 600.0
    distance_m = f_px * model.diameter_m / (FRAME_FILL * width)
    eye = center + distance_m * np.array([0.5, -0.6, 0.62]) / np.linalg.norm([0.5, -0.6, 0.62])
    T = look_at_T_camera_object(eye[None], center)[:, None]
    K = _K(width, height, f_px)[None]
    outputs = ("rgb", "depth", "instance")
    with Renderer(width, height, settings) as renderer:
        handle = renderer.add_object(model)
        coverage = float((renderer.render(K, T, [handle], outputs=("instance",)).instance > 0).mean())
        seconds, fastest = _timings_s(lambda: renderer.render(K, T, [handle], outputs=outputs), warmup + 1, 4 * repeats)
    result["frames"] = {
        "size_px": [width, height], "outputs": list(outputs), "object_pixel_fraction": coverage,
        "median_s_per_frame": seconds, "min_s_per_frame": fastest, "frames_per_s": 1.0 / seconds,
    }
    result["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--shape", choices=SHAPES, default="ellipsoid",
                        help="procedural shape (the ellipsoid meets a 16k-face budget closely)")
    parser.add_argument("--faces", type=int, default=16000, help="target face count")
    parser.add_argument("--cull", choices=("auto", "on", "off"), default="auto",
                        help="back-face culling: auto (closed meshes only, the renderer's default), on, off")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    result = run_benchmark(shape=args.shape, target_faces=args.faces, repeats=args.repeats, warmup=args.warmup,
                           settings=RenderSettings(cull_back_faces={"auto": None, "on": True, "off": False}[args.cull]))
    obj = result["object"]
    print(f"renderer: {result['gl_renderer']}, {result['cpu_count']} CPUs; object {obj['name']}: "
          f"{obj['faces']} faces, {obj['texture_px'][1]}x{obj['texture_px'][0]} texture; "
          f"back-face culling {args.cull}; 1-min load average {result['load_average_1min']['before']:.2f} before, "
          f"{result['load_average_1min']['after']:.2f} after")
    for t in result["templates"]:
        print(f"templates {t['size_px'][0]}x{t['size_px'][1]} rgb+depth+xyz+instance, batch {t['views']:4d}: "
              f"{t['templates_per_s']:8.1f} templates/s ({1e3 * t['median_s_per_batch']:.1f} ms/batch)")
    fr = result["frames"]
    print(f"frames {fr['size_px'][0]}x{fr['size_px'][1]} rgb+depth+instance, 1 camera, object on "
          f"{100 * fr['object_pixel_fraction']:.0f} % of pixels: {fr['frames_per_s']:8.1f} frames/s "
          f"({1e3 * fr['median_s_per_frame']:.2f} ms/frame)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
