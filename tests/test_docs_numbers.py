"""The numbers in README.md and docs/ are the numbers their commands wrote.

Every measured table in the docs sits beside the command that produced it, and that command
writes a JSON file under ``benchmarks/results/``. These tests read those files and check that
each quoted value is in the doc, formatted as the doc prints it, so a re-run that changes a
result without updating the doc (or a hand-edited number) fails here. They do not re-run the
commands (minutes each); they pin docs to results. All of these are on synthetic phantoms or
timing runs: see each doc for what the numbers mean.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _doc(name: str) -> str:
    return (ROOT / name).read_text()


def _row(doc: str, first_cell: str) -> str:
    """The one Markdown table row whose first cell is ``first_cell`` (bold and a "(...)" note allowed)."""
    def cell(line: str) -> str:
        return line.split("|")[1].strip().strip("*").strip()

    rows = [ln for ln in doc.splitlines() if ln.startswith("|")
            and (cell(ln) == first_cell or cell(ln).startswith(first_cell + " ("))]
    assert len(rows) == 1, f"{len(rows)} table rows start with {first_cell!r}"
    return rows[0]


def _section(doc: str, start: str, end: str) -> str:
    return doc[doc.index(start):doc.index(end)]


def _has_number(row: str, value: float, rel: float = 0.03) -> bool:
    """Some number printed in ``row`` equals ``value`` to the precision the doc rounds it to."""
    return any(abs(float(x) - value) <= rel * abs(value) for x in re.findall(r"\d+\.\d+(?:e-?\d+)?", row))


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def test_readme_demo_table_is_demo_seeds_json() -> None:
    readme, runs = _doc("README.md"), _json("demo_seeds.json")["runs"]
    assert runs, "demo_seeds.json has no runs"
    for r in runs:
        seed = r["train_seed"]
        row = _row(readme, "0 = `make demo`" if seed == 0 else str(seed))
        ci = r["test_top1_ci95"]
        assert f"{r['test_top1']:.3f} ({ci['low']:.3f}-{ci['high']:.3f})" in row, row
        assert f"{r['test_top2']:.3f}" in row and f"{r['test_f1_macro']:.3f}" in row, row


def test_explain_doc_validation_table_is_the_localization_json() -> None:
    doc = _doc("docs/explain.md")
    for r in _json("bench_localization_demo_val.json")["rows"]:
        row = _row(doc, r["config"])
        pg, en = r["priors"]["pointing_game"]["model"], r["priors"]["energy_share"]["model"]
        assert f"{pg['mean']:.3f} {_ci(pg['ci95'])}" in row, row
        assert f"{en['mean']:.3f} {_ci(en['ci95'])}" in row, row


def test_explain_doc_hc18_table_is_the_localization_json() -> None:
    doc = _section(_doc("docs/explain.md"), "Real heads (HC18", "## Time per explanation")
    names = {"stage:-3:layercam": "stage:-3 LayerCAM (default)", "cam_layer:gradcam": "cam_layer Grad-CAM",
             "occlusion": "occlusion"}
    for r in _json("bench_localization_demo_hc18.json")["rows"]:
        row = _row(doc, names[r["config"]])
        pr = r["priors"]
        assert f"| {pr['n']}" in row, row
        for score in ("pointing_game", "energy_share"):
            m = pr[score]["model"]
            assert f"{m['mean']:.3f} {_ci(m['ci95'])}" in row, row
    assert "HC18_BRAIN" not in doc and "HC18_OTHERS" not in doc  # no unfilled placeholder
    assert re.search(r"calls\s+\d+ of the 25 heads", doc)


def test_explain_doc_gate_table_is_the_gate_json() -> None:
    doc = _doc("docs/explain.md")
    labels = {("zeros", "none"): "zeros, no norm", ("replicate", "none"): "replicate, no norm",
              ("replicate", "batch"): "replicate + BatchNorm"}
    for r in _json("bench_attention_gate_demo.json")["rows"]:
        row = _row(doc, labels[(r["spatial_padding"], r["spatial_norm"])])
        assert f"{r['position_share']:.3f}" in row and f"{r['saturated_share']:.3f}" in row, row
        assert _has_number(row, r["across_images_var"]) and _has_number(row, r["position_var"], rel=0.05), row


def test_deploy_doc_glance_and_stream_tables_are_the_bench_json() -> None:
    doc = _doc("docs/deploy.md")
    bench = _json("bench_deploy_idle_2vcpu.json")
    glance = doc[doc.index("### Paper model at a glance"):doc.index("**Targets.**")]
    for r in bench["rows"]:
        if r["model"] == "paper_lite0" and r["batch_size"] == 1 and r["spec_size"]:
            row = _row(glance, r["backend_label"])
            assert f"{r['img_per_s']:.1f}" in row and f"{r['latency_ms_p50']:.1f} ms" in row, row
    t = bench["targets"]
    assert f"{t['ort_fp32_vs_eager_bs1']:.2f}x" in glance and f"{t['ort_vs_eager_bs1']:.2f}x" in glance
    stream = _json("stream_bench_idle_2vcpu.json")["runs"]
    section = doc[doc.index("### Real-time video"):]
    for name, s in stream.items():
        kind, batch = name.split(" batch")
        row = next(ln for ln in section.splitlines() if re.match(rf"\| {kind} \| {batch} \|", ln))
        assert f"{s['fps']:.1f}" in row and f"{s['model_fps']:.1f}" in row, row


@pytest.mark.parametrize(("name", "label", "clients"), [
    ("bench_serve_idle_onnx_50.json", "ONNX", 50), ("bench_serve_idle_ckpt_50.json", "checkpoint (PyTorch)", 50),
    ("bench_serve_idle_onnx_1.json", "ONNX", 1)])
def test_serve_doc_load_table_is_the_bench_json(name: str, label: str, clients: int) -> None:
    doc, r = _doc("docs/serve.md"), _json(name)
    assert r["clients"] == clients and r["errors"] == 0
    row = next(ln for ln in doc.splitlines() if ln.startswith(f"| {label} | {clients} |"))
    assert f"{r['requests_ok']:,} in {r['duration_s']:.1f} s" in row and f"{r['throughput_rps']:.1f} req/s" in row, row


def test_deploy_doc_formats_table_is_demo_formats_json() -> None:
    section = _section(_doc("docs/deploy.md"), "## Export: ONNX and int8", "## What is measured, and how")
    labels = {"checkpoint (.ckpt)": "checkpoint (.ckpt, with optimizer state)", "ONNX fp32": "ONNX fp32",
              "ONNX int8 (QDQ)": "ONNX int8 (QDQ)"}
    for r in _json("demo_formats.json")["rows"]:
        row = _row(section, labels[r["format"]])
        assert f"{r['top1']:.3f} ({r['top1_low']:.3f}-{r['top1_high']:.3f})" in row, row
        assert f"{r['top2']:.3f}" in row and f"{r['f1_macro']:.3f}" in row and f"{r['size_mb']:.1f}" in row, row


def test_deploy_doc_abuse_table_is_bench_abuse_json() -> None:
    doc = _section(_doc("docs/deploy.md"), "## What is trusted", "## Known limits")
    result = _json("bench_abuse.json")
    assert result["marker_created"] is False
    for r in result["rows"]:
        rows = [ln for ln in doc.splitlines() if ln.startswith(f"| {r['kind']} | {r['side']} |")]
        assert len(rows) == 1, (r["kind"], r["side"])
        before = r.get("hwm_before_mb", r.get("rss_before_mb"))
        if before is not None:
            assert f"{before:.0f} -> {r['peak_mb']:.0f}" in rows[0], rows[0]
        elif "peak_mb" in r:
            assert f"peak {r['peak_mb']:.0f}" in rows[0], rows[0]
        if "wall_s" in r:
            assert f"| {r['wall_s']:.1f} |" in rows[0], rows[0]
    slow = result["slow_clients"]
    row = next(ln for ln in doc.splitlines() if ln.startswith("| 20 slow clients"))
    assert f"idle {slow['idle_rss_mb']:.0f}, peak {slow['peak_rss_mb']:.0f}, after {slow['rss_after_mb']:.0f}" in row
    assert f"{slow['load_test']['requests_ok']} ok, **{slow['load_test']['errors']} errors**" in row, row
    for status, count in slow["slow_clients"].items():
        assert f"{count} x {status}" in row, row


def test_ood_doc_table_is_bench_ood_json() -> None:
    """docs/ood.md's benchmark table and in-distribution line are bench_ood_demo.json's numbers."""
    doc, r = _doc("docs/ood.md"), _json("bench_ood_demo.json")
    rows = [ln for ln in doc.splitlines() if ln.startswith("| ") and (" | far | " in ln or " | near | " in ln)]
    for name, s in r["sets"].items():
        for score, m in s["scores"].items():
            row = [ln for ln in rows if ln.startswith(f"| {name} | ") and f"| {score} |" in ln]
            assert len(row) == 1, f"{name}/{score}: {len(row)} rows"
            assert f"{m['auroc']:.3f} {_ci(m['auroc_ci95'])}" in row[0]
            assert f"{m['fpr95']:.3f} {_ci(m['fpr95_ci95'])}" in row[0]
            assert f"{m['ood_rejected']:.3f} {_ci(m['ood_rejected_ci95'])}" in row[0]
    assert f"**{r['id_rejected']['verdict']:.3f} {_ci(r['id_rejected_ci95']['verdict'])}**" in doc
    assert f"**{r['latency_batch1']['scores_ms']:.3f} ms**" in doc


def test_explain_doc_seed_selection_table_is_the_compare_json() -> None:
    """The three-seed table in docs/explain.md is the compare tables and the selection they give."""
    doc = _section(_doc("docs/explain.md"), "### Chosen over three training seeds", "## Which layer and method")
    tables = [_json(f"explain_compare_demo_val12_seed{s}.json") for s in range(3)]
    selection = _json("explain_selection_demo.json")
    for cand in selection["candidates"]:
        row = _row(doc, cand["label"])
        for table in tables:
            r = next(r for r in table["rows"] if r["label"] == cand["label"])
            assert f"{r['sanity']['max_median']:.3f}" in row and f"{r['energy_share']['model']['mean']:.3f}" in row, row
        assert f"{cand['energy_share']:.3f}" in row and ("yes" if cand["eligible"] else "no") in row, row
    assert "Grad-CAM at `stage:-2`" in doc and selection["chosen"]["label"] == "gradcam @ stage:-2"
    assert sorted(t["train_seed"] for t in tables) == [0, 1, 2] and {t["split"] for t in tables} == {"val"}
