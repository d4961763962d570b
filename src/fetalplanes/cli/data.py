"""Data commands: download, synth, scan."""

from __future__ import annotations

from pathlib import Path

import typer

from fetalplanes.cli.common import console


def download(
    out: Path = typer.Option(..., "--out", help="Folder to create with FETAL_PLANES_DB_data.csv and Images/."),
    api: str = typer.Option("https://zenodo.org/api/records", help="Zenodo API base (or a local mirror)."),
    record: str = typer.Option("3904280", help="Zenodo record id."),
    keep_archive: bool = typer.Option(False, help="Keep the downloaded zip."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset folder."),
) -> None:
    """Download FETAL_PLANES_DB (Zenodo 3904280, CC BY 4.0): resumable, verified, atomic."""
    from fetalplanes.data.download import download_fetal_planes

    root = download_fetal_planes(out, record=record, api=api, keep_archive=keep_archive, overwrite=overwrite)
    console.print(f"dataset ready at {root}")


def synth(
    out: Path = typer.Argument(..., help="Folder to write (must not exist or be empty)."),
    per_class: int = typer.Option(20, "--per-class", help="Images per class."),
    seed: int = typer.Option(0, "--seed"),
    width: int = typer.Option(320, help="Nominal image width."),
    height: int = typer.Option(256, help="Nominal image height."),
) -> None:
    """Write a SYNTHETIC phantom set in the exact FETAL_PLANES_DB format (tests and demos only)."""
    from fetalplanes.data.synth import synthesize

    root = synthesize(out, per_class=per_class, seed=seed, image_size=(width, height))
    console.print(f"synthetic FETAL_PLANES_DB-format set (not real data) written to {root}")


def scan(
    data: Path = typer.Argument(..., help="Dataset folder, CSV list or class folders."),
    task: str = typer.Option("planes", help="planes | brain"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="List the unreadable files as warnings and summarise "
                                  "the readable ones (exit 0) instead of stopping with the list (exit 2)."),
) -> None:
    """Index a dataset, check every image decodes, and list ALL bad files at once (one line each)."""
    from fetalplanes.core.io import screen_files
    from fetalplanes.data.sources import load_source

    index = load_source(data, task)
    for note in index.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    good, bad = screen_files([s.path for s in index.samples], skip_bad=skip_bad)
    if bad:
        readable = set(good)
        index = index.subset([s for s in index.samples if s.path in readable])
    s = index.summary()
    status = f"{len(bad)} unreadable left out (listed above)" if bad else "all readable"
    console.print(f"{s['n_images']} images, {s['n_patients']} patients, {status}")
    for c, n in s["class_counts"].items():
        console.print(f"  {c}: {n}")


def register(app: typer.Typer) -> None:
    app.command()(download)
    app.command()(synth)
    app.command()(scan)
