"""Aggregate finished runs into ``results.csv`` and ``results.md``.

One row per (task, split, variant, initialisation), over its seeds. Each metric is given as
``mean ± std [95 % interval]``:

- with two or more seeds, the interval is a Student-t interval of the mean over seeds
  (mean ± t(0.975, n-1) * std / sqrt(n), clipped to [0, 1]). It captures training variability (initialisation,
  data order, validation carve and, for image-8020, the test draw); with few seeds it is wide,
  honestly so.
- with one seed the std over seeds is undefined and printed as ``± n/a`` (NaN in the CSV); the
  interval is then that run's patient-level bootstrap interval (test-sample variability), and
  only for top-1 and macro-F1, the metrics ``evaluate`` bootstraps (none when ``evaluate`` gave
  none, e.g. fewer than 10 patients).

``results.csv`` also keeps the mean per-run bootstrap bounds (``*_boot_low/high``) of top-1 and
macro-F1, so both kinds of uncertainty are available. Rows on the image-level split are
flagged LEAKY: patients are shared between training and test images there.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from fetalplanes.core import atomic
from fetalplanes.data.splits import SCHEMES
from fetalplanes.evaluation.model_card import is_synthetic

METRICS = ("top1", "top2", "f1_macro", "f1_weighted")
BOOTSTRAPPED = ("top1", "f1_macro")
PAPER_REFERENCE = {"top1": 0.9625, "top2": 0.9980, "f1_macro": 0.9576}
LEAKY_FLAG = "LEAKY"


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean (None for fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t

    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    # The metrics are proportions: an interval beyond [0, 1] says nothing more than [0, 1].
    return max(0.0, mean - half), min(1.0, mean + half)


def _metric(out: Path, rec: dict[str, Any]) -> dict[str, Any]:
    # The per-run metrics.json is the source of truth; done.json keeps a copy for convenience.
    path = out / rec.get("metrics_path", "")
    if rec.get("metrics_path") and path.is_file():
        return json.loads(path.read_text())
    return rec["metrics"]


def aggregate(out: Path, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per (task, split, variant, pretrained) with mean/std/interval columns."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["split"], r["variant"], r["pretrained"]), []).append(r)
    variant_order = {v: i for i, v in enumerate(dict.fromkeys(r["variant"] for r in records))}
    rows = []
    for (task, split, variant, pretrained), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        first, ms = runs[0], [_metric(out, r) for r in runs]
        row: dict[str, Any] = {
            "task": task, "split": split, "leaky": bool(first["leaky"]), "variant": variant,
            "backbone": first["backbone"], "attention": first["attention"], "head": first["head"],
            "finetune": first["finetune"], "pretrained": pretrained, "train_path": first["train_path"],
            "image_size": first["image_size"], "max_epochs": first["max_epochs"],
            "seeds": len(runs), "seed_list": " ".join(str(r["seed"]) for r in runs), "n_test": ms[0].get("n"),
            # what the per-run bootstrap resampled: unit, number of clusters, resamples
            "boot_unit": (ms[0].get("ci95") or {}).get("unit"), "boot_n_units": (ms[0].get("ci95") or {}).get("n_units"),
            "boot_n_boot": (ms[0].get("ci95") or {}).get("n_boot"),
        }
        for key in METRICS:
            vals = [float(m[key]) for m in ms]
            row[f"{key}_mean"] = statistics.fmean(vals)
            row[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            ci = t_interval(vals)
            boots = [m["ci95"][key] for m in ms if key in BOOTSTRAPPED and (m.get("ci95") or {}).get(key)]
            if ci is None and len(ms) == 1 and boots:
                ci, row[f"{key}_ci_kind"] = (boots[0]["low"], boots[0]["high"]), "bootstrap"
            else:
                row[f"{key}_ci_kind"] = "t" if ci else "none"
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = ci if ci else (float("nan"), float("nan"))
            if key in BOOTSTRAPPED:
                row[f"{key}_boot_low"] = statistics.fmean(b["low"] for b in boots) if boots else float("nan")
                row[f"{key}_boot_high"] = statistics.fmean(b["high"] for b in boots) if boots else float("nan")
        cal = [r.get("calibration", {}) for r in runs]
        for key in ("temperature", "test_ece_before", "test_ece_after"):
            vals = [c[key] for c in cal if c.get(key) is not None]
            row[key] = statistics.fmean(vals) if vals else float("nan")
        c = first["costs"]
        row.update(params_total=c["params_total"], params_trainable=c["params_trainable"], gflops=c["gflops"],
                   cpu_latency_ms=c["cpu_latency_ms"], latency_threads=c.get("threads"),
                   train_wall_s_mean=statistics.fmean(float(r.get("train_wall_s") or 0.0) for r in runs),
                   shared_device=sum(bool(r.get("shared_device")) for r in runs),
                   concurrent_jobs=max(int(r.get("concurrent_jobs") or 1) for r in runs))
        rows.append(row)
    split_order = {s: i for i, s in enumerate(SCHEMES)}
    task_order = {"planes": 0, "brain": 1}
    rows.sort(key=lambda r: (task_order.get(r["task"], 9), split_order.get(r["split"], 9),
                             variant_order[r["variant"]], r["pretrained"]))
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _cell(row: dict[str, Any], key: str) -> str:
    mean, sd = row[f"{key}_mean"], row[f"{key}_std"]
    lo, hi = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo == lo else ""
    mark = "ᵇ" if row.get(f"{key}_ci_kind") == "bootstrap" else ""
    spread = f"{sd:.4f}" if sd == sd else "n/a"  # one seed: no spread over seeds
    return f"{mean:.4f} ± {spread}{ci}{mark}"


def _boot_legend(rows: Sequence[dict[str, Any]]) -> str:
    """'1000 resamples of 24 patients' per distinct setting; unit and clusters travel with every interval."""
    kinds = sorted({f"{r.get('boot_n_boot')} resamples of {r.get('boot_n_units')} {r.get('boot_unit')}s"
                    for r in rows if r.get("boot_unit")})
    return "; ".join(kinds) or "none"


def _split_cell(row: dict[str, Any]) -> str:
    return f"{row['split']} **{LEAKY_FLAG}**" if row["leaky"] else row["split"]


def leakage_effect(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Top-1 on the leaky split minus top-1 on each honest split, per variant."""
    lines = []
    honest = {(r["task"], r["variant"], r["pretrained"], r["split"]): r for r in rows if not r["leaky"]}
    for r in rows:
        if not r["leaky"]:
            continue
        for (task, variant, pre, split), h in honest.items():
            if (task, variant, pre) == (r["task"], r["variant"], r["pretrained"]):
                d = r["top1_mean"] - h["top1_mean"]
                lines.append(f"- `{variant}` ({task}): top-1 {r['top1_mean']:.4f} on {r['split']} vs "
                             f"{h['top1_mean']:.4f} on {split}: {d:+.4f}")
    return lines


def to_markdown(rows: Sequence[dict[str, Any]], info: dict[str, Any]) -> str:
    head = ["variant", "backbone", "attention", "head", "finetune", "pretrained", "split", "task", "seeds",
            "top-1", "top-2", "macro-F1", "weighted-F1", "ECE test (T=1 → cal.)", "T",
            "params total / trainable", "GFLOPs", "CPU ms (1 thread)"]
    lines = [f"# Results: {info.get('title', 'fetalplanes reproduce')}", ""]
    if info.get("synthetic"):
        lines += ["> **SYNTHETIC phantom data.** This table checks the pipeline; it says nothing about real "
                  "ultrasound performance.", ""]
    lines += [f"- data: `{info.get('data')}`; base config `{info.get('base_config')}`; input "
              f"{info.get('image_sizes')} px; max epochs {info.get('max_epochs')}; bootstrap resamples "
              f"{info.get('n_boot')}; written {info.get('written')}",
              "- cells: mean ± std over seeds [95 % t-interval of the mean over seeds]; ᵇ = one seed (std n/a), "
              "so the run's bootstrap interval instead (" + _boot_legend(rows) + ").",
              f"- rows marked **{LEAKY_FLAG}** use the image-level 80:20 split (patients shared between "
              "train and test): they reproduce the paper's likely protocol and overstate accuracy on new patients.",
              "- GFLOPs: torch.utils.flop_counter at the trained input size, 2 FLOPs per multiply-add. CPU ms: "
              "batch 1, torch eager, 1 intra-op thread, median, on the machine that ran the grid (indicative).",
              "- pretrained: the weights actually used; 'random init' rows could not load ImageNet weights here.",
              "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ece = f"{r['test_ece_before']:.3f} → {r['test_ece_after']:.3f}" if r["test_ece_before"] == r["test_ece_before"] else "n/a"
        cells = [f"`{r['variant']}`", r["backbone"], r["attention"], r["head"],
                 r["finetune"] + (" (cached features)" if r["train_path"] == "feature-cache" else ""),
                 r["pretrained"], _split_cell(r), r["task"], str(r["seeds"]),
                 _cell(r, "top1"), _cell(r, "top2"), _cell(r, "f1_macro"), _cell(r, "f1_weighted"), ece,
                 f"{r['temperature']:.2f}", f"{r['params_total'] / 1e6:.2f} M / {r['params_trainable'] / 1e6:.2f} M",
                 f"{r['gflops']:.3f}", f"{r['cpu_latency_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    shared = [f"`{r['variant']}` ({r['task']}, {r['split']}): {r['shared_device']} of {r['seeds']} run(s), "
              f"--jobs {r['concurrent_jobs']}" for r in rows if r.get("shared_device")]
    if shared:
        lines += ["", "## Runs that shared a GPU (trained beside other runs: their wall times are not a run alone)",
                  "", *(f"- {line}" for line in shared)]
    effect = leakage_effect(rows)
    if effect:
        lines += ["", "## Leakage effect (same variant, leaky minus honest split)", "", *effect]
    p = PAPER_REFERENCE
    lines += ["", "## Paper reference", "",
              f"Sivasubramanian et al. 2024 (arXiv 2410.17396) report top-1 {p['top1']:.4f}, top-2 {p['top2']:.4f}, "
              f"F1 {p['f1_macro']:.4f}, most likely on an image-level 80:20 split: compare them with the "
              f"{LEAKY_FLAG} rows, and read the honest rows as the expected accuracy on new patients.", ""]
    return "\n".join(lines)


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every finished run's ``done.json`` record under ``out`` (``runs/<task>/<split>/<variant>/seed<k>/``)."""
    return [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*/*/*/seed*/done.json"))]


def write_tables(out: Path) -> dict[str, Path]:
    """Aggregate every finished run under ``out`` and write ``results.csv`` / ``results.md``."""
    records = load_records(out)  # every finished run in the folder (settings are shared: grid.json)
    rows = aggregate(out, records)
    grid = json.loads((out / "grid.json").read_text()).get("fingerprint", {}) if (out / "grid.json").is_file() else {}
    info = {
        "data": grid.get("data"), "n_boot": grid.get("n_boot"),
        "base_config": grid.get("base_config") or "each variant's preset",
        "synthetic": is_synthetic(grid.get("data")),
        "image_sizes": ", ".join(sorted({str(r["image_size"]) for r in rows})) or "?",
        "max_epochs": ", ".join(sorted({str(r["max_epochs"]) for r in rows})) or "?",
        "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    csv_path = atomic.write_text(out / "results.csv", to_csv(rows))
    md_path = atomic.write_text(out / "results.md", to_markdown(rows, info))
    return {"results_csv": csv_path, "results_md": md_path}
