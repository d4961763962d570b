"""``evaluate``: checkpoint + data -> metrics.json, predictions.csv, confusion_matrix.png, report.md."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fetalplanes.core import atomic
from fetalplanes.core.errors import DataError
from fetalplanes.core.postprocess import softmax, top1
from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.records import Sample
from fetalplanes.core.hashing import file_sha256
from fetalplanes.data.sources import load_source
from fetalplanes.data.splits import choose_split, selection_lines
from fetalplanes.evaluation.metrics import evaluate_arrays, fmt, missing_ids
from fetalplanes.evaluation.predict import open_model, score_samples

log = logging.getLogger(__name__)

# Subgroups reported when every sample has the column: FETAL_PLANES_DB's machine and operator;
# Center for multi-centre sets such as the African fetal-planes data (Sendra-Balcells et al. 2023).
BREAKDOWN_COLUMNS = ("US_Machine", "Operator", "Center", "us_machine", "operator", "center")


def confusion_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=35, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def predictions_csv(samples: Sequence[Sample], probs: np.ndarray, class_names: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "patient", "true", "predicted", "confidence", *class_names])
    for s, p, k in zip(samples, probs, top1(probs)):
        true = class_names[s.label] if s.label >= 0 else ""
        w.writerow([s.path.name, s.patient or "", true, class_names[int(k)], f"{p.max():.4f}", *(f"{v:.4f}" for v in p)])
    return buf.getvalue()


def ci_text(m: dict[str, Any], key: str, digits: int = 4) -> str:
    """``0.9583 (95 % CI 0.9290-0.9840)``, or ``(95 % CI n/a)`` when no interval was computed."""
    ci = m.get("ci95", {})
    c = ci.get(key)
    level = f"{100 * ci.get('level', 0.95):g} %"
    if not c:
        return f"{fmt(m.get(key), digits)} ({level} CI n/a)"
    return f"{fmt(m.get(key), digits)} ({level} CI {fmt(c['low'], digits)}-{fmt(c['high'], digits)})"


def interval_text(ci: dict[str, Any]) -> str:
    """How the intervals were made: method, resamples, unit and number of clusters, or why none."""
    units = f"{ci['n_units']} {ci['unit']}s"
    if ci.get("status") != "ok":
        return f"none: {ci.get('note', ci.get('status'))} ({units})"
    how = ("clusters: all images of a patient move together" if ci["unit"] == "patient" else
           "images resampled as if independent: too narrow when a patient has several images")
    return f"{ci['method']} bootstrap, {ci['n_boot']} resamples of {units} ({how})"


def render_report(m: dict[str, Any], spec: ModelSpec) -> str:
    """report.md: point metrics with intervals (n/a where undefined), per class, per subgroup."""
    ci = m["ci95"]
    lines = [
        f"# Evaluation of `{spec.name}` ({spec.task})",
        "",
        f"- data: `{m['data']}` ({m['data_kind']}), split **{m['split']}**, n = {m['n']} images, "
        f"{ci['n_units']} {ci['unit']}s",
        *(selection_lines(m["selection"]) if m.get("selection") else []),
        f"- top-1: {ci_text(m, 'top1')}",
        f"- top-2: {fmt(m['top2'])}",
        f"- macro-F1: {ci_text(m, 'f1_macro')}; averaged over the {m['n_classes_present']} {m['macro_over']}",
        f"- weighted-F1: {fmt(m['f1_weighted'])}",
        f"- intervals: {interval_text(ci)}",
        "- n/a: undefined (0/0), e.g. the precision of a class that was never predicted",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {fmt(v['precision'], 3)} | {fmt(v['recall'], 3)} | {fmt(v['f1'], 3)} | {v['support']} |")
    for col, groups in m.get("breakdown", {}).items():
        lines += ["", f"## By {col}", "", "macro-F1 over the classes present in each row (no intervals).", "",
                  "| value | n | classes present | top-1 | macro-F1 |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['n_classes_present']} | {fmt(v['top1'], 3)} | {fmt(v['f1_macro'], 3)} |"
                  for k, v in groups.items()]
    lines += input_section(m)
    if m.get("ood"):
        from fetalplanes.evaluation.ood import report_lines

        lines += report_lines(m["ood"])
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def input_section(m: dict[str, Any]) -> list[str]:
    """report.md lines on what was read: the data's notes (e.g. classes absent from the source)
    and the unreadable files left out with ``--skip-bad`` (file and reason, all of them)."""
    notes, skipped, absent = m.get("data_notes") or [], m.get("skipped") or [], m.get("classes_absent") or []
    if not notes and not skipped and not absent:
        return []
    lines = ["", "## Input", ""] + [f"- {note}" for note in notes]
    if absent:
        lines.append(f"- classes of the model absent from the scored images (support 0): {', '.join(absent)}")
    if skipped:
        total = m["n"] + len(skipped)
        lines += [f"- **{len(skipped)} of {total} image file(s) could not be read and were left out** "
                  f"(`--skip-bad`); the metrics above are on the other {m['n']}:", ""]
        lines += ["| file | reason |", "|---|---|"]
        lines += [f"| `{s['image']}` | {s['error'].replace('|', '/')} |" for s in skipped]
    return lines


def write_report(out_dir: str | Path, m: dict[str, Any], spec: ModelSpec, samples: Sequence[Sample],
                 probs: np.ndarray, split: str) -> None:
    """All report files, rendered first and then written as one folder (``core.atomic.atomic_dir``)."""
    files = {
        "predictions.csv": predictions_csv(samples, probs, spec.class_names).encode("utf-8"),
        "confusion_matrix.png": confusion_png(m["confusion_matrix"], spec.class_names, f"{spec.name} - {split}"),
        "report.md": render_report(m, spec).encode("utf-8"),
    }
    with atomic.atomic_dir(out_dir) as tmp:
        atomic.write_json(tmp / "metrics.json", m)
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def _require_patient_ids(data: str | Path, samples: Sequence[Any]) -> None:
    """The patient bootstrap needs every image's patient: the first image without one is named by file."""
    missing = missing_ids([s.patient for s in samples])
    if missing:
        raise DataError(f"{data}: {len(missing)} of {len(samples)} image(s) have no patient id "
                        f"(first: {samples[missing[0]].path}); "
                        "the patient bootstrap needs one per image, or ask for image-level intervals with --unit image")


def evaluate(model: str | Path | Any, data: str | Path, out_dir: str | Path, split: str = "test",
             batch_size: int = 32, n_boot: int = 1000, unit: str = "patient", skip_bad: bool = False,
             ood_data: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Evaluate a model file (``.ckpt`` or ``.onnx``) or a loaded Predictor on one split of a
    dataset; writes metrics.json, predictions.csv, confusion_matrix.png and report.md as one folder.

    ``unit``: what the bootstrap resamples, ``"patient"`` (every image needs a patient id) or
    ``"image"`` (asked for explicitly). Raises ``DataError`` for an empty split or missing ids.

    Which images are scored: ``data.splits.choose_split`` (the model's own record of its
    train/val/test images, the data's split column, or an external set the model never saw);
    'test' refuses data holding images the model was trained or validated on (``DataError``),
    'all' scores them and says how many. metrics.json ``selection`` and report.md say which.

    Unreadable images are all listed at once (``BadFilesError``); with ``skip_bad`` they are left
    out and named in metrics.json (``skipped``) and report.md.

    ``ood_data``: folders of out-of-distribution images; the model's OOD gate is measured on them
    against this split (``evaluation.ood.ood_report``: AUROC, FPR@95, rejection rates with
    intervals) into metrics.json ``ood`` and report.md (the model card reads it).
    """
    predictor = open_model(model)
    spec = predictor.spec
    index = load_source(data, spec.task, spec.class_names)
    selection = choose_split(index, spec, split)
    samples = selection.samples
    if not samples:
        raise DataError(f"{data}: split {split!r} is empty")
    samples, logits, skipped = score_samples(predictor, samples, batch_size, skip_bad)
    if not samples:
        raise DataError(f"{data}: none of the {len(skipped)} image(s) of split {split!r} could be read")
    selection.keep(samples)  # counts and statements are of the images actually scored
    if unit == "patient":  # after the unreadable files are listed, before any interval is drawn
        _require_patient_ids(data, samples)
    probs = softmax(logits, spec.temperature)
    y = np.array([s.label for s in samples])
    meta = {c: [s.meta[c] for s in samples] for c in BREAKDOWN_COLUMNS if all(c in s.meta for s in samples)}
    patients = [s.patient for s in samples]
    m = evaluate_arrays(y, probs, spec.class_names, patients, meta, n_boot, unit=unit)
    m.update(split=split, data=str(data), data_kind=index.kind, checkpoint=str(predictor.path),
             model_kind=predictor.kind, model=spec.name, model_sha256=file_sha256(predictor.path),
             temperature=spec.temperature,
             class_names=list(spec.class_names), data_notes=list(index.notes), n_skipped=len(skipped),
             skipped=skipped, classes_absent=[c for c, v in m["per_class"].items() if v["support"] == 0],
             selection=selection.summary())
    if ood_data:
        from fetalplanes.evaluation.ood import ood_report

        m["ood"] = ood_report(predictor, [s.path for s in samples], ood_data, n_boot, batch_size)
    write_report(out_dir, m, spec, samples, probs, split)
    return m
