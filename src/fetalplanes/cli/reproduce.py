"""Reproduction commands: reproduce (the paper's table), calibrate, card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fetalplanes.cli.common import console
from fetalplanes.core.errors import UsageError


def _ints(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,5,7' -> [0, 5, 7]."""
    try:
        parts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--seeds: expected a count like 3 or a list like 0,1,2, got {text!r}") from None
    if len(parts) == 1 and "," not in text:
        if parts[0] < 1:
            raise UsageError(f"--seeds: the count must be >= 1, got {parts[0]}")
        return list(range(parts[0]))
    return parts


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def reproduce(
    data: Path = typer.Option(..., "--data", help="FETAL_PLANES_DB folder (or a format-identical set)."),
    out: Path = typer.Option(..., "--out", help="Grid folder: runs/, results.csv, results.md (reused to resume)."),
    seeds: str = typer.Option("3", "--seeds", help="Number of seeds (0..n-1) or a list like 0,1,2."),
    variants: str = typer.Option("all", "--variants", help="Comma list of variants and/or groups: paper, ablations, baselines, all."),
    split: str = typer.Option("official,image-8020", "--split", help="Comma list: official, patient-kfold, image-8020 (LEAKY, paper protocol)."),
    task: str = typer.Option("planes", "--task", help="Comma list: planes, brain."),
    pretrained: str = typer.Option("auto", "--pretrained", help="auto (timm weights where loadable, else random init) | none | timm."),
    config: Optional[str] = typer.Option(None, "--config", help="Config (preset or YAML) whose data/optim/trainer sections every variant uses (default: each variant's base preset)."),
    variants_file: Optional[Path] = typer.Option(None, "--variants-file", help="YAML of extra/changed variant rows."),
    image_size: Optional[int] = typer.Option(None, "--image-size"),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loader processes."),
    accelerator: Optional[str] = typer.Option(None, "--accelerator", help="auto | cpu | gpu"),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings for tests: 64 px, 1 epoch, few bootstrap resamples."),
    fast_path: bool = typer.Option(True, "--fast-path/--no-fast-path", help="Frozen backbones train on cached features."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache folder (default OUT/feature_cache)."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", help="Bootstrap resamples per run (default 1000; 100 with --quick)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Runs trained at once, one process each (several small models share one GPU; results.md lists the runs that shared it)."),
    list_only: bool = typer.Option(False, "--list", help="List the variants and groups, then exit."),
) -> None:
    """Train and evaluate the paper's variants, ablations and baselines over seeds; write the results table."""
    from fetalplanes.reproduce.runner import QUICK_OVERRIDES, ReproduceSettings, reproduce as run_grid
    from fetalplanes.reproduce.variants import groups, load_variants, select_variants

    rows = load_variants(variants_file)
    if list_only:
        for name, v in rows.items():
            changes = " ".join(f"{k}={v.changes[k]}" for k in v.changes)
            console.print(f"{name:14s} [{v.group}] {v.base}{' + ' + changes if changes else ''}: {v.description}",
                          markup=False, highlight=False, soft_wrap=True)
        console.print("groups: " + ", ".join(f"{g} ({len(n)})" for g, n in groups(rows).items()))
        return
    overrides = dict(QUICK_OVERRIDES) if quick else {}
    given = {"data.image_size": image_size, "optim.max_epochs": max_epochs, "optim.batch_size": batch_size,
             "data.num_workers": workers, "trainer.accelerator": accelerator}
    overrides.update({k: v for k, v in given.items() if v is not None})
    settings = ReproduceSettings(
        data=data, out=out, variants=select_variants(variants, rows), seeds=_ints(seeds), splits=_names(split),
        tasks=_names(task), base_config=config, pretrained=pretrained, overrides=overrides, fast_path=fast_path,
        n_boot=n_boot if n_boot is not None else (100 if quick else 1000), latency_runs=3 if quick else 7,
        cache_dir=cache_dir, jobs=jobs,
    )
    result = run_grid(settings)
    console.print(f"{result['runs']} runs ({result['skipped']} already done) -> {result['results_md']}")
    typer.echo(Path(result["results_md"]).read_text())


def calibrate(
    checkpoint: Path = typer.Option(..., "--checkpoint", "--model", help="Trained model: .ckpt or .onnx."),
    data: Path = typer.Option(..., "--data", help="The data the model was trained on (its validation split is re-derived)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for calibration.json + reliability.png (default: the run folder)."),
    target_accuracy: float = typer.Option(0.95, "--target-accuracy", help="Accuracy the kept (non-abstained) cases should reach on validation."),
    coverage: Optional[float] = typer.Option(None, "--coverage", help="Instead: keep this fraction of cases (0-1]."),
    min_coverage: float = typer.Option(0.5, "--min-coverage", help="Never abstain on more than 1 - this fraction."),
    write: bool = typer.Option(True, "--write/--dry-run", help="Store T and the threshold in the checkpoint."),
) -> None:
    """Temperature scaling + abstain threshold on the validation split; stored in the checkpoint's spec."""
    from fetalplanes.evaluation.calibration import calibrate_on_data

    r = calibrate_on_data(checkpoint, data, out, target_accuracy=target_accuracy, coverage=coverage,
                          min_coverage=min_coverage, write=write)
    console.print(f"T = {r['temperature']:.4f}, abstain threshold {r['abstain_threshold']:.4f} "
                  f"({r['abstain_rule']['rule']}); {'written to' if write else 'NOT written to'} {checkpoint}")
    for part in ("val", "test"):
        if part in r:
            s = r[part]
            console.print(f"  {part}: n={s['n']} ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f}  "
                          f"NLL {s['nll_before']:.4f} -> {s['nll_after']:.4f}  coverage {s['coverage_at_threshold']:.3f}")


def card(
    checkpoint: Path = typer.Option(..., "--checkpoint", "--model", help="Trained model: .ckpt or .onnx."),
    metrics: Path = typer.Option(..., "--metrics", help="metrics.json from `fetalplanes evaluate`."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="calibration.json (default: the run folder's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Card path (default: MODEL_CARD.md next to the checkpoint)."),
) -> None:
    """Write a Hugging Face-style MODEL_CARD.md for a trained checkpoint."""
    from fetalplanes.evaluation.model_card import write_model_card

    path = write_model_card(checkpoint, metrics, calibration, out=out)
    console.print(f"model card: {path}")


def register(app: typer.Typer) -> None:
    app.command()(reproduce)
    app.command()(calibrate)
    app.command()(card)
