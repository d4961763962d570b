"""Markdown rendering of ``bench.json``: model facts, the speed table, targets and profiles."""

from __future__ import annotations

from typing import Any


def _f(v: Any, fmt: str = ".1f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f}"


def facts_table(models: list[dict[str, Any]]) -> str:
    lines = [
        "| model | role | params total / trainable | GFLOPs/img | torch weights MB | ONNX fp32 MB | ONNX int8 MB | prep errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        p = m["params"]
        errs = "; ".join(f"{k}: {v}" for k, v in m.get("errors", {}).items()) or ""
        lines.append(
            f"| {m['name']} | {m['role']} | {p['total']:,} / {p['trainable']:,} | {m['gflops_per_image']:.3f} "
            f"| {_mb(m['torch_weights_bytes'])} | {_mb(m.get('onnx_fp32', {}).get('bytes'))} "
            f"| {_mb(m.get('onnx_int8', {}).get('bytes'))} | {errs[:120]} |"
        )
    return "\n".join(lines)


def speed_table(rows: list[dict[str, Any]]) -> str:
    """One line per (model, backend, batch): the table the CLI prints and the docs paste."""
    lines = [
        "| model | px | backend | bs | img/s | p50 ms | p95 ms | peak RSS MB | file MB | roofline % | x eager | cores used |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        px = f"{r['image_size']}" + ("" if r.get("spec_size", True) else " (not spec)")
        if "error" in r:
            lines.append(f"| {r['model']} | {px} | {r['backend_label']} | – | error: {r['error'][:90]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {px} | {r['backend_label']} | {r['batch_size']} | {r['img_per_s']:.1f} "
            f"| {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {_f(r.get('peak_rss_mb'), '.0f')} "
            f"| {_mb(r.get('file_bytes'))} | {100 * r['roofline_share']:.1f} | {_f(r.get('speedup_vs_eager'), '.2f')} "
            f"| {_f(r.get('cpu_cores_used'), '.2f')} |"
        )
    return "\n".join(lines)


def _ops_table(prof: dict[str, Any] | None, title: str) -> str:
    if not prof:
        return ""
    total = prof.get("kernel_ms_per_run", prof.get("self_cpu_ms_per_run"))
    lines = [f"**{title}** ({_f(total, '.2f')} ms of op time per run, batch {prof['batch']})", "",
             "| op | ms/run | share | calls/run |", "|---|---|---|---|"]
    lines += [f"| {o['op']} | {o['ms_per_run']:.2f} | {100 * o['share']:.1f} % | {o['calls_per_run']:.0f} |" for o in prof["top_ops"]]
    return "\n".join(lines) + "\n"


def _tuning_table(rows: list[dict[str, Any]] | None) -> str:
    if not rows:
        return ""
    lines = ["**ONNX Runtime session settings, paper model, batch 1**", "",
             "| intra-op threads | graph optimization | spinning | img/s | p50 ms | p95 ms |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['threads']} | {r['opt_level']} | {'on' if r['spinning'] else 'off'} | {r['img_per_s']:.1f} "
        f"| {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _targets(t: dict[str, Any]) -> str:
    if "ort_bs1_img_s" not in t:
        return t.get("note", "")
    yes = {True: "met", False: "NOT met"}
    return (
        f"- ONNX Runtime batch 1 ({t['best_ort_backend']}): **{t['ort_bs1_img_s']:.1f} img/s** "
        f"(target >= {t['target_ort_bs1_img_s']:.0f}: {yes[t['met_ort_bs1']]})\n"
        f"- ONNX Runtime ({t['best_ort_backend']}) vs torch eager NCHW, batch 1: **{_f(t['ort_vs_eager_bs1'], '.2f')}x** "
        f"(target >= {t['target_ort_vs_eager']:.0f}x: {yes[t['met_ort_vs_eager']]}); fp32 alone: "
        f"{_f(t.get('ort_fp32_bs1_img_s'), '.1f')} img/s, {_f(t.get('ort_fp32_vs_eager_bs1'), '.2f')}x\n"
        f"- ORT fp32 batch 1 uses {_f(100 * t['roofline_share_fp32'] if t['roofline_share_fp32'] is not None else None, '.1f')} % "
        "of the estimated fp32 peak\n"
    )


def to_markdown(result: dict[str, Any]) -> str:
    m, cfg, a = result["machine"], result["config"], result.get("analysis", {})
    head = (
        f"# fetalplanes bench\n\n"
        f"- CPU: {m['cpu']}; {m['cores']} cores available, {m['threads']} threads used; ISA {m['isa']}"
        f"{', VNNI' if m['int8_vnni'] else ''}{', AMX' if m.get('amx') else ''}"
        f"{'; measurements pinned to cores ' + str(m['pinned_cpus']) if m.get('pinned_cpus') else ''}\n"
        f"- Estimated peak: {m['peak_gflops_fp32']} GFLOP/s fp32 = {m['formula']}; int8 {m['peak_gops_int8']} GOP/s ({m['note']})\n"
        f"- Load average (1/5/15 min) before: {', '.join(f'{x:.2f}' for x in result['load_avg_before'])}; "
        f"after: {', '.join(f'{x:.2f}' for x in result.get('load_avg_after', []))}\n"
        f"- Mode: {'quick' if cfg['quick'] else 'full'}; batch sizes {cfg['batch_sizes']}; "
        f"{'one fresh process per (model, backend)' if cfg['isolate'] else 'in-process (peak memory not isolated)'}; "
        f"run took {result.get('wall_s', float('nan')):.0f} s{'' if result.get('complete', True) else ' (INCOMPLETE: run was stopped)'}\n"
        f"- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + "\n"
    )
    body = [
        head, "## Models\n", facts_table(result["models"]), "\n## Speed\n",
        "img/s = batch / median call time; p50/p95 = per call (per batch); peak RSS = the measuring process; "
        "roofline % = GFLOPs/img x img/s / peak (int8 rows: int8 peak); x eager = vs torch eager NCHW, same model and batch; "
        "cores used = process CPU time / wall time while timing.\n",
        speed_table(result["rows"]), "\n## Targets (paper model, batch 1, spec input size)\n", _targets(result.get("targets", {})),
        "\n## Where the time goes (paper model)\n",
        _ops_table(a.get("ort_profile_bs1"), "ONNX Runtime fp32 op types"),
        _ops_table(a.get("ort_int8_profile_bs1"), "ONNX Runtime int8 op types"),
        _ops_table(a.get("torch_profile_bs1"), "torch eager (NCHW) aten ops, self CPU time"),
        _tuning_table(a.get("ort_tuning_bs1")),
    ]
    return "\n".join(body)
