"""Every number in README.md and docs/*.md is generated from today's code, or says it is not.

``make docs-numbers`` (``benchmarks/docs_numbers.py``) re-runs the commands the docs quote,
writes stamped JSON under ``benchmarks/results/`` and rewrites the docs' generated regions
(``<!-- numbers:NAME -->``). These fast checks do not re-run anything; they fail when

(a) a generated region's JSON is missing, has no provenance stamp, or the region is unknown;
(b) the JSON's ``source_sha256`` differs from the hash of today's sources (any change under
    ``src/fetalplanes`` or to the producing script: re-run ``make docs-numbers``, intended);
(c) a region's text differs from what the renderer writes from its JSON (hand edits);
(d) a number outside code sits outside a generated region, a dated and visibly labelled
    ``history`` region, a ``facts`` region, or the short allow-list ``docs_numbers.ALLOWED``.

Each check is a function over (doc texts, results folder) so the mutation tests at the bottom
can show each one failing on a doctored copy.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import docs_numbers as dn  # noqa: E402
from _provenance import source_sha256  # noqa: E402


def _docs() -> dict[str, str]:
    return {doc: (ROOT / doc).read_text() for doc in dn.DOCS}


def region_problems(docs: dict[str, str], results: Path) -> list[str]:
    """(a): every region is registered, appears once, and its JSON exists with a provenance stamp."""
    seen: list[str] = []
    problems = []
    for doc, text in docs.items():
        for name, _, _ in dn.regions_in(text):
            seen.append(name)
            if name not in dn.REGIONS:
                problems.append(f"{doc}: region {name!r} is not in docs_numbers.REGIONS")
                continue
            path = results / dn.REGIONS[name].json
            if not path.is_file():
                problems.append(f"{doc}: region {name!r}: {path.name} is missing (make docs-numbers)")
            elif "provenance" not in json.loads(path.read_text()):
                problems.append(f"{doc}: region {name!r}: {path.name} has no provenance stamp (make docs-numbers)")
    for name in dn.REGIONS:
        if seen.count(name) != 1:
            problems.append(f"region {name!r} appears {seen.count(name)} times in the docs (expected once)")
    return problems


def hash_problems(results: Path, root: Path = ROOT) -> list[str]:
    """(b): each quoted JSON was produced from the sources of today's tree."""
    problems = []
    for name in sorted({r.json for r in dn.REGIONS.values()}):
        path = results / name
        if not path.is_file():
            continue  # reported by (a)
        prov = json.loads(path.read_text()).get("provenance") or {}
        today = source_sha256(prov.get("source_scripts", []), root)
        if prov.get("source_sha256") != today:
            problems.append(f"{name}: produced from other sources (commit {str(prov.get('commit'))[:10]}) "
                            f"than today's; run `make docs-numbers` (or PARTS=...)")
    return problems


def render_problems(docs: dict[str, str], results: Path) -> list[str]:
    """(c): each region's text is exactly what the renderer writes from its JSON."""
    problems = []
    for doc, text in docs.items():
        for name, start, end in dn.regions_in(text):
            if name in dn.REGIONS and dn.ready(name, results):
                if text[start:end] != dn.rendered(name, results):
                    problems.append(f"{doc}: region {name!r} differs from its JSON (run "
                                    f"`python benchmarks/docs_numbers.py render`)")
    return problems


def loose_problems(docs: dict[str, str]) -> list[str]:
    """(d): no number outside generated / history / facts regions and the allow-list; history is labelled."""
    problems = [f"{doc}:{line}: {num!r} is in no generated, history or facts region: {text.strip()[:100]}"
                for doc, t in docs.items() for line, num, text in dn.loose_numbers(t)]
    problems += [f"{doc}: history region of {date} does not start with a visible 'History ({date}' line"
                 for doc, t in docs.items() for date, labelled in dn.history_labels(t) if not labelled]
    return problems


def test_every_generated_region_has_its_stamped_json() -> None:
    assert region_problems(_docs(), dn.RESULTS) == []


def test_every_quoted_json_was_produced_from_todays_sources() -> None:
    assert hash_problems(dn.RESULTS) == []


def test_every_generated_region_is_what_the_renderer_writes() -> None:
    assert render_problems(_docs(), dn.RESULTS) == []


def test_every_number_in_the_docs_is_generated_or_labelled() -> None:
    assert loose_problems(_docs()) == []


def test_the_checks_cover_every_doc_and_the_regions_exist() -> None:
    """The scan reads README.md and every docs/*.md, and the docs hold the generated regions."""
    assert set(dn.DOCS) == {"README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))}
    assert {n for t in _docs().values() for n, _, _ in dn.regions_in(t)} == set(dn.REGIONS)


# ----------------------------------------------------------------------------- each check can fail

@pytest.fixture()
def results_copy(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(dn.RESULTS, out)
    return out


def _first_region() -> tuple[str, str]:
    for doc, text in _docs().items():
        for name, _, _ in dn.regions_in(text):
            if dn.ready(name, dn.RESULTS):
                return doc, name
    pytest.skip("no generated region with its JSON yet")


def test_a_missing_json_is_caught(results_copy: Path) -> None:
    doc, name = _first_region()
    (results_copy / dn.REGIONS[name].json).unlink()
    assert any("is missing" in p for p in region_problems(_docs(), results_copy))


def test_an_unregistered_region_is_caught() -> None:
    docs = {"README.md": "x\n<!-- numbers:nonesuch -->\n<!-- /numbers:nonesuch -->\n"}
    assert any("not in docs_numbers.REGIONS" in p for p in region_problems(docs, dn.RESULTS))


def test_a_changed_hash_is_caught(results_copy: Path) -> None:
    _, name = _first_region()
    path = results_copy / dn.REGIONS[name].json
    data = json.loads(path.read_text())
    data.setdefault("provenance", {})["source_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    assert any(name.split(".")[0] in p or dn.REGIONS[name].json in p for p in hash_problems(results_copy))


def test_a_changed_source_file_changes_the_hash(tmp_path: Path) -> None:
    """(b) sees a change to the package: the same hash over a copy differs once one file changes."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "src" / "fetalplanes", root / "src" / "fetalplanes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "params.py", root / "benchmarks" / "params.py")
    scripts = ["benchmarks/params.py"]
    assert source_sha256(scripts, root) == source_sha256(scripts)
    metrics = root / "src" / "fetalplanes" / "evaluation" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n# a change\n")
    assert source_sha256(scripts, root) != source_sha256(scripts)


def _bump(value: object) -> object:
    """Every number in ``value`` changed (ints + 1, floats x 1.5); the provenance block and the
    keys that name a run (its seeds: the band renderer finds seed 0 by them) kept."""
    if isinstance(value, dict):
        return {k: (v if k in ("provenance", "train_seed", "data_seed") else _bump(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_bump(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return value + 1 if isinstance(value, int) else value * 1.5


def test_a_changed_json_value_is_caught(results_copy: Path) -> None:
    """Changing the JSON's values (and not the doc) fails (c); so does a hand edit inside the region."""
    doc, name = _first_region()
    path = results_copy / dn.REGIONS[name].json
    path.write_text(json.dumps(_bump(json.loads(path.read_text()))))
    assert render_problems({doc: _docs()[doc]}, results_copy)
    start = next(s for n, s, _ in dn.regions_in(_docs()[doc]) if n == name)
    edited = _docs()[doc][:start] + "| 0.990 |\n" + _docs()[doc][start:]
    assert render_problems({doc: edited}, dn.RESULTS)


def test_a_loose_number_is_caught() -> None:
    docs = {"README.md": _docs()["README.md"] + "\nTop-1 was 0.990 on the demo.\n"}
    problems = loose_problems(docs)
    assert len(problems) == 1 and "'0.990'" in problems[0]


def test_numbers_in_regions_code_and_the_allow_list_are_not_loose() -> None:
    text = ("`--seeds 3` and\n```bash\nfetalplanes demo --max-epochs 15\n```\nOn 2026-12-01, issue 22.\n"
            "<!-- facts -->\n15 epochs at 128 px.\n<!-- /facts -->\n"
            "<!-- history:2026-12-01 -->\n*History (2026-12-01): earlier code.* top-1 0.900\n<!-- /history -->\n")
    assert loose_problems({"x.md": text}) == []


def test_an_unlabelled_history_region_is_caught() -> None:
    text = "<!-- history:2026-12-01 -->\ntop-1 0.900\n<!-- /history -->\n"
    assert any("does not start with a visible" in p for p in loose_problems({"x.md": text}))


@pytest.mark.parametrize("text, says", [
    # overlapping: rewriting `params` deleted the outer region's closer (a corrupted doc)
    ("<!-- numbers:demo-band -->\nA 1\n<!-- numbers:params -->\nB\n<!-- /numbers:demo-band -->\nC\n"
     "<!-- /numbers:params -->\n", "is not closed before <!-- numbers:params -->"),
    # an opener without its closer, before a complete region of the same name
    ("<!-- numbers:params -->\nA 1\n<!-- numbers:params -->\nB\n<!-- /numbers:params -->\n", "is not closed before"),
    ("text\n<!-- /numbers:params -->\n", "<!-- /numbers:params --> has no opening marker"),
    ("text `<!-- /numbers:params -->` quoted\n", None),  # quoted in prose: not a marker
    ("<!-- numbers:params --> 7\n<!-- /numbers:params -->\n", "has no opening marker"),  # opener not alone on its line
])
def test_unbalanced_region_markers_are_refused_before_a_doc_is_rewritten(text: str, says: str | None) -> None:
    if says is None:
        assert dn.render_text(text) == text
        return
    with pytest.raises(ValueError, match=re.escape(says)):
        dn.render_text(text)


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_check_demo_on_a_missing_or_foreign_summary_is_one_line(tmp_path: Path, monkeypatch, capsys,
                                                                content: str | None) -> None:
    """README tells a new user to run `check-demo runs/demo/demo_summary.json`; before the demo
    has written it (or on another file) that was a FileNotFoundError / KeyError traceback."""
    summary = tmp_path / "demo_summary.json"
    if content is not None:
        summary.write_text(content)
    monkeypatch.setattr(sys, "argv", ["docs_numbers.py", "check-demo", str(summary)])
    assert dn.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {summary}: not a demo_summary.json") and "\n" not in err


def test_the_band_is_median_and_min_max_with_seed_zero_apart() -> None:
    """The renderer's arithmetic on three made-up runs (a formatting test, no measurement)."""
    def run(seed: int, top1: float) -> dict:
        keys = [k for _, k, _ in dn.BAND_ROWS]
        return {**{k: 0.5 for k in keys}, "train_seed": seed, "test_top1": top1, "n_test": 120,
                "test_top1_ci95": {"low": 0.8, "high": 0.95}, "explain_method": "gradcam @ stage:-2",
                "explain_default_passes": True}
    prov = {"commit": "abc", "dirty": False, "date": "2026-12-07", "cpu": "CPU", "cores": 2,
            "torch_threads": {"intra_op": 2}, "versions": {"torch": "2"}}
    text = dn.render_demo_band({"command": "c", "runs": [run(1, 0.883), run(0, 0.9), run(2, 0.858)],
                                "provenance": prov})
    assert "| test top-1 | **0.900** | 0.883 (0.858-0.900) | 0.900, 0.883, 0.858 |" in text
