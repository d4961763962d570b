"""Model cards: a Hugging Face-style ``MODEL_CARD.md`` written next to a trained checkpoint.

The card is built only from what the run recorded: the checkpoint's ModelSpec (architecture,
preprocessing, data and split summary, temperature, abstain threshold), the evaluation
``metrics.json`` (with bootstrap intervals, per-class and per-machine results) and, when
present, ``calibration.json`` and the cost measurements of ``reproduce``. It states the
intended use and limits, and that the model is not a medical device.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fetalplanes.core import atomic
from fetalplanes.core.hashing import file_sha256
from fetalplanes.core.errors import DataError
from fetalplanes.runtime.artifact import read_spec

if TYPE_CHECKING:
    from fetalplanes.core.spec import ModelSpec

log = logging.getLogger(__name__)

CARD_NAME = "MODEL_CARD.md"
PAPER = "Sivasubramanian et al. 2024, arXiv:2410.17396"
DATASET_PAPER = "Burgos-Artizzu et al., Sci. Rep. 10, 10200 (2020); Zenodo record 3904280 (CC BY 4.0)"


def is_synthetic(root: str | Path | None) -> bool:
    """True for the phantom sets written by ``fetalplanes.data.synth`` (they leave markers)."""
    if not root:
        return False
    root = Path(root)
    return (root / "SYNTHETIC.md").is_file() or (root / "synth_manifest.json").is_file()


def _fmt(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and v == v else "n/a"


REQUIRED_METRICS = ("top1", "top2", "f1_macro", "f1_weighted", "per_class", "n")


def evaluation_title(metrics: dict[str, Any]) -> tuple[str, str]:
    """(section title, front-matter split name) for the metrics' own selection: only an unseen
    test split of this model is called "test"; anything else says what it is."""
    sel = metrics.get("selection") or {}
    split, seen = sel.get("split", metrics.get("split")), sel.get("seen_in_training_or_validation")
    if split == "test" and seen == 0:
        return "Evaluation (test split, none of its images seen in training or validation)", "test"
    if split == "test":
        return "Evaluation (test split; whether the model saw these images is unknown: no training record)", "test"
    what = f"{seen} of {sel.get('n_scored', metrics.get('n', '?'))} images seen in training or validation" \
        if seen else "not a held-out test split"
    return f"Evaluation (split `{split}`: {what}; NOT a held-out test result)", str(split)


def check_metrics(metrics: dict[str, Any], source: str, model_sha256: str | None) -> None:
    """Raise ``DataError`` (one line naming ``source``) when the metrics lack a field the card
    reads, or were computed with another model file than the one the card describes."""
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise DataError(f"{source}: field(s) {missing} missing; expected the metrics.json of `fetalplanes evaluate` "
                        f"(fields {list(REQUIRED_METRICS)})")
    theirs = metrics.get("model_sha256")
    if model_sha256 is not None and theirs is not None and theirs != model_sha256:
        raise DataError(f"{source}: computed with another model file (sha256 {theirs[:12]}..., from "
                        f"{metrics.get('checkpoint', '?')}), not this one ({model_sha256[:12]}...); re-run "
                        "`fetalplanes evaluate` with this model")


def _front_matter(spec: ModelSpec, metrics: dict[str, Any], synthetic: bool, split: dict[str, Any]) -> str:
    dataset = "synthetic FETAL_PLANES_DB-format phantoms" if synthetic else "FETAL_PLANES_DB"
    arch = spec.architecture
    results = [
        {"type": "accuracy", "name": "Top-1 accuracy", "value": round(float(metrics["top1"]), 4)},
        {"type": "top_k_accuracy", "name": "Top-2 accuracy", "value": round(float(metrics["top2"]), 4), "args": {"k": 2}},
        {"type": "f1", "name": "Macro F1", "value": round(float(metrics["f1_macro"]), 4), "args": {"average": "macro"}},
        {"type": "f1", "name": "Weighted F1", "value": round(float(metrics["f1_weighted"]), 4),
         "args": {"average": "weighted"}},
    ]
    meta = {
        "license": "apache-2.0",
        "library_name": "fetalplanes",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "medical-imaging", "ultrasound", "obstetrics", "fetal-ultrasound", "pytorch",
                 "timm", str(arch.get("backbone", "")), f"attention-{arch.get('attention', 'none')}"]
                + (["synthetic-data"] if synthetic else []),
        "datasets": [dataset],
        "metrics": ["accuracy", "top_k_accuracy", "f1"],
        "model-index": [{
            "name": spec.name,
            "results": [{
                "task": {"type": "image-classification", "name": f"Fetal ultrasound {spec.task} classification"},
                "dataset": {"name": dataset, "type": "fetal_planes_db", "split": f"{split.get('scheme', '?')}/{evaluation_title(metrics)[1]}"},
                "metrics": results,
            }],
        }],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _metric_lines(m: dict[str, Any]) -> list[str]:
    ci = m.get("ci95", {})

    def with_ci(key: str) -> str:
        c = ci.get(key)
        return f"{_fmt(m[key])} (95 % CI {_fmt(c['low'])}-{_fmt(c['high'])})" if c else _fmt(m[key])

    if ci.get("status"):  # metrics.json written since the small-sample guard: says how, or why none
        from fetalplanes.evaluation.report import interval_text

        unit = interval_text(ci)
    else:
        unit = f"{ci.get('n_boot', '?')} bootstrap resamples of {ci.get('n_units', '?')} {ci.get('unit', '?')}s" if ci else "none"
    return [
        f"| Top-1 accuracy | {with_ci('top1')} |",
        f"| Top-2 accuracy | {_fmt(m['top2'])} |",
        f"| Macro F1 | {with_ci('f1_macro')} |",
        f"| Weighted F1 | {_fmt(m['f1_weighted'])} |",
        f"| Test images | {m.get('n', '?')} |",
        "",
        f"Intervals: {unit}.",
    ]


def _per_class(m: dict[str, Any]) -> list[str]:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, v in m.get("per_class", {}).items():
        lines.append(f"| {c} | {_fmt(v['precision'], 3)} | {_fmt(v['recall'], 3)} | {_fmt(v['f1'], 3)} | {v['support']} |")
    return lines


def _breakdowns(m: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for col, groups in m.get("breakdown", {}).items():
        lines += ["", f"**By {col}**", "", "| value | n | top-1 | macro-F1 |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {_fmt(v['top1'], 3)} | {_fmt(v['f1_macro'], 3)} |" for k, v in groups.items()]
    return lines or ["", "No per-machine / per-operator columns in this data source."]


def _calibration(spec: ModelSpec, cal: dict[str, Any] | None) -> list[str]:
    lines = [f"- Temperature stored in the model: **{spec.temperature:.4f}**; abstain threshold on calibrated "
             f"confidence: **{spec.abstain_threshold:.4f}** (predictions below it are flagged, not hidden)."]
    if not cal:
        return lines + ["- No calibration record found (run `fetalplanes calibrate`)."]
    for part in ("val", "test"):
        s = cal.get(part)
        if s:
            lines.append(f"- {part}: n = {s['n']}, ECE {_fmt(s['ece_before'])} -> {_fmt(s['ece_after'])}, "
                         f"NLL {_fmt(s['nll_before'])} -> {_fmt(s['nll_after'])}, coverage at threshold "
                         f"{_fmt(s['coverage_at_threshold'], 3)} with accuracy {_fmt(s['accuracy_retained'], 3)}")
    if cal.get("temperature_note"):
        lines.append(f"- Temperature: {cal['temperature_note']}.")
    rule = cal.get("abstain_rule", {})
    lines.append(f"- Threshold rule: `{rule.get('rule')}` (target accuracy {rule.get('target_accuracy')}, "
                 f"min coverage {rule.get('min_coverage')}, target reached: {rule.get('target_reached')}); "
                 "T and the threshold were fit on the validation split.")
    return lines


def _ood(spec: ModelSpec, metrics: dict[str, Any]) -> list[str]:
    """The out-of-distribution gate: what it is, where its threshold came from, and which OOD sets it
    was measured on (``metrics["ood"]`` from ``evaluate --ood-data``)."""
    if not spec.has_ood_gate:
        return ["- **No out-of-distribution gate** in this model file: every input gets one of the planes (or an "
                "abstain). Re-calibrate it with a current fetalplanes to add one."]
    g = spec.ood
    lines = [f"- Gate: `{g.get('score')}` score on {g.get('dim')}-d {g.get('feature', 'features')}; statistics fit on "
             f"the {g.get('fit_on')} split (n = {g.get('n_train')}; Ledoit-Wolf shrinkage {_fmt(g.get('shrinkage'), 3)}), "
             f"threshold **{_fmt(g.get('threshold'))}** set on the {g.get('threshold_on')} split (n = {g.get('n_val')}) "
             f"at {_fmt(100 * float(g.get('acceptance', 0)), 3)} % in-distribution acceptance "
             f"(reached {_fmt(100 * float(g.get('val_acceptance', 0)), 3)} %).",
             "- An input above the threshold is answered `out_of_distribution` (\"not a fetal plane\"), before the "
             "abstain rule; DICOM files are also checked for Modality / SOP class and cropped to the B-mode tissue "
             "region before the network (`core.us_regions`)."]
    measured = metrics.get("ood")
    if not measured:
        return lines + ["- **Not measured on any OOD set** for this card: run `fetalplanes evaluate --ood-data FOLDER`."]
    lines += ["", "| OOD set | n | AUROC [95% CI] | FPR@95 [95% CI] | rejected at the threshold | ID rejected |",
              "|---|---|---|---|---|---|"]
    for name, m in measured.get("sets", {}).items():
        ci = lambda k: f" [{_fmt(m[k][0], 3)}, {_fmt(m[k][1], 3)}]" if m.get(k) else ""  # noqa: E731
        lines.append(f"| {name} | {m['n_ood']} | {_fmt(m['auroc'], 3)}{ci('auroc_ci95')} | {_fmt(m['fpr95'], 3)}"
                     f"{ci('fpr95_ci95')} | {_fmt(m.get('ood_rejected'), 3)}{ci('ood_rejected_ci95')} | "
                     f"{_fmt(m.get('id_rejected'), 3)}{ci('id_rejected_ci95')} |")
    return lines


def _options(arch: dict[str, Any]) -> str:
    """`` (spatial_padding `replicate`, spatial_norm `batch`)``: the attention block's options, which
    tell apart models of one block trained with different defaults (e.g. CBAM before spec 1.3)."""
    kwargs = arch.get("attention_kwargs") or {}
    return f" ({', '.join(f'{k} `{v}`' for k, v in kwargs.items())})" if kwargs else ""


def render_card(spec: ModelSpec, metrics: dict[str, Any], calibration: dict[str, Any] | None = None,
                costs: dict[str, Any] | None = None, notes: list[str] | None = None) -> str:
    """The Markdown text of a model card (front matter + sections)."""
    data = spec.training.get("data", {})
    split = spec.training.get("splits", {})
    synthetic = is_synthetic(data.get("root"))
    arch, pre = spec.architecture, spec.preprocessing
    head = "linear" if not arch.get("head_hidden") else f"MLP {arch.get('head_hidden')}"
    lines = [_front_matter(spec, metrics, synthetic, split), f"# {spec.name}: fetal ultrasound {spec.task} classifier", ""]
    if synthetic:
        lines += ["> **Trained and evaluated on SYNTHETIC phantom images.** These numbers test the software only and",
                  "> say nothing about performance on real ultrasound.", ""]
    if split.get("leaky"):
        lines += [f"> **LEAKY split ({split.get('scheme')})**: images of the same patient are in both training and",
                  "> test sets, so these numbers overstate accuracy on new patients. Use an `official` or",
                  "> `patient-kfold` model for any claim.", ""]
    lines += [
        "## Model details",
        "",
        f"- Architecture: `{arch.get('backbone')}` backbone -> `{arch.get('attention')}` attention{_options(arch)} "
        f"-> global average pooling -> {head} head (dropout {arch.get('dropout')}); backbone fine-tuning: "
        f"`{arch.get('finetune')}`; initialisation: `{arch.get('pretrained')}`.",
        f"- Classes ({spec.num_classes}, output order): {', '.join(spec.class_names)}.",
        f"- Input: {pre.image_size}x{pre.image_size} grayscale replicated to 3 channels, resize `{pre.resize}`, "
        f"mean {list(pre.mean)}, std {list(pre.std)} (`fetalplanes.core.preprocess`).",
        f"- Package version {spec.version}; follows {PAPER}.",
    ]
    if costs:
        lines.append(f"- Parameters: {costs.get('params_total', 0):,} total, {costs.get('params_trainable', 0):,} "
                     f"trainable; {_fmt(costs.get('gflops'), 3)} GFLOPs at {costs.get('image_size')} px; CPU latency "
                     f"{_fmt(costs.get('cpu_latency_ms'), 1)} ms (batch 1, {costs.get('threads')} threads, median).")
    lines += [
        "",
        "## Intended use",
        "",
        "Research and education: sorting or pre-labelling maternal-fetal ultrasound frames into standard planes, "
        "studying attention models, and benchmarking. Outputs are suggestions for a trained sonographer to review.",
        "",
        "**Not a medical device.** Not cleared or approved by any regulator, not validated prospectively, and not for "
        "diagnosis, screening decisions or any clinical use without a qualified professional's review.",
        "",
        "## Training data",
        "",
        f"- Source: {'SYNTHETIC phantoms (fetalplanes.data.synth)' if synthetic else DATASET_PAPER}; "
        f"`{data.get('kind', '?')}` at `{data.get('root', '?')}`.",
        f"- {data.get('n_images', '?')} images, {data.get('n_patients') or 'unknown'} patients; class counts "
        f"{data.get('class_counts', {})}.",
        f"- Split `{split.get('scheme', '?')}`{' (LEAKY)' if split.get('leaky') else ''}: "
        f"train {split.get('train', {}).get('images', '?')}, val {split.get('val', {}).get('images', '?')}, "
        f"test {split.get('test', {}).get('images', '?')} images; seed {split.get('seed', spec.training.get('seed'))}.",
        "",
        f"## {evaluation_title(metrics)[0]}",
        "",
        *([f"Scored images: {metrics['selection']['statement']}.", ""] if metrics.get("selection") else []),
        "| metric | value |",
        "|---|---|",
        *_metric_lines(metrics),
        "",
        "### Per class",
        "",
        *_per_class(metrics),
        "",
        "### Per machine and operator",
        *_breakdowns(metrics),
        "",
        "## Calibration",
        "",
        *_calibration(spec, calibration),
        "",
        "## Out-of-distribution inputs",
        "",
        *_ood(spec, metrics),
        "",
        "## Limitations",
        "",
        "- One hospital network's data (two Barcelona centres), a few scanner makes and operators: expect lower "
        "accuracy on other machines, populations and acquisition protocols; check the per-machine table.",
        "- Single frames only; no video context. Unusual or non-standard planes fall into `Other` or get low confidence.",
        "- Test metrics come from one split; intervals cover test-sample variability, not training variability.",
        "- Grayscale input assumption; colour Doppler overlays are out of distribution.",
        *(f"- {n}" for n in (notes or [])),
        "",
        "## How to use",
        "",
        "```bash",
        "fetalplanes predict IMAGE.png --checkpoint best.ckpt",
        "fetalplanes evaluate --checkpoint best.ckpt --data FETAL_PLANES_DB --out eval/",
        "```",
        "",
        "## Citation",
        "",
        f"- Model: {PAPER}.",
        f"- Data: {DATASET_PAPER}.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(checkpoint: str | Path, metrics: dict[str, Any] | str | Path,
                     calibration: dict[str, Any] | str | Path | None = None, costs: dict[str, Any] | None = None,
                     out: str | Path | None = None, notes: list[str] | None = None) -> Path:
    """Write ``MODEL_CARD.md`` next to ``checkpoint`` (or to ``out``); returns its path.

    ``metrics`` / ``calibration`` may be dicts or JSON files; without ``calibration`` a
    ``calibration.json`` in the run directory (the checkpoint's grandparent) is used if present.
    """
    checkpoint = Path(checkpoint)
    spec = read_spec(checkpoint)
    source = "metrics" if isinstance(metrics, dict) else str(metrics)
    metrics = _load_json(metrics, "metrics")
    check_metrics(metrics, source, file_sha256(checkpoint))
    if calibration is None:
        found = checkpoint.resolve().parent.parent / "calibration.json"
        calibration = found if found.is_file() else None
    cal = _load_json(calibration, "calibration") if calibration is not None else None
    path = Path(out) if out is not None else checkpoint.parent / CARD_NAME
    atomic.write_text(path, render_card(spec, metrics, cal, costs, notes))
    log.info("model card written to %s", path)
    return path


def _load_json(obj: dict[str, Any] | str | Path, what: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    path = Path(obj)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
