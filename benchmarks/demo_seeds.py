"""The demo's spread over training seeds: the single source of the README's demo numbers.

Runs ``fetalplanes demo`` (the command ``make demo`` runs, same defaults) once per training
seed, as a separate process each time, into ``--out/seed-N``. The synthetic set is fixed
(``--data-seed``, default 0 as in ``make demo``): only the training seed changes (validation
split, head initialisation, augmentation, batch order), so the spread is that of training on
one fixed test set. Training seed 0 with data seed 0 is exactly ``make demo``'s run: its row is
the one the README quotes. The data are SYNTHETIC phantoms: these numbers say the pipeline
works, nothing about clinical accuracy.

The environment is recorded with the results (library versions, torch threads, the CPU kernel
level torch dispatches to): a CPU run repeats bit for bit only on the same machine kind with the
same libraries and thread count; change any of them and float sums are reordered, which over
15 epochs of training moves the result by about the spread measured here.

Each run's localization (pointing game, energy share, model and centre prior), its largest
median sanity Spearman and speed are kept too: ``benchmarks/docs_numbers.py`` renders the
README's band (median and min-max over seeds) from this JSON, stamped with
``benchmarks/_provenance.py``.

Usage (one run takes 1-5 minutes on 2 CPU cores, more on a shared machine):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_seeds.py [--seeds 3] [--data-seed 0]
        [--out runs/demo_seeds] [--json benchmarks/results/demo_seeds.json]
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ("test_top1", "test_top2", "test_f1_macro")
LIBRARIES = ("torch", "torchvision", "timm", "lightning", "numpy", "pillow", "scikit-learn", "onnxruntime")


def run_one(out: Path, data_seed: int, train_seed: int, max_epochs: int | None) -> dict:
    """Run ``fetalplanes demo`` into a fresh ``out``; returns its summary plus the wall time (s)."""
    if out.exists():
        shutil.rmtree(out)  # a leftover last.ckpt would make the demo resume instead of start fresh
    cmd = [sys.executable, "-m", "fetalplanes", "demo", "--out", str(out), "--seed", str(data_seed),
           "--train-seed", str(train_seed)]
    if max_epochs is not None:
        cmd += ["--max-epochs", str(max_epochs)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    return run_fields(json.loads((out / "demo_summary.json").read_text()), wall)


def run_fields(summary: dict, wall_s: float | None) -> dict:
    """The band's fields of one ``demo_summary.json`` (also used to place a fresh demo in the band)."""
    loc = {f"{score}_{who}": (summary.get(f"test_{score}") or {}).get(who, {}).get("mean")
           for score in ("pointing_game", "energy_share") for who in ("model", "centre")}
    sanity = summary.get("sanity_median_spearman") or {}
    return {"train_seed": summary["train_seed"], **{k: summary[k] for k in METRICS},
            "test_top1_ci95": summary["test_top1_ci95"], "n_test": summary.get("n_test", _n_test(summary)),
            **loc, "sanity_max_median_spearman": max(sanity.values()) if sanity else None,
            "sanity_flagged": summary.get("sanity_flagged"), "explain_method": summary.get("explain_method"),
            "explain_default_passes": (summary.get("explain_default_check") or {}).get("status") == "passes",
            "train_img_per_s": summary["train_img_per_s"], "train_wall_s": summary["train_wall_s"],
            "machine": summary.get("machine"), "wall_s": wall_s}


def _n_test(summary: dict) -> int | None:
    """Number of test images, from the run's metrics.json beside the summary's report."""
    metrics = Path(summary["report"]).with_name("metrics.json")
    return json.loads(metrics.read_text())["n"] if metrics.is_file() else None


def environment() -> dict:
    """What makes float results differ between machines: libraries, threads, CPU kernel level."""
    import torch

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_avg_at_start": os.getloadavg(), "versions": versions}


def aggregate(rows: list[dict]) -> dict:
    """Mean, min, max and max - min of each metric over the seeds."""
    out = {}
    for key in (*METRICS, "wall_s"):
        values = [r[key] for r in rows]
        out[key] = {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
                    "max": max(values), "spread": max(values) - min(values)}
    return out


def table(rows: list[dict], agg: dict) -> str:
    lines = ["| training seed | test top-1 (95 % CI, patients) | top-2 | macro-F1 | wall |", "|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["test_top1_ci95"]["low"], r["test_top1_ci95"]["high"]
        lines.append(f"| {r['train_seed']} | {r['test_top1']:.3f} ({lo:.3f}-{hi:.3f}) | {r['test_top2']:.3f} "
                     f"| {r['test_f1_macro']:.3f} | {r['wall_s']:.0f} s |")
    cells = [f"{agg[k]['mean']:.3f} ({agg[k]['min']:.3f}-{agg[k]['max']:.3f})" for k in METRICS]
    lines.append(f"| mean (min-max) | {cells[0]} | {cells[1]} | {cells[2]} | {agg['wall_s']['mean']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (0 is make demo's run)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic set (make demo: 0)")
    ap.add_argument("--max-epochs", type=int, default=None, help="override the demo preset's epochs (smoke runs only)")
    ap.add_argument("--out", type=Path, default=Path("runs/demo_seeds"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/demo_seeds.json"))
    args = ap.parse_args()

    env = environment()
    rows = [run_one(args.out / f"seed-{s}", args.data_seed, s, args.max_epochs) for s in range(args.seeds)]
    agg = aggregate(rows)
    result = {"command": "python benchmarks/demo_seeds.py " + " ".join(sys.argv[1:]), "synthetic": True,
              "data_seed": args.data_seed, "max_epochs": args.max_epochs, "environment": env,
              "runs": rows, "summary": agg}
    from _provenance import stamp

    from fetalplanes.core import atomic

    # the demo runs in child processes with the default torch threads, the count recorded here
    atomic.write_json(args.json, stamp(result, ["benchmarks/demo_seeds.py"]))
    print(table(rows, agg))
    print(f"spread (max - min) over {len(rows)} training seeds: top-1 {agg['test_top1']['spread']:.3f}, "
          f"macro-F1 {agg['test_f1_macro']['spread']:.3f}; JSON: {args.json}")


if __name__ == "__main__":
    main()
