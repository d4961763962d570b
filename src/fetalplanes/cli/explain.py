"""``fetalplanes explain``: heat-map overlays, raw CAMs, localization scores and an HTML gallery."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fetalplanes.cli.common import console
from fetalplanes.core.cam_methods import METHOD_NAMES
from fetalplanes.core.cam_methods import COMPARE_CONFIGS as DEFAULT_CONFIGS


def explain(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Image files or folders (PNG/JPEG/TIFF/DICOM...)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "--model", help="Trained checkpoint (.ckpt): Grad-CAM needs the torch model."),
    out: Path = typer.Option(..., "--out", help="Output folder (overlays/, cams/, index.html, *.json)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Labelled dataset instead of INPUT: FETAL_PLANES_DB folder, labels CSV or class folders."
    ),
    split: str = typer.Option("test", "--split", help="With --data: test | val | train | all."),
    method: Optional[str] = typer.Option(
        None, "--method", help=f"One of {', '.join(METHOD_NAMES)} (CAMs, then captum input attributions; "
        "default: the checkpoint's).",
    ),
    target: str = typer.Option("predicted", "--target", help="'predicted' or a class name to explain."),
    masks: Optional[List[Path]] = typer.Option(
        None, "--masks", help="Folder of structure masks (<stem>.png or <stem>_Mask.png); repeatable."
    ),
    occlusion: int = typer.Option(0, "--occlusion", help="Also compute occlusion sensitivity for the first N images."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Explain at most N images."),
    layer: Optional[str] = typer.Option(
        None, "--layer",
        help="Feature map(s): 'cam_layer' (the model's declared layer), 'stage:N', a module name, or 'a,b' "
        "(default: the checkpoint's).",
    ),
    aug_smooth: Optional[bool] = typer.Option(
        None, "--aug-smooth/--no-aug-smooth",
        help="Average over flip/intensity test-time augmentations, 6x time (default: the checkpoint's).",
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave unreadable images out (named in explanations.json) "
                                  "instead of stopping with the list of them."),
    sanity: bool = typer.Option(
        False, "--sanity",
        help="Also re-compute the maps with the head, then the whole model randomized, and with a head fit to "
        "permuted labels; report the rank correlation with the trained maps (~4x the time).",
    ),
    compare: bool = typer.Option(
        False, "--compare",
        help="Run every method of --configs on the same images, each with --sanity, and write one table "
        "(compare.json/.md/.html: localization, priors, sanity margins, s/img). Choose defaults on --split val.",
    ),
    configs: Optional[str] = typer.Option(
        None, "--configs", help=f"With --compare: 'LAYER:METHOD;METHOD;...' (default {DEFAULT_CONFIGS!r}).",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    frame: int = typer.Option(0, "--frame", min=0, help="0-based frame to explain of each multi-frame input "
                              "(DICOM cine, multi-page image, video); named in the output."),
) -> None:
    """Explain predictions: overlay PNG + raw CAM (.npy) per image, index.html gallery, localization.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fetalplanes.explain.pipeline import explain as run_explain

    if compare:
        return _compare(checkpoint, out, inputs or [], data, split, masks or [], configs, limit, skip_bad)
    if configs is not None:
        raise typer.BadParameter("--configs applies only with --compare", param_hint="--configs")

    with Progress(
        TextColumn("explaining"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=no_progress, transient=True,
    ) as bar:
        task = bar.add_task("explain", total=None)
        summary = run_explain(
            checkpoint, out, inputs or [], data, split, method, target, masks or [], occlusion, limit,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total), layer=layer, aug_smooth=aug_smooth,
            skip_bad=skip_bad,
            sanity=sanity,
            frame=frame,
        )
    secs = summary["seconds_per_cam_median"]
    console.print(
        f"explained {summary['n']} image(s) with {summary['method']} at {summary['layer']} "
        f"({secs:.2f} s per CAM, median) -> {out / 'index.html'}"
    )
    for f in summary["frames"]:  # a cine is explained at one frame: say which
        console.print(f"  {f['image']}: frame {f['frame']} of {f['frames']} explained", markup=False, highlight=False)
    if summary["skipped"]:
        console.print(f"[yellow]skipped {summary['skipped']} unreadable file(s); see {out / 'explanations.json'}[/]")
    loc = summary["localization"]
    if loc:
        for name, s in loc["maps"].items():
            pg, en = s["pointing_game"], s["energy_share"]
            f3 = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731  (undefined: every CAM empty)
            console.print(
                f"  {name}: n={s['n']} pointing game {f3(pg['hit_rate'])} (uniform chance {f3(pg['chance_uniform'])}, "
                f"centre prior {f3(pg['chance_center'])}; {pg['n_empty_cams']} empty map(s) left out); energy in mask "
                f"{f3(en['mean'])} (chance {f3(en['chance_uniform'])}, centre prior {f3(en['chance_center'])})"
            )
        from fetalplanes.explain.priors import lines

        for line in lines(loc.get("priors") or {}):
            console.print(f"  {line}", markup=False)
        console.print(f"  -> {out / 'localization.json'}")
    if summary["sanity"]:
        for c in summary["sanity"]["checks"]:
            console.print(f"  sanity: {c['name']}: median Spearman {c['spearman_median']:.3f}", markup=False)
        console.print(f"  sanity: {summary['sanity']['verdict']} -> {out / 'sanity.json'}", markup=False)


def _compare(checkpoint: Path, out: Path, inputs: List[Path], data: Optional[Path], split: str, masks: List[Path],
             configs: Optional[str], limit: Optional[int], skip_bad: bool) -> None:
    from fetalplanes.explain.compare import compare_methods, markdown  # numpy, Pillow: not at --help

    table = compare_methods(checkpoint, out, inputs, data, split, masks, configs, limit, skip_bad=skip_bad,
                            on_progress=lambda name: console.print(f"comparing: {name}", markup=False))
    console.print(markdown(table), markup=False)
    console.print(f"-> {out / 'compare.json'}, {out / 'compare.md'}, {out / 'compare.html'}", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(explain)
