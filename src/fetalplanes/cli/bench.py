"""Speed commands: ``bench`` (paper model vs peers, torch vs ONNX Runtime) and ``stream`` (video)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fetalplanes.cli.common import console
from fetalplanes.core.errors import UsageError


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def bench(
    out: Path = typer.Option(..., "--out", help="Folder for bench.json, bench.md and the exported models."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "--model", help="Bench this trained model (.ckpt) as the paper model."),
    preset: str = typer.Option("paper_lite0", "--preset", help="Paper model preset when no --checkpoint is given."),
    peers: bool = typer.Option(True, "--peers/--no-peers", help="Also bench the paper variants and peer models."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma list: keep only these rows (e.g. paper_lite0,mobilenetv3)."),
    backends: Optional[str] = typer.Option(None, "--backends", help="Comma list of torch, torch_cl, ort_fp32, ort_int8 (default: all)."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma list (default 1,32; quick 1,8)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Input size (default: the spec's, 224)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: the cores available)."),
    quick: bool = typer.Option(False, "--quick", help="Few repeats, batch 1 and 8 (for tests and smoke runs)."),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="Op-level profile of the paper model (ORT and torch)."),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Time ORT session settings for the paper model."),
    extra_size: Optional[int] = typer.Option(None, "--extra-size", min=16, help="Also time the paper model at this (non-spec) input size, labelled."),
    isolate: bool = typer.Option(True, "--isolate/--in-process", help="One fresh process per (model, backend) for honest peak memory."),
    exporter: str = typer.Option("dynamo", "--exporter", help="ONNX exporter: dynamo (the default export) | torchscript (faster to export)."),
    cpus: Optional[str] = typer.Option(None, "--cpus", help="Pin the measurements to these cores, e.g. 0,1 (emulates a small machine)."),
    budget_s: Optional[float] = typer.Option(None, "--budget-s", min=0.0, help="Seconds of timed calls per backend and batch size."),
) -> None:
    """Benchmark the paper model against peers: torch eager vs ONNX Runtime fp32/int8, img/s, latency, memory, FLOPs."""
    from fetalplanes.deploy.bench import BenchConfig, run_bench
    from fetalplanes.deploy.bench_report import speed_table
    from fetalplanes.deploy.bench_worker import BACKENDS

    sizes, cores = _split(batch_sizes), _split(cpus)
    if cores and not all(c.isdigit() for c in cores):
        raise UsageError(f"--cpus must be core numbers like 0,1; got {cpus!r}")
    if sizes and not all(s.isdigit() and int(s) > 0 for s in sizes):
        raise UsageError(f"--batch-sizes must be positive integers, got {batch_sizes!r}")
    cfg = BenchConfig(
        out_dir=out, checkpoint=str(checkpoint) if checkpoint else None, preset=preset, peers=peers,
        models=_split(models), backends=tuple(_split(backends) or BACKENDS),
        batch_sizes=tuple(int(s) for s in sizes) if sizes else None, image_size=image_size, threads=threads,
        quick=quick, profile=profile, tune=tune, extra_size=extra_size, isolate=isolate, exporter=exporter,
        cpus=tuple(int(c) for c in cores) if cores else None, budget_s=budget_s,
    )
    result = run_bench(cfg)
    console.print(speed_table(result["rows"]), markup=False, highlight=False, soft_wrap=True)
    t = result["targets"]
    if "ort_bs1_img_s" in t:
        console.print(
            f"paper model, batch 1: ONNX Runtime {t['ort_bs1_img_s']:.1f} img/s (target 120: {'met' if t['met_ort_bs1'] else 'NOT met'}), "
            f"{t['ort_vs_eager_bs1'] or 0:.2f}x torch eager (target 4x: {'met' if t['met_ort_vs_eager'] else 'NOT met'})",
            markup=False, highlight=False,
        )
    console.print(f"load average before/after: {result['load_avg_before'][0]:.2f} / {result['load_avg_after'][0]:.2f}")
    console.print(f"-> {out / 'bench.md'}  {out / 'bench.json'}")


def stream(
    input: Path = typer.Argument(..., help="Video file (mp4/avi/...), folder of frames, or multi-frame DICOM cine."),
    model: Path = typer.Option(..., "--model", "--checkpoint", help="Exported model.onnx (torch-free) or a .ckpt checkpoint."),
    out: Path = typer.Option(Path("stream_out"), "--out", help="Folder for frames.csv, best/<plane>.png and stream.json."),
    smooth: str = typer.Option("ema:0.5", "--smooth", help="Temporal smoothing: none | ema:ALPHA | window:N."),
    batch: int = typer.Option(4, "--batch", min=1, help="Frames per inference call (1 = lowest latency)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.001, help="Frame rate for frame folders / DICOM without FrameTime."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    save_best: bool = typer.Option(True, "--save-best/--no-save-best", help="Save the most confident frame per plane."),
) -> None:
    """Classify every frame of a cine, smooth over time, save the best frame per plane; reports fps."""
    from fetalplanes.deploy.stream import StreamConfig, run_stream

    s = run_stream(StreamConfig(input, model, out, smooth, batch, threads, fps, max_frames, save_best))
    console.print(
        f"{s['frames']} frames in {s['wall_s']:.2f} s: {s['fps']:.1f} fps end to end (model alone {s['model_fps']:.1f} fps); "
        f"per-frame latency p50 {s['latency_ms_p50']:.1f} ms, p95 {s['latency_ms_p95']:.1f} ms",
        markup=False, highlight=False,
    )
    for label, b in s["best_frames"].items():
        console.print(f"  best {label}: frame {b['frame']} (t={b['time_s']:.2f} s, {b['confidence']:.1%}) -> {b['path']}", markup=False)
    if save_best and not s["best_frames"]:
        # Say why the best/ folder is empty instead of leaving the user to look for it.
        why = ("below the model's abstain threshold or rejected by its OOD gate (not a fetal plane)"
               if s.get("ood_gate") else "below the model's abstain threshold")
        console.print(f"  no best frame: every frame was {why}", markup=False)
    console.print(f"-> {out / 'frames.csv'}  {out / 'stream.json'}")


def register(app: typer.Typer) -> None:
    app.command()(bench)
    app.command()(stream)
