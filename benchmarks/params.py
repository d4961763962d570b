"""Parameter counts of every model preset (total / trainable, full and frozen fine-tuning).

Usage: python benchmarks/params.py [--out params.json]
Prints a markdown table and writes JSON, stamped with ``benchmarks/_provenance.py``
(``make docs-numbers`` renders README's preset table from it).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from _provenance import stamp

    from fetalplanes.core.atomic import write_json
    from fetalplanes.models import create_model, list_presets

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="params.json")
    ap.add_argument("--num-classes", type=int, default=6)
    args = ap.parse_args()
    rows = []
    for name in list_presets():
        full = create_model(name, args.num_classes, pretrained=False).param_counts()
        frozen = create_model(name, args.num_classes, pretrained=False, finetune="frozen").param_counts()
        rows.append({"preset": name, "total": full["total"], "trainable_full": full["trainable"],
                     "trainable_frozen": frozen["trainable"]})
    print("| preset | total | trainable (full) | trainable (frozen backbone) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['total']:,} | {r['trainable_full']:,} | {r['trainable_frozen']:,} |")
    write_json(args.out, stamp({"num_classes": args.num_classes, "presets": rows}, ["benchmarks/params.py"]))


if __name__ == "__main__":
    main()
