"""``fetalplanes explain --compare``: every heat-map method on the same images, one table.

Each configuration (a method of ``core.cam_methods`` and, for a CAM, its layer) is run by
THE pipeline (``explain.pipeline.explain``, with the sanity checks on) into its own folder,
so each keeps its overlays, report, priors table and sanity checks. One row per
configuration then goes into ``compare.json``, ``compare.md`` and ``compare.html``:

- localization against the masks: pointing game and energy share, mean and 95 % interval,
  and whether the map beats the uniform and the centre prior (``explain.priors``);
- sanity (``explain.sanity``): the median Spearman of each randomization, the largest of
  them and its **margin** to ``SURVIVAL_RHO`` (positive = below the threshold);
- cost: median seconds per map (one image at a time, this machine).

The table records the model's training seed and the split, so that
``explain.selection.select_default`` can choose a default from tables of >= 3 seeds on the
VALIDATION split.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from fetalplanes.core import atomic
from fetalplanes.core.cam_methods import (ATTRIBUTION, COMPARE_CONFIGS as DEFAULT_CONFIGS, INPUT_LAYER, HeatMapSettings,
                                          check_method, method_family)
from fetalplanes.core.errors import UsageError

log = logging.getLogger(__name__)


def parse_configs(text: str) -> list[tuple[str, str | None]]:
    """'LAYER:METHOD;METHOD;...' -> [(method, layer or None)]; attribution methods take no layer.

    Raises UsageError naming the bad entry and the valid methods.
    """
    out: list[tuple[str, str | None]] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        layer, _, method = part.rpartition(":")
        method = check_method(method)
        if method_family(method) == ATTRIBUTION:
            if layer:
                raise UsageError(f"compare config {part!r}: {method!r} attributes the input pixels and takes no layer")
            out.append((method, None))
        else:
            if not layer:
                raise UsageError(f"compare config {part!r}: a CAM needs LAYER:METHOD, e.g. 'stage:-3:{method}'")
            out.append((method, layer))
    if not out:
        raise UsageError(f"no compare configs in {text!r}; e.g. {DEFAULT_CONFIGS!r}")
    return out


def label(method: str, layer: str | None) -> str:
    """'layercam @ stage:-3' or 'gradientshap' (the row's name everywhere)."""
    return method if layer in (None, INPUT_LAYER) else f"{method} @ {layer}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def row(summary: dict[str, Any], method: str, layer: str | None, folder: str) -> dict[str, Any]:
    """One table row from a pipeline summary (``explain.pipeline.explain``'s return value)."""
    from fetalplanes.explain.sanity import SURVIVAL_RHO

    loc = summary.get("localization") or {}
    cmp = loc.get("priors") or {}
    out: dict[str, Any] = {"label": label(method, layer), "method": method, "layer": summary.get("layer"),
                           "family": method_family(method), "n_images": summary["n"],
                           "n_with_mask": loc.get("n_with_mask", 0), "folder": folder,
                           "seconds_per_image": summary["seconds_per_cam_median"]}
    if cmp.get("n"):
        for score in ("pointing_game", "energy_share"):
            s = cmp[score]
            out[score] = {k: {"mean": s[k]["mean"], "ci95": s[k]["ci95"]} for k in ("model", "uniform", "centre")}
            out[score].update(beats_uniform=s["vs_uniform"]["beats"], beats_centre=s["vs_centre"]["beats"])
        out["beats_priors"] = cmp["beats_priors"]
    sanity = summary.get("sanity") or {}
    if sanity.get("checks"):
        medians = {c["name"]: c["spearman_median"] for c in sanity["checks"]}
        worst = max(medians.values())
        out["sanity"] = {"medians": medians, "max_median": worst, "margin": SURVIVAL_RHO - worst,
                         "flagged": sanity["flagged"], "n_images": sanity["n_images"]}
    return out


def compare_methods(checkpoint: str | Path, out_dir: str | Path, inputs: Sequence[str | Path] = (),
                    data: str | Path | None = None, split: str = "val", masks: Sequence[str | Path] = (),
                    configs: str | Sequence[tuple[str, str | None]] | None = None, limit: int | None = None,
                    sanity: bool = True, skip_bad: bool = False,
                    on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every configuration on the same images; write ``compare.{json,md,html}`` into ``out_dir``.

    ``configs``: 'LAYER:METHOD;METHOD;...' (see :func:`parse_configs`; default
    ``DEFAULT_CONFIGS``) or a list of (method, layer). Each runs into ``out_dir/<label>/``.
    Returns the table (``rows`` in the order given). Raises UsageError on a bad config
    before any image is explained.
    """
    from fetalplanes.explain.pipeline import explain
    from fetalplanes.explain.sanity import SURVIVAL_RHO
    from fetalplanes.runtime import load_predictor

    todo = parse_configs(configs or DEFAULT_CONFIGS) if configs is None or isinstance(configs, str) else list(configs)
    out = Path(out_dir)
    spec = load_predictor(checkpoint).spec
    rows = []
    for method, layer in todo:
        name = label(method, layer)
        if on_progress:
            on_progress(name)
        log.info("compare: %s", name)
        summary = explain(checkpoint, out / _slug(name), inputs, data, split, method, None, masks, 0, limit,
                          layer=layer, aug_smooth=False, skip_bad=skip_bad, sanity=sanity)
        rows.append(row(summary, method, layer, _slug(name)))
    table = {
        "checkpoint": str(checkpoint), "model": spec.name,
        "train_seed": (spec.training or {}).get("seed"),  # the training seed the model file records
        "data": None if data is None else str(data), "split": split if data is not None else None,
        "n_images": rows[0]["n_images"] if rows else 0, "survival_threshold": SURVIVAL_RHO,
        "shipped_default": _shipped(spec), "rows": rows,
    }
    atomic.write_json(out / "compare.json", table)
    atomic.write_text(out / "compare.md", markdown(table))
    atomic.write_text(out / "compare.html", page(table))
    return table


def _shipped(spec) -> str:
    s = HeatMapSettings.from_spec(spec)
    return label(s.method, None if method_family(s.method) == ATTRIBUTION else s.layer)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(s: dict[str, Any] | None) -> str:
    return "n/a" if not s else f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def cells(r: dict[str, Any]) -> list[str]:
    """The row's cells, in the order of ``HEADERS``."""
    pg, en, sa = r.get("pointing_game"), r.get("energy_share"), r.get("sanity")

    def beats(key: str) -> str:
        if not pg:
            return "n/a"
        return "/".join("yes" if s[key] else "no" for s in (pg, en))

    return [r["label"], _ci(pg and pg["model"]), _ci(en and en["model"]), beats("beats_uniform"), beats("beats_centre"),
            _f(sa and sa["max_median"]), "n/a" if not sa else f"{sa['margin']:+.3f}",
            "n/a" if not sa else ("FLAGGED" if sa["flagged"] else "passes"), _f(r["seconds_per_image"])]


HEADERS = ["map", "pointing game [95 % CI]", "energy share [95 % CI]", "beats uniform (PG/energy)",
           "beats centre (PG/energy)", "max sanity median", "margin to threshold", "sanity", "s/img"]


def markdown(table: dict[str, Any]) -> str:
    """The table as Markdown, with the images, split, seed and threshold it was measured on."""
    lines = [f"Heat-map methods compared on {table['n_images']} image(s) (split {table['split']}, model "
             f"{table['model']}, training seed {table['train_seed']}; shipped default {table['shipped_default']}). "
             f"Sanity: the largest median Spearman over the randomizations; margin = {table['survival_threshold']} - it.",
             "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in table["rows"]]
    return "\n".join(lines) + "\n"


def page(table: dict[str, Any]) -> str:
    """A self-contained HTML page of the table, linking each row to its own report."""
    from fetalplanes.explain.report import CSS

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = ""
    for r in table["rows"]:
        c = [html.escape(x) for x in cells(r)]
        c[0] = f'<a href="{html.escape(r["folder"])}/index.html">{c[0]}</a>'
        body += "<tr>" + "".join(f"<td>{x}</td>" for x in c) + "</tr>"
    intro = html.escape(markdown(table).splitlines()[0])
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Heat-map methods compared</title>"
            f"<style>{CSS}</style></head><body><h1>Heat-map methods compared</h1><p class=\"note\">{intro}</p>"
            f"<table><tr>{head}</tr>{body}</table></body></html>\n")
