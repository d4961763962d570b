"""Deployment commands: ``export`` (verified ONNX, optional gated static int8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from fetalplanes.cli.common import console
from fetalplanes.core.atomic import write_json
from fetalplanes.core.errors import UsageError


def _print_parity(r: dict[str, Any]) -> None:
    by_batch = ", ".join(f"{k} {v:.2e}" for k, v in r["max_abs_logit_diff_by_batch"].items())
    console.print(
        f"fp32 {r['path']}: parity vs PyTorch on {r['n_images']} images ({r['verify_source']}): "
        f"max |logit diff| {r['max_abs_logit_diff']:.2e} ({by_batch}), argmax mismatches {r['argmax_mismatches']}"
    )


def _print_int8(q: dict[str, Any]) -> None:
    acc = f", accuracy {q['acc_fp32']:.4f} -> {q['acc_int8']:.4f}" if "acc_fp32" in q else ""
    lat = q["latency_ms_b1"]
    console.print(
        f"int8 {q['path']}: top-1 agreement with fp32 {q['agreement']:.4f} on {q['n_holdout']} held-out images{acc}, "
        f"drop {q['drop']:+.4f} (max {q['max_drop']:g}{', forced' if q['forced'] and not q['passed'] else ''}); "
        f"batch-1 latency fp32 {lat['fp32']:.1f} ms, int8 {lat['int8']:.1f} ms ({q['speedup_b1']:.2f}x)"
    )
    if q["speedup_b1"] < 1.0:
        console.print("[yellow]note: int8 was not faster than fp32 on this CPU; prefer the fp32 model here.[/]")


def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", "--model", help="Training checkpoint (best.ckpt) to export."),
    out: Path = typer.Option(..., "--out", help="fp32 ONNX file to write."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", "--data", help="Dataset folder/CSV: real images for the parity check and int8 calibration."
    ),
    int8: bool = typer.Option(False, "--int8", help="Also write a static int8 (QDQ) model, gated on accuracy."),
    int8_out: Optional[Path] = typer.Option(None, "--int8-out", help="int8 file (default: OUT with .int8.onnx)."),
    max_drop: float = typer.Option(0.01, "--max-drop", help="Largest accepted int8 accuracy drop on the calibration hold-out."),
    force: bool = typer.Option(False, "--force", help="Write the int8 model even when it fails the accuracy gate."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 18)."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo | torchscript"),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the parity / int8 numbers as JSON here."),
) -> None:
    """Export a checkpoint to ONNX, verified against PyTorch before the file is written."""
    from fetalplanes.deploy.export import export_checkpoint

    if int8 and calibration is None:
        raise UsageError("--int8 needs --calibration DIR (training images to calibrate on and to gate the accuracy)")
    result: dict[str, Any] = {"fp32": export_checkpoint(checkpoint, out, calibration, opset=opset, exporter=exporter)}
    _print_parity(result["fp32"])
    if int8:
        from fetalplanes.deploy.quantize import quantize_onnx

        result["int8"] = quantize_onnx(out, int8_out, calibration, max_drop=max_drop, force=force)
        _print_int8(result["int8"])
    if report:
        write_json(report, result)
    else:
        console.print_json(json.dumps(result, default=str))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
