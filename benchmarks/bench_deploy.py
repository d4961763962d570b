"""Deployment benchmark: the paper model vs peers (``fetalplanes bench``) and video fps.

Usage:
    python benchmarks/bench_deploy.py --out runs/bench [--quick] [--checkpoint CKPT]
        [--threads N] [--extra-size 160] [--stream-frames 300] [--exporter dynamo]

Runs the library benchmark (torch eager NCHW / channels_last, ONNX Runtime fp32 / int8 at
batch 1 and 32 for the paper model and its peers), then streams an H.264 video of
SYNTHETIC phantom frames through the paper model's ONNX export (``fetalplanes stream``) at
batch 1 and 4. Prints the markdown tables and writes OUT/bench.json, OUT/bench.md and
OUT/stream_bench.json.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def stream_bench(models: dict[str, Path], out: Path, frames: int, threads: int | None) -> dict:
    """fps of ``fetalplanes stream`` on a phantom video (640x480, 30 fps) at batch 1 and 4."""
    from fetalplanes.deploy.stream import StreamConfig, run_stream, write_phantom_video

    video = write_phantom_video(out / "phantom_sweep.mp4", frames, (640, 480), fps=30)
    runs = {}
    for kind, path in models.items():
        for batch in (1, 4):
            s = run_stream(StreamConfig(video, path, out / f"stream_{kind}_b{batch}", batch=batch, threads=threads))
            keep = ("frames", "fps", "model_fps", "latency_ms_p50", "latency_ms_p95", "load_avg")
            runs[f"{kind} batch{batch}"] = {"model": str(path), **{k: s[k] for k in keep}}
    return {"video": str(video), "frame_size": [640, 480], "runs": runs}


def main() -> None:
    from fetalplanes.core.atomic import write_json
    from fetalplanes.deploy.bench import BenchConfig, run_bench
    from fetalplanes.deploy.bench_report import speed_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--extra-size", type=int, default=None)
    ap.add_argument("--exporter", default="dynamo")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--cpus", default=None, help="pin measurements to these cores, e.g. 0,1")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds of timed calls per cell")
    ap.add_argument("--stream-frames", type=int, default=300, help="0 skips the video benchmark")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cfg = BenchConfig(out_dir=args.out, checkpoint=args.checkpoint, peers=not args.no_peers, quick=args.quick,
                      threads=args.threads, extra_size=args.extra_size, exporter=args.exporter, budget_s=args.budget_s,
                      cpus=tuple(int(c) for c in args.cpus.split(",")) if args.cpus else None)
    result = run_bench(cfg)
    print(speed_table(result["rows"]))
    print(result["targets"])
    head = result["models"][0]
    if args.stream_frames and "onnx_fp32" in head:
        if cfg.cpus:
            os.sched_setaffinity(0, cfg.cpus)
        models = {kind: Path(head[f"onnx_{kind}"]["path"]) for kind in ("fp32", "int8") if f"onnx_{kind}" in head}
        s = stream_bench(models, args.out, args.stream_frames, args.threads)
        write_json(args.out / "stream_bench.json", s)
        for name, r in s["runs"].items():
            print(f"stream {name}: {r['fps']:.1f} fps end to end, model {r['model_fps']:.1f} fps, "
                  f"latency p50 {r['latency_ms_p50']:.1f} ms p95 {r['latency_ms_p95']:.1f} ms")


if __name__ == "__main__":
    main()
