"""Choose a model's default heat map: the best localization among maps that pass their own checks.

The rule (issue 22; docs/explain.md), applied to ``explain --compare`` tables
(``explain.compare``) measured on the VALIDATION split of models trained with at least
``MIN_SEEDS`` different training seeds:

1. a candidate is a (method, layer) present in every table; the ``random`` CAM is a control
   and never a candidate;
2. it is **eligible** when, in EVERY table, its sanity checks ran and each randomization's
   median Spearman is at most ``SURVIVAL_RHO - MARGIN`` (it passes every sanity check with a
   margin, not just under the threshold), and it has a localization score;
3. among the eligible, the highest mean energy share over the tables wins (ties: the higher
   mean pointing game). Energy share, because it uses the whole map, where the pointing game
   uses one pixel and is coarser on small splits.

When no candidate is eligible the answer is "none passes", with every candidate's reasons.
Torch-free: it reads JSON tables only.
"""

from __future__ import annotations

from typing import Any, Sequence

from fetalplanes.core.cam_methods import CONTROL_METHODS

SURVIVAL_RHO = 0.5  # = explain.sanity.SURVIVAL_RHO (a test keeps them equal; this module stays torch- and scipy-free)
MARGIN = 0.1
MIN_SEEDS = 3
SPLIT = "val"
RULE = (f"eligible: present in every table, sanity checks run in every table and every randomization's median "
        f"Spearman <= {SURVIVAL_RHO} - {MARGIN} in every table (>= {MIN_SEEDS} training seeds, split '{SPLIT}'), "
        f"not a control ({', '.join(CONTROL_METHODS)}); chosen: the highest mean energy share over the tables "
        "(ties: mean pointing game)")


def _table_problems(tables: Sequence[dict[str, Any]], min_seeds: int) -> list[str]:
    problems = [f"table {i} (seed {t.get('train_seed')}) is on split {t.get('split')!r}, not {SPLIT!r}: a default "
                "is never chosen on test" for i, t in enumerate(tables) if t.get("split") != SPLIT]
    seeds = {t.get("train_seed") for t in tables if t.get("train_seed") is not None}
    if len(seeds) < min_seeds:
        problems.append(f"tables from {len(seeds)} distinct training seed(s) {sorted(seeds)}; the rule needs >= {min_seeds}")
    return problems


def _reasons(rows: list[dict[str, Any] | None], seeds: list[Any], limit: float) -> list[str]:
    reasons = []
    for seed, r in zip(seeds, rows):
        if r is None:
            reasons.append(f"seed {seed}: not measured")
            continue
        sanity = r.get("sanity")
        if not sanity:
            reasons.append(f"seed {seed}: no sanity checks")
        else:
            for name, median in sanity["medians"].items():
                if median is None or median > limit:
                    shown = "n/a" if median is None else f"{median:.3f}"
                    reasons.append(f"seed {seed}: {name}: median Spearman {shown} > {limit:.2f}")
        if not r.get("energy_share"):
            reasons.append(f"seed {seed}: no localization (no masks)")
    return reasons


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def select_default(tables: Sequence[dict[str, Any]], margin: float = MARGIN, min_seeds: int = MIN_SEEDS) -> dict[str, Any]:
    """Apply the module's rule to compare tables (``explain.compare.compare_methods`` output).

    Returns ``{"chosen": {"method", "layer", "label", "energy_share", "pointing_game"} | None,
    "verdict": str, "candidates": [{"label", "eligible", "reasons", "energy_share",
    "pointing_game", "worst_margin"}], "problems": [...], "rule": str, "seeds": [...]}``.
    ``chosen`` is None ("none passes") when the tables do not qualify (split, seeds) or no
    candidate is eligible; ``verdict`` says why in one sentence.
    """
    limit = SURVIVAL_RHO - margin
    seeds = [t.get("train_seed") for t in tables]
    problems = _table_problems(tables, min_seeds) if tables else ["no compare tables"]
    labels = list(dict.fromkeys(r["label"] for t in tables for r in t["rows"]))
    candidates = []
    for name in labels:
        rows = [next((r for r in t["rows"] if r["label"] == name), None) for t in tables]
        present = [r for r in rows if r is not None]
        reasons = (["a control, never a default"] if present[0]["method"] in CONTROL_METHODS else []) + _reasons(rows, seeds, limit)
        scored = [r for r in present if r.get("energy_share")]
        margins = [r["sanity"]["margin"] for r in present if r.get("sanity")]
        candidates.append({
            "label": name, "method": present[0]["method"], "layer": present[0]["layer"], "eligible": not reasons,
            "reasons": reasons,
            "energy_share": _mean([r["energy_share"]["model"]["mean"] for r in scored]) if scored else None,
            "pointing_game": _mean([r["pointing_game"]["model"]["mean"] for r in scored]) if scored else None,
            "worst_margin": min(margins) if margins else None,
        })
    eligible = [c for c in candidates if c["eligible"]] if not problems else []
    chosen = max(eligible, key=lambda c: (c["energy_share"], c["pointing_game"])) if eligible else None
    return {"chosen": None if chosen is None else {k: chosen[k] for k in ("method", "layer", "label", "energy_share",
                                                                            "pointing_game")},
            "verdict": _verdict(chosen, candidates, problems, limit), "candidates": candidates, "problems": problems,
            "rule": RULE if margin == MARGIN and min_seeds == MIN_SEEDS else f"{RULE} (margin {margin}, {min_seeds} seeds)",
            "seeds": seeds}


def _verdict(chosen: dict[str, Any] | None, candidates: list[dict[str, Any]], problems: list[str], limit: float) -> str:
    if problems:
        return "NONE chosen: " + "; ".join(problems)
    if chosen is None:
        return (f"NONE passes: no method/layer keeps every sanity median <= {limit:.2f} in every seed "
                f"({len(candidates)} candidate(s); see their reasons)")
    return (f"{chosen['label']}: passes every sanity check with margin in every seed (worst margin "
            f"{chosen['worst_margin']:+.3f}) and has the highest mean energy share among those that do "
            f"({chosen['energy_share']:.3f})")


def check_shipped(sanity: dict[str, Any] | None, method_label: str, margin: float = MARGIN) -> dict[str, Any]:
    """Does the shipped default pass its own sanity check on this run? A plain statement for a summary.

    ``sanity``: an ``explain.sanity`` report. Returns ``{"status": 'passes' | 'passes without
    margin' | 'FLAGGED' | 'not checked', "statement": str}``.
    """
    if not sanity or not sanity.get("checks"):
        return {"status": "not checked", "statement": f"the shipped heat map ({method_label}) was not sanity-checked"}
    worst = max(sanity["checks"], key=lambda c: c["spearman_median"])
    med = worst["spearman_median"]
    if sanity["flagged"]:
        return {"status": "FLAGGED", "statement": (
            f"the shipped heat map ({method_label}) is FLAGGED by its own sanity check on this run: it survives "
            f"{worst['name']} (median Spearman {med:.3f} >= {SURVIVAL_RHO}); its maps do not show what this model "
            "learned and must not be read as explanations")}
    if med > SURVIVAL_RHO - margin:
        return {"status": "passes without margin", "statement": (
            f"the shipped heat map ({method_label}) passes its sanity check on this run only narrowly: {worst['name']} "
            f"median Spearman {med:.3f}, within {margin} of the {SURVIVAL_RHO} threshold (the selection rule needs "
            f"<= {SURVIVAL_RHO - margin:.2f})")}
    return {"status": "passes", "statement": (
        f"the shipped heat map ({method_label}) passes its sanity check on this run with margin (largest median "
        f"Spearman {med:.3f}, {worst['name']}; threshold {SURVIVAL_RHO})")}
