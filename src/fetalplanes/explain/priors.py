"""Does the heat map beat a map that ignores the image? Localization against trivial priors.

A pointing-game hit rate or an energy share means little alone: if the structures sit near
the middle of the images, a centred blob that never looks at a pixel scores well too. This
module puts the model's two scores beside those of two model-free maps, on the same images:

- ``uniform``: a flat map. Its energy share is the mask's area fraction; its peak is a
  uniformly random pixel, so its expected hit is also the area fraction;
- ``centre``: the centred Gaussian of :func:`fetalplanes.explain.localization.center_prior`
  (sigma = 1/4 of each side), "always look at the middle".

Each mean comes with a 95 % percentile bootstrap interval over images
(``scipy.stats.bootstrap``, paired: every resample draws the same images for all maps), and
each model-vs-prior comparison with the interval of the paired difference. The verdict is
strict: the model *beats* a prior on a score only when its interval lies entirely above the
prior's (non-overlapping intervals); anything else is said plainly as "does not beat".

Scores come from :mod:`fetalplanes.explain.localization` (``pointing_hit``,
``energy_share``, ``center_prior``), never re-implemented here. A map with no mass (all zero)
points nowhere and shares nothing: such images are left out of both scores, for the model and
the priors alike (``n_empty_maps`` says how many).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fetalplanes.explain import localization as loc

PRIORS: tuple[str, ...] = ("uniform", "centre")
SCORES: tuple[str, ...] = ("pointing_game", "energy_share")
N_RESAMPLES = 2000
CONFIDENCE = 0.95


def score_row(cam: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Per-image values of the model's map and both priors against one boolean (H, W) mask.

    Returns ``{"empty": bool, "area": float, "model": {"hit", "energy"}, "uniform": {...},
    "centre": {...}}``; for a constant (e.g. all-zero) ``cam`` the model's hit is None and the row is ``empty``. Raises
    ValueError when the shapes differ.
    """
    mask = np.asarray(mask, dtype=bool)
    area = float(mask.mean())
    prior = loc.center_prior(mask.shape)
    energy = loc.energy_share(cam, mask)
    hit = loc.pointing_hit(cam, mask)  # None for a constant map: it has no peak to point with
    empty = energy is None or hit is None
    return {
        "empty": empty,
        "area": area,
        "model": {"hit": None if hit is None else float(hit), "energy": energy},
        "uniform": {"hit": area, "energy": area},
        "centre": {"hit": float(loc.pointing_hit(prior, mask)), "energy": loc.energy_share(prior, mask)},
    }


def _interval(values: np.ndarray, rng: np.random.Generator) -> list[float]:
    from scipy.stats import bootstrap

    if len(values) < 2 or np.ptp(values) == 0:  # a constant sample: the interval is the point
        return [float(values.mean()), float(values.mean())] if len(values) else [float("nan")] * 2
    res = bootstrap((values,), np.mean, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                    method="percentile", rng=rng)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def _compare_score(rows: Sequence[dict[str, Any]], key: str, seed: int) -> dict[str, Any]:
    maps = {name: np.array([r[name][key] for r in rows], dtype=float) for name in ("model", *PRIORS)}
    out: dict[str, Any] = {}
    for name, values in maps.items():
        # Same seed for every map: the resampled image sets are the same (a paired bootstrap).
        out[name] = {"mean": float(values.mean()), "ci95": _interval(values, np.random.default_rng(seed))}
    for prior in PRIORS:
        diff = maps["model"] - maps[prior]
        lo, hi = out["model"]["ci95"][0], out[prior]["ci95"][1]
        out[f"vs_{prior}"] = {
            "difference": float(diff.mean()),
            "difference_ci95": _interval(diff, np.random.default_rng(seed)),
            "beats": bool(lo > hi),  # non-overlapping intervals, model above
        }
    return out


def compare(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Model vs priors over the per-image rows of :func:`score_row`, with 95 % intervals.

    Returns ``{"n", "n_empty_maps", "pointing_game": {...}, "energy_share": {...},
    "beats_priors": bool, "verdict": str, "method": str}``; each score holds ``model``,
    ``uniform``, ``centre`` (``mean``, ``ci95``) and ``vs_uniform``/``vs_centre``
    (``difference``, ``difference_ci95``, ``beats``). ``{"n": 0, ...}`` when no row is usable.
    Deterministic for a given ``seed``.
    """
    usable = [r for r in rows if not r["empty"]]
    out: dict[str, Any] = {"n": len(usable), "n_empty_maps": len(rows) - len(usable), "unit": "image"}
    if not usable:
        out.update(beats_priors=False, verdict="the heat map does NOT beat the priors: no image has a mask and a non-empty (non-constant) map")
        return out
    for key, score in (("hit", "pointing_game"), ("energy", "energy_share")):
        out[score] = _compare_score(usable, key, seed)
    out["beats_priors"] = all(out[s][f"vs_{p}"]["beats"] for s in SCORES for p in PRIORS)
    out["verdict"] = verdict(out)
    out["method"] = (
        f"mean over images; {int(CONFIDENCE * 100)} % percentile bootstrap intervals ({N_RESAMPLES} paired "
        f"resamples of the images, seed {seed}); 'beats' = the model's interval lies entirely above the prior's"
    )
    return out


def verdict(summary: dict[str, Any]) -> str:
    """One plain sentence per failed comparison, or one saying the model beats both priors."""
    fails = []
    for score in SCORES:
        s = summary[score]
        m = s["model"]
        for prior in PRIORS:
            if not s[f"vs_{prior}"]["beats"]:
                p = s[prior]
                fails.append(
                    f"the heat map does NOT beat the {prior} prior on {score.replace('_', ' ')}: "
                    f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] vs "
                    f"{p['mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"
                )
    if not fails:
        pg, en = summary["pointing_game"], summary["energy_share"]
        return (
            f"the heat map beats the uniform and centre priors on both scores (non-overlapping 95 % intervals): "
            f"pointing game {pg['model']['mean']:.3f} vs centre {pg['centre']['mean']:.3f}, "
            f"energy share {en['model']['mean']:.3f} vs centre {en['centre']['mean']:.3f}"
        )
    return "; ".join(fails)


def lines(summary: dict[str, Any]) -> list[str]:
    """Short human-readable lines (CLI, demo log): one per score, then the verdict."""
    if not summary.get("n"):
        return [summary.get("verdict", "no localization")]
    out = []
    for score in SCORES:
        s = summary[score]
        parts = [f"{name} {s[name]['mean']:.3f} [{s[name]['ci95'][0]:.3f}, {s[name]['ci95'][1]:.3f}]"
                 for name in ("model", *PRIORS)]
        out.append(f"{score.replace('_', ' ')}: " + ", ".join(parts))
    # The intervals resample images, not patients (several images of a patient are not
    # independent, so they are narrower than a patient-level interval would be): say so.
    out[-1] += f" (95 % intervals over {summary['n']} images, not patients)"
    out.append(summary["verdict"])
    return out
