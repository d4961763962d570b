"""`make docs-numbers`: re-run the commands README.md and docs/ quote, then rewrite their tables.

Three kinds of marked regions hold every number in README.md and docs/*.md outside code
(``tests/test_docs_numbers.py`` enforces it):

* ``<!-- numbers:NAME -->`` ... ``<!-- /numbers:NAME -->``: generated. ``REGIONS[NAME]`` names
  the results JSON and the function that renders the region from it; ``render`` rewrites the
  text between the markers, so a generated table equals its JSON by construction. Each JSON is
  stamped by ``benchmarks/_provenance.py`` (commit, versions, CPU, threads, ``source_sha256``).
* ``<!-- history:YYYY-MM-DD -->`` ... ``<!-- /history -->``: numbers measured on earlier code that
  no part of this command re-produces; the region's visible text starts with "History
  (YYYY-MM-DD" so a reader sees it too.
* ``<!-- facts -->`` ... ``<!-- /facts -->``: hand-written facts (design constants, limits read
  from the code, paper-reported numbers, worked examples), not measurements.

Usage:
    python benchmarks/docs_numbers.py run [PART ...]    # re-run parts (default: all), then render
    python benchmarks/docs_numbers.py render            # rewrite the regions from the JSON only
    python benchmarks/docs_numbers.py check-demo runs/demo/demo_summary.json   # a demo vs the band
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fetalplanes.core.cam_methods import COMPARE_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
WORK = Path("runs/docs_numbers")  # scratch folder of the parts (relative to the repo root)
PY = sys.executable

BEGIN = re.compile(r"<!-- numbers:([\w-]+) -->\n")
END = re.compile(r"^<!-- /numbers:([\w-]+) -->", re.M)  # a closer at the start of a line (not one quoted in prose)


# ----------------------------------------------------------------------------- parts (commands)

@dataclass(frozen=True)
class Part:
    """One step of ``make docs-numbers``: commands run in order from the repo root."""

    commands: tuple[tuple[str, ...], ...]
    what: str


DEMO_SEEDS = 3  # training seeds 0, 1, 2 of part demo; part explain reads the same three models
EXPLAIN_SEEDS = tuple(range(DEMO_SEEDS))
# Every setting of `explain --compare`'s default set but occlusion: ~10-30x a CAM's cost per image
# (docs/explain.md's history table), which would double this command's time.
EXPLAIN_CONFIGS = ";".join(c for c in COMPARE_CONFIGS.split(";") if c != "occlusion")
EXPLAIN_IMAGES = 12  # per seed, the first N of its validation split: the rule's minimum sample


def _compare(seed: int) -> tuple[str, ...]:
    run = WORK / "demo_seeds" / f"seed-{seed}"
    return (PY, "-m", "fetalplanes", "explain", "--compare",
            "--checkpoint", str(run / "run" / "checkpoints" / "best.ckpt"), "--data", str(run / "data"),
            "--split", "val", "--limit", str(EXPLAIN_IMAGES), "--configs", EXPLAIN_CONFIGS,
            "--out", str(WORK / "explain" / f"seed-{seed}"))


PARTS: dict[str, Part] = {
    "params": Part(((PY, "benchmarks/params.py", "--out", "benchmarks/results/params.json"),),
                   "parameter counts of every preset (README preset table)"),
    "demo": Part(((PY, "benchmarks/demo_seeds.py", "--seeds", str(DEMO_SEEDS), "--out", str(WORK / "demo_seeds"),
                   "--json", "benchmarks/results/demo_seeds.json"),),
                 "`fetalplanes demo` for training seeds 0, 1, 2 (README band; seed 0 = `make demo`)"),
    "formats": Part(((PY, "benchmarks/demo_formats.py", "--run", str(WORK / "demo_seeds" / "seed-0"),
                      "--out", str(WORK / "formats"), "--json", "benchmarks/results/demo_formats.json"),),
                    "seed 0's model as .ckpt, ONNX fp32, ONNX int8 (docs/deploy.md); needs part demo"),
    "contention": Part(((PY, "benchmarks/bench_contention.py", "--run", str(WORK / "demo_seeds" / "seed-0"),
                         "--model", str(WORK / "formats" / "model.onnx"), "--policies", "spin:2,passive", "--out",
                         "benchmarks/results/bench_contention.json"),),
                       "training and `predict` alone and beside other CPU work, per thread policy "
                       "(README, docs/deploy.md); needs parts demo and formats"),
    "explain": Part((*(_compare(seed) for seed in EXPLAIN_SEEDS),
                     (PY, "benchmarks/explain_select.py",
                      *(str(WORK / "explain" / f"seed-{seed}" / "compare.json") for seed in EXPLAIN_SEEDS),
                      "--json", "benchmarks/results/explain_selection.json")),
                    "`explain --compare` on the validation split of the 3 demo models, then the default-map rule "
                    "(docs/explain.md); needs part demo"),
}


def run_parts(names: list[str]) -> dict[str, float]:
    """Run the parts in order; prints and returns each one's wall time (s)."""
    times: dict[str, float] = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    for name in names:
        t0 = time.perf_counter()
        print(f"== docs-numbers part {name}: {PARTS[name].what}", flush=True)
        for cmd in PARTS[name].commands:
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        times[name] = time.perf_counter() - t0
        print(f"== part {name}: {times[name]:.0f} s", flush=True)
    return times


# ----------------------------------------------------------------------------- renderers

def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _by(p: dict[str, Any]) -> str:
    """One line saying which code and machine produced a result."""
    prov = p["provenance"]
    threads = prov["torch_threads"]["intra_op"]
    dirty = " + uncommitted changes" if prov.get("dirty") else ""
    return (f"commit `{(prov.get('commit') or 'unknown')[:10]}`{dirty}, {prov['date']}, {prov['cpu']}, "
            f"{prov['cores']} cores, {threads} torch threads, torch {prov['versions']['torch']}")


def _band(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


# (row label, key in a demo_seeds run, format); the localization keys hold {"mean", "ci95"}.
BAND_ROWS = (
    ("test top-1", "test_top1", ".3f"),
    ("test top-2", "test_top2", ".3f"),
    ("test macro-F1", "test_f1_macro", ".3f"),
    ("pointing game, model's heat map", "pointing_game_model", ".3f"),
    ("pointing game, centre prior", "pointing_game_centre", ".3f"),
    ("energy share, model's heat map", "energy_share_model", ".3f"),
    ("energy share, centre prior", "energy_share_centre", ".3f"),
    ("sanity: largest median Spearman (passes below 0.5)", "sanity_max_median_spearman", ".3f"),
    ("training img/s", "train_img_per_s", ".1f"),
    ("whole demo, wall s", "wall_s", ".0f"),
)


def render_demo_band(r: dict[str, Any]) -> str:
    runs = sorted(r["runs"], key=lambda x: x["train_seed"])
    seed0 = next(x for x in runs if x["train_seed"] == 0)
    lines = [f"| measure (test split, {seed0['n_test']} images) | seed 0 = `make demo` | median (min-max) over "
             f"{len(runs)} training seeds | per seed |", "|---|---|---|---|"]
    for label, key, fmt in BAND_ROWS:
        vals = [x[key] for x in runs]
        if any(v is None for v in vals):
            continue
        per = ", ".join(f"{v:{fmt}}" for v in vals)
        lines.append(f"| {label} | **{seed0[key]:{fmt}}** | {_band(vals, fmt)} | {per} |")
    ci = seed0["test_top1_ci95"]
    lines += ["", f"Seed 0's top-1 95 % interval (bootstrap over test patients): {ci['low']:.3f}-{ci['high']:.3f}. "
              f"Heat maps: {seed0['explain_method']}; the shipped default "
              f"{'passes' if all(x['explain_default_passes'] for x in runs) else 'does not pass'} its own sanity "
              f"check on every seed. Produced by `{r['command']}` ({_by(r)})."]
    return "\n".join(lines)


def render_params(r: dict[str, Any]) -> str:
    lines = ["| preset | params total | trainable (full) | trainable (`--finetune frozen`) |", "|---|---|---|---|"]
    for p in r["presets"]:
        lines.append(f"| `{p['preset']}` | {p['total']:,} | {p['trainable_full']:,} | {p['trainable_frozen']:,} |")
    lines += ["", f"{r['num_classes']}-class task, `model.param_counts()`, `python benchmarks/params.py` ({_by(r)})."]
    return "\n".join(lines)


FORMAT_LABELS = {"checkpoint (.ckpt)": "checkpoint (.ckpt, with optimizer state)"}


def render_formats(r: dict[str, Any]) -> str:
    rows = r["rows"]
    lines = [f"| format | file MB | test top-1 (95 % CI, {rows[0]['n']} images) | top-2 | macro-F1 | `evaluate` s |",
             "|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {FORMAT_LABELS.get(x['format'], x['format'])} | {x['size_mb']:.1f} | {x['top1']:.3f} "
                     f"({x['top1_low']:.3f}-{x['top1_high']:.3f}) | {x['top2']:.3f} | {x['f1_macro']:.3f} "
                     f"| {x['evaluate_s']:.1f} |")
    gate = r.get("int8_gate") or {}
    if gate.get("refusal"):
        lines += ["", f"int8 gate (`--max-drop {r['max_drop']}`): refused this model, so no int8 row: {gate['refusal']}."]
    elif gate:
        lines += ["", f"int8 gate (`--max-drop {r['max_drop']}`): {'passed' if gate.get('passed') else 'failed'} "
                  f"on {gate.get('n')} held-out calibration images: fp32 {gate.get('fp32_top1'):.3f}, "
                  f"int8 {gate.get('int8_top1'):.3f}, agreement {gate.get('agreement'):.3f}."]
    lines += ["", f"Produced by `{r['command']}` ({_by(r)})."]
    return "\n".join(lines)


def render_contention(r: dict[str, Any]) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_contention import table

    m = r["provenance"]
    return "\n".join([table(r), "", f"`spin:2` = the product before issue 23 (two threads whatever the load, the "
                      f"libraries' spin-waiting; `FETALPLANES_WAIT=spin FETALPLANES_THREADS=2`); `passive` = "
                      f"the product's default now (threads from the cores not busy at start-up, passive waiting). {r['steps']} training steps "
                      f"of batch 16 per cell; `predict` median of {r['repeats']} runs (start-up included). Load "
                      f"average {r['machine']['load_before']:.2f} before the run. Produced by `{r['command']}` "
                      f"({_by(r)}; {m['cores']} cores)."])


def render_explain(r: dict[str, Any]) -> str:
    seeds = sorted(r["per_seed"], key=lambda t: t["train_seed"])
    f3 = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    head = " | ".join(f"seed {t['train_seed']}: sanity / energy / PG" for t in seeds)
    lines = [f"| map | {head} | eligible (every sanity median <= {r['rule_limit']:.1f}) | mean energy share "
             "| mean pointing game | s/img (median) |", "|---|" + "---|" * (len(seeds) + 4)]
    chosen = (r.get("chosen") or {}).get("label")
    by_label = [{x["label"]: x for x in t["rows"]} for t in seeds]  # one row per map and seed
    for c in r["candidates"]:
        rows = [rows_of.get(c["label"]) for rows_of in by_label]
        cells = ["-" if row is None else f"{f3(row['max_sanity_median'])}{' FLAGGED' if row['flagged'] else ''} / "
                 f"{f3(row['energy_share'])} / {f3(row['pointing_game'])}" for row in rows]
        secs = [row["seconds_per_image"] for row in rows if row and row["seconds_per_image"] is not None]
        label = f"**{c['label']} (chosen)**" if c["label"] == chosen else c["label"]
        speed = f"{statistics.median(secs):.2f}" if secs else "n/a"
        lines.append(f"| {label} | {' | '.join(cells)} | {'yes' if c['eligible'] else 'no'} | {f3(c['energy_share'])} "
                     f"| {f3(c['pointing_game'])} | {speed} |")
    shipped = sorted({str(t["shipped_default"]) for t in seeds})
    agree = chosen is not None and shipped == [chosen]
    lines += ["", f"Verdict: {r['verdict']}.", "",
              f"The demo models ship {' / '.join(shipped)}: "
              + ("the rule's choice." if agree else "NOT the rule's choice on today's code (see the verdict)."),
              "", f"{len(seeds)} demo models (training seeds {', '.join(str(t['train_seed']) for t in seeds)}), the first "
              f"{seeds[0]['n_images']} images of each one's {seeds[0]['split']} split; sanity = the largest median "
              f"Spearman over the randomizations (FLAGGED at 0.5 or above), energy = energy share, PG = pointing game; "
              f"s/img = one map's time, idle box. Produced by `{r['command']}` ({_by(r)})."]
    return "\n".join(lines)


@dataclass(frozen=True)
class Region:
    """A generated region: its results JSON (under benchmarks/results) and renderer."""

    json: str
    render: Callable[[dict[str, Any]], str]


REGIONS: dict[str, Region] = {
    "demo-band": Region("demo_seeds.json", render_demo_band),
    "params": Region("params.json", render_params),
    "formats": Region("demo_formats.json", render_formats),
    "contention": Region("bench_contention.json", render_contention),
    "explain-selection": Region("explain_selection.json", render_explain),
}


# ----------------------------------------------------------------------------- doc rewriting

def regions_in(text: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of each generated region's body in ``text``; ``ValueError`` on unbalanced
    markers: an opener without its closer, a region opened inside another (rewriting the inner one
    would delete the outer one's closer), or a closer without its opener (e.g. an opener not alone
    on its line)."""
    out: list[tuple[str, int, int]] = []
    openers = list(BEGIN.finditer(text))
    for i, m in enumerate(openers):
        end = text.find(f"<!-- /numbers:{m.group(1)} -->", m.end())
        if end < 0:
            raise ValueError(f"<!-- numbers:{m.group(1)} --> has no closing marker")
        if i + 1 < len(openers) and openers[i + 1].start() < end:
            raise ValueError(f"<!-- numbers:{m.group(1)} --> is not closed before <!-- numbers:{openers[i + 1].group(1)} --> "
                             "opens; regions cannot nest or overlap")
        out.append((m.group(1), m.end(), end))
    closers = {end for _, _, end in out}
    for c in END.finditer(text):
        if c.start() not in closers:
            raise ValueError(f"<!-- /numbers:{c.group(1)} --> has no opening marker (an opener stands alone on its line)")
    return out


def rendered(name: str, results: Path = RESULTS) -> str:
    """The body the renderer writes for region ``name`` from its JSON (ends with a newline)."""
    region = REGIONS[name]
    return region.render(json.loads((results / region.json).read_text())).rstrip("\n") + "\n"


def ready(name: str, results: Path) -> bool:
    """The region's JSON exists and is stamped (else it is left as it is, and the docs test says why)."""
    path = results / REGIONS[name].json if name in REGIONS else None
    return bool(path and path.is_file() and "provenance" in json.loads(path.read_text()))


def render_text(text: str, results: Path = RESULTS) -> str:
    for name, start, end in reversed(regions_in(text)):
        if ready(name, results):
            text = text[:start] + rendered(name, results) + text[end:]
        else:
            print(f"region {name}: no stamped {REGIONS[name].json if name in REGIONS else 'JSON'}; left as it is")
    return text


def render_docs() -> list[str]:
    """Rewrite every generated region in README.md and docs/*.md; returns the docs changed."""
    changed = []
    for doc in DOCS:
        path = ROOT / doc
        old = path.read_text()
        new = render_text(old)
        if new != old:
            path.write_text(new)
            changed.append(doc)
    return changed


# ----------------------------------------------------------------------------- every number in the docs

# A number: a digit run with optional thousands commas, decimals and exponent, not part of a word.
# A digit run glued to a word ("ImageNet-1k", "b0", "3-layer" is not glued) is a name, not a number;
# "1.9x" stays a number.
NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?(?![A-Za-wyz_])")
HISTORY = re.compile(r"<!-- history:(\d{4}-\d{2}-\d{2}) -->\n(.*?)<!-- /history -->", re.S)
FACTS = re.compile(r"<!-- facts -->\n.*?<!-- /facts -->", re.S)
# Not numbers a command produces: code (commands, flags, identifiers), comments, link targets.
CODE = (re.compile(r"^```.*?^```", re.S | re.M), re.compile(r"`[^`\n]*`"), re.compile(r"<!--.*?-->", re.S),
        re.compile(r"\]\([^)]*\)"), re.compile(r"https?://\S+"),
        re.compile(r"^#{1,6} .*$", re.M))  # headings name sections; the numbers they name are below them
# The short allow-list of hand-written facts anywhere in prose: (pattern, why).
ALLOWED = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "a date"),
    (re.compile(r"\b(?:issue|issues|item|stop|round)s? \d+(?:, \d+)*(?: and \d+)?", re.I), "an issue or item number"),
    (re.compile(r"(?:Python|CPython|torch|timm|pip|onnxruntime|ORT) (?:>= )?\d+(?:\.\d+)*"), "a version"),
    (re.compile(r"arXiv \d{4}\.\d{5}"), "the paper's arXiv id"),
    (re.compile(r"\btop-\d\b|\b\d+-bit\b|JPEG 2000|\bseed \d\b", re.I), "a metric, format or seed name"),
)


def blank(text: str, pattern: re.Pattern[str]) -> str:
    """``text`` with every match of ``pattern`` replaced by spaces (offsets kept)."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def strip_allowed(text: str) -> str:
    """The text whose numbers the docs test requires to be generated: regions, code and allowed facts blanked."""
    for name, start, end in regions_in(text):
        text = text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]
    for pattern in (HISTORY, FACTS, *CODE, *(p for p, _ in ALLOWED)):
        text = blank(text, pattern)
    return text


def loose_numbers(text: str) -> list[tuple[int, str, str]]:
    """(line number, number, line) of every number outside generated/history/facts regions and the allow-list."""
    lines = text.splitlines()
    out = []
    stripped = strip_allowed(text)
    for m in NUMBER.finditer(stripped):
        line = stripped.count("\n", 0, m.start())
        out.append((line + 1, m.group(0), lines[line]))
    return out


def history_labels(text: str) -> list[tuple[str, bool]]:
    """(date, labelled) per history region: its first visible line must say "History (DATE"."""
    out = []
    for m in HISTORY.finditer(text):
        first = next((ln for ln in m.group(2).splitlines() if ln.strip()), "")
        out.append((m.group(1), f"History ({m.group(1)}" in first))
    return out


# ----------------------------------------------------------------------------- a demo vs the band

def check_demo(summary_path: Path) -> bool:
    """Print where one ``demo_summary.json`` lands against the seed band; True when inside on every row."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from demo_seeds import run_fields

    try:
        one = run_fields(json.loads(summary_path.read_text()), wall_s=None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        # Run before the demo finished, or on another file: one line, not a traceback.
        raise ValueError(f"{summary_path}: not a demo_summary.json ({type(err).__name__}: {err}); "
                         "expected the file `make demo` writes (runs/demo/demo_summary.json)") from None
    runs = _load("demo_seeds.json")["runs"]
    inside = True
    for label, key, fmt in BAND_ROWS[:-2]:  # speed and wall time are the machine's, not the model's
        vals = [x[key] for x in runs]
        ok = min(vals) <= one[key] <= max(vals)
        inside &= ok
        print(f"{label:55s} {one[key]:{fmt}}  band {_band(vals, fmt)}  {'inside' if ok else 'OUTSIDE'}")
    return inside


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="re-run parts (default: all), then render")
    run.add_argument("parts", nargs="*", help=f"any of: {', '.join(PARTS)}")
    sub.add_parser("render", help="rewrite the generated regions from benchmarks/results/*.json")
    chk = sub.add_parser("check-demo", help="where a demo_summary.json lands against the seed band")
    chk.add_argument("summary", type=Path)
    args = ap.parse_args()
    if args.cmd == "check-demo":
        try:
            return 0 if check_demo(args.summary) else 1
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.cmd == "run":
        parts = [p for s in args.parts for p in s.replace(",", " ").split()] or list(PARTS)
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            ap.error(f"unknown part(s) {', '.join(unknown)}; the parts are: {', '.join(PARTS)}")
        times = run_parts(parts)
        print("| part | wall s |\n|---|---|\n" + "\n".join(f"| {k} | {v:.0f} |" for k, v in times.items()))
    changed = render_docs()
    print(f"rendered; changed: {', '.join(changed) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
