"""Time per explanation on this machine: compute_cam (and occlusion) per image, plus the overlay.

Each method explains the same images (synthetic phantoms at a real scanner size, or files you
give) one at a time, exactly as ``fetalplanes explain`` and the web service do: preprocess,
forward + backward through the model, CAM, resize back to the image's own size. The first
call per method is a warm-up and is not timed.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_cam.py [--checkpoint CKPT]
        [--image-size 128] [--configs "cam_layer:gradcam;stage:-3,stage:-2:layercam+smooth;occlusion"]
        [--images 5] [--width 800 --height 540] [--files IMG...] [--threads N]
        [--json benchmarks/results/bench_cam.json]
Configs use bench_localization.py's syntax: LAYER:METHOD[+smooth] or 'occlusion', ';'-separated.
Without --checkpoint an untrained paper_lite0 at --image-size is timed (weights do not change
the cost). Prints a Markdown table and writes JSON. On a shared machine the numbers include
contention from other processes: the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CONFIGS = (
    "cam_layer:gradcam;cam_layer:gradcam++;cam_layer:eigencam;stage:-2:eigencam;"
    "stage:-3,stage:-2:layercam;stage:-3,stage:-2:layercam+smooth;occlusion"
)


def load_model(checkpoint: str | None, image_size: int):
    from fetalplanes.core.classes import PLANES
    from fetalplanes.core.spec import ModelSpec
    from fetalplanes.models import create_model, default_preprocessing

    if checkpoint:
        from fetalplanes.models.checkpoint import load_model

        return load_model(checkpoint)
    model = create_model("paper_lite0", len(PLANES), pretrained=False).eval()
    spec = ModelSpec(name="paper_lite0 (untrained)", task="planes", class_names=tuple(PLANES),
                     architecture=dict(model.config), preprocessing=default_preprocessing(model, image_size))
    return model, spec


def test_images(n: int, width: int, height: int, files: list[str]):
    from PIL import Image

    from fetalplanes.core.io import load_image

    if files:
        return [load_image(f) for f in files[:n]]
    import numpy as np

    from fetalplanes.data.synth import PLANE_CODES, render

    rng = np.random.default_rng(0)
    planes = list(PLANE_CODES)
    return [Image.fromarray(render(planes[i % len(planes)], rng, (width, height))[0]) for i in range(n)]


def time_config(config: str, model, spec, images) -> dict:
    from bench_localization import parse_config

    from fetalplanes.explain import compute_cam, compute_occlusion, overlay_png

    layer, method, smooth = parse_config(config)

    def explain(img):
        if method == "occlusion":
            return compute_occlusion(model, spec, img)
        return compute_cam(model, spec, img, method=method, layer=layer, aug_smooth=smooth)

    explain(images[0])  # warm-up: first-call allocations, lazy imports
    cam_s, overlay_s = [], []
    for img in images:
        t0 = time.perf_counter()
        res = explain(img)
        t1 = time.perf_counter()
        overlay_png(img, res, spec)
        cam_s.append(t1 - t0)
        overlay_s.append(time.perf_counter() - t1)
    return {
        "config": config,
        "n": len(images),
        "cam_median_s": statistics.median(cam_s),
        "cam_min_s": min(cam_s),
        "cam_max_s": max(cam_s),
        "overlay_png_median_s": statistics.median(overlay_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--image-size", type=int, default=128, help="Model input size without --checkpoint.")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--height", type=int, default=540)
    ap.add_argument("--files", nargs="*", default=[], help="Real images to time instead of phantoms.")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    ap.add_argument("--json", default="benchmarks/results/bench_cam.json")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, spec = load_model(args.checkpoint, args.image_size)
    images = test_images(args.images, args.width, args.height, args.files)
    load_before = os.getloadavg()
    rows = [time_config(c.strip(), model, spec, images) for c in args.configs.split(";") if c.strip()]
    result = {
        "model": spec.name,
        "input_size": spec.preprocessing.image_size,
        "image_sizes": sorted({im.size for im in images}),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "rows": rows,
    }
    print(f"\n{spec.name}, input {spec.preprocessing.image_size} px, images {result['image_sizes']}, "
          f"{torch.get_num_threads()} torch threads, load average {load_before[0]:.1f}\n")
    print("| layer:method | n | CAM median (s) | min | max | overlay PNG (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['n']} | {r['cam_median_s']:.3f} | {r['cam_min_s']:.3f} | "
              f"{r['cam_max_s']:.3f} | {r['overlay_png_median_s']:.3f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n-> {args.json}")


if __name__ == "__main__":
    main()
