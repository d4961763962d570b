"""Choose a model's default heat map from ``explain --compare`` tables of >= 3 training seeds.

Reads the ``compare.json`` files (one per training seed, all on the VALIDATION split), applies
``fetalplanes.explain.selection.select_default`` (every sanity median <= 0.5 - 0.1 in every
seed, then the highest mean energy share), prints the verdict and a Markdown table of the
candidates, and writes JSON. When none passes it says so, with the reasons.

Usage:
    python benchmarks/explain_select.py runs/seeds/seed-0/cmp/compare.json runs/seeds/seed-1/cmp/compare.json \\
        runs/seeds/seed-2/cmp/compare.json [--json benchmarks/results/explain_selection.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def seed_rows(table: dict) -> dict:
    """One ``compare.json``, reduced to what the docs quote per map."""
    rows = []
    for r in table["rows"]:
        sanity = r.get("sanity") or {}
        rows.append({"label": r["label"], "seconds_per_image": r.get("seconds_per_image"),
                     "pointing_game": ((r.get("pointing_game") or {}).get("model") or {}).get("mean"),
                     "energy_share": ((r.get("energy_share") or {}).get("model") or {}).get("mean"),
                     "max_sanity_median": sanity.get("max_median"), "flagged": sanity.get("flagged")})
    return {"train_seed": table.get("train_seed"), "split": table.get("split"), "n_images": table.get("n_images"),
            "shipped_default": table.get("shipped_default"), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", help="compare.json files, one per training seed")
    ap.add_argument("--json", default="benchmarks/results/explain_selection.json")
    args = ap.parse_args()

    from _provenance import stamp

    from fetalplanes.core.atomic import write_json
    from fetalplanes.explain.selection import MARGIN, SURVIVAL_RHO, select_default

    tables = [json.loads(Path(p).read_text()) for p in args.tables]
    out = select_default(tables)
    f3 = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(out["verdict"])
    print("\n| map | eligible | mean energy share | mean pointing game | worst sanity margin | reasons |")
    print("|---|---|---|---|---|---|")
    for c in out["candidates"]:
        print(f"| {c['label']} | {'yes' if c['eligible'] else 'no'} | {f3(c['energy_share'])} | {f3(c['pointing_game'])} "
              f"| {f3(c['worst_margin'])} | {'; '.join(c['reasons']) or '-'} |")
    command = "python benchmarks/docs_numbers.py run explain"
    result = {"command": command, "tables": args.tables, "per_seed": [seed_rows(t) for t in tables],
              "rule_limit": SURVIVAL_RHO - MARGIN, **out}
    write_json(args.json, stamp(result, ["benchmarks/explain_select.py"]))
    print(f"\n-> {args.json}")


if __name__ == "__main__":
    main()
