"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A heat map that explains a model must change when the model changes. Each check here
re-computes the maps of the same images, for the same explained class, with a damaged model
and compares every map with the trained model's by Spearman rank correlation
(``scipy.stats.spearmanr`` over the map's pixels, subsampled to at most ``MAX_PIXELS``):

- **cascading model-parameter randomization** (the paper's Sec. 3.1), top layers first:
  the MLP head, then head + attention block, then the whole model (every layer re-drawn
  with its default initialization, BatchNorm statistics reset);
- **data randomization, cheap variant** (the paper's Sec. 3.2 retrains the whole model on
  permuted labels to convergence; too slow for a CPU check): the head is re-drawn and
  trained, on the pooled features of the explained images themselves, to fit a random
  permutation of their labels (true labels when known, else the trained model's
  predictions), ``PERMUTED_STEPS`` full-batch Adam steps. Backbone and attention keep their
  trained weights, so this tests whether the map depends on what the head learned.

A randomization is *survived* when the median rank correlation over images is at least
``SURVIVAL_RHO``; maps that survive any randomization are **flagged** as not explaining the
model (they follow the image or the architecture, not the learned decision). A map that
becomes constant has no ranking: its correlation is reported as None and counts as 0 in the
median (it certainly changed). With fewer than ``MIN_IMAGES`` images the verdict says that a
median over so few maps is indicative only (``small_sample``).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Sequence

import numpy as np

from fetalplanes.core.preprocess import preprocess

from fetalplanes.explain.maps import compute_map

log = logging.getLogger(__name__)

SURVIVAL_RHO = 0.5
MAX_PIXELS = 4096
PERMUTED_STEPS = 100
MIN_IMAGES = 10  # below this, one odd image moves the median: say so beside the verdict
REFERENCE = "Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018"
# (name, sub-modules re-drawn; None = the whole model), top of the network first.
CASCADE: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("head", ("head",)),
    ("head+attention", ("head", "attention")),
    ("whole model", None),
)

MapFn = Callable[[Any, Any, str], np.ndarray]  # (model, PIL image, target class name) -> (H, W) map


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two same-shape maps; None when either is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"map shapes differ: {a.shape} vs {b.shape}")
    step = max(1, int(np.ceil(np.sqrt(a.size / MAX_PIXELS))))
    a, b = a[::step, ::step].ravel(), b[::step, ::step].ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def randomized_copy(model, parts: Sequence[str] | None, seed: int = 0):
    """A deep copy of ``model`` with ``parts`` (sub-module names; None = all) re-initialized.

    Every sub-module with ``reset_parameters`` gets its default initialization (drawn under a
    private torch RNG seeded with ``seed``); BatchNorm running statistics are reset too. The
    original model is not touched. Raises ValueError naming a missing part.
    """
    import torch

    clone = copy.deepcopy(model)
    roots = [clone]
    if parts is not None:
        try:
            roots = [clone.get_submodule(p) for p in parts]
        except AttributeError:
            have = [n for n, _ in clone.named_children()]
            raise ValueError(f"cannot randomize {list(parts)}: the model's parts are {have}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for root in roots:
            for sub in root.modules():
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
    return clone.eval()


def permuted_label_copy(model, inputs, labels: Sequence[int], seed: int = 0, steps: int = PERMUTED_STEPS):
    """(copy of ``model`` whose head was re-drawn and fit to permuted labels, its train accuracy).

    ``inputs``: the preprocessed images (N, 3, S, S) float tensor; ``labels``: N class indices.
    Needs the PlaneClassifier interface (``forward_features``, ``head``). The accuracy is on
    the permuted labels: near 1 means the head memorized them.
    """
    import torch

    clone = randomized_copy(model, ("head",), seed)
    rng = np.random.default_rng(seed)
    target = torch.as_tensor(rng.permutation(np.asarray(labels, dtype=np.int64)))
    with torch.no_grad():  # in chunks: a whole folder at once would not fit in memory
        pooled = torch.cat([clone.forward_features(inputs[i:i + 16]).mean(dim=(2, 3))
                            for i in range(0, len(inputs), 16)])
    head = clone.head
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        head.train()
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(pooled), target)
            loss.backward()
            opt.step()
    clone.eval()
    with torch.no_grad():
        acc = float((head(pooled).argmax(1) == target).float().mean())
    return clone, acc


def _summary(name: str, rhos: list[float | None], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    filled = np.array([0.0 if r is None else r for r in rhos])
    median = float(np.median(filled)) if len(filled) else None
    return {
        "name": name,
        "spearman_median": median,
        "spearman_mean": float(filled.mean()) if len(filled) else None,
        "spearman_quartiles": [float(np.percentile(filled, 25)), float(np.percentile(filled, 75))] if len(filled) else None,
        "n_constant_maps": sum(r is None for r in rhos),
        "survives": bool(median is not None and median >= SURVIVAL_RHO),
        "per_image": rhos,
        **(extra or {}),
    }


def run_checks(model, images: Sequence[Any], trained: Sequence[np.ndarray], targets: Sequence[str], map_fn: MapFn,
               labels: Sequence[int] | None = None, inputs=None, seed: int = 0) -> dict[str, Any]:
    """Re-compute the maps under each randomization and compare them with ``trained``.

    ``images``: the PIL images; ``trained``: the trained model's maps (H, W), same order;
    ``targets``: the class name each map explains (kept for every randomized model);
    ``map_fn(model, image, target)``: how a map is made (e.g. ``compute_cam(...).cam``);
    ``labels`` + ``inputs`` (preprocessed batch): enable the permuted-label check.
    Returns the JSON-ready report (see module docstring).
    """
    if not (len(images) == len(trained) == len(targets)):
        raise ValueError("images, trained maps and targets must have the same length")
    checks = []
    for name, parts in CASCADE:
        if parts is not None and not all(hasattr(model, p) for p in parts):
            log.info("sanity: skipping the '%s' randomization (the model has no %s)", name, parts)
            continue
        damaged = randomized_copy(model, parts, seed)
        rhos = [spearman(m, map_fn(damaged, im, t)) for im, m, t in zip(images, trained, targets)]
        checks.append(_summary(f"cascade: {name} randomized", rhos, {"randomized": list(parts or ["all"])}))
        log.info("sanity: %s randomized -> median Spearman %.3f", name, checks[-1]["spearman_median"])
    if labels is not None and inputs is not None and hasattr(model, "head") and len(set(labels)) > 1:
        damaged, acc = permuted_label_copy(model, inputs, labels, seed)
        rhos = [spearman(m, map_fn(damaged, im, t)) for im, m, t in zip(images, trained, targets)]
        checks.append(_summary("labels permuted (head re-drawn and fit to permuted labels)", rhos, {
            "randomized": ["head"], "steps": PERMUTED_STEPS, "train_accuracy_on_permuted_labels": acc}))
    flagged = [c["name"] for c in checks if c["survives"]]
    small = len(images) < MIN_IMAGES
    verdict = _verdict(checks, flagged)
    if small and checks:
        verdict += (f"; only {len(images)} image(s): a median over fewer than {MIN_IMAGES} maps is indicative, "
                    "not evidence")
    return {
        "reference": REFERENCE,
        "n_images": len(images),
        "survival_threshold": SURVIVAL_RHO,
        "checks": checks,
        "flagged": bool(flagged),
        "small_sample": small,
        "verdict": verdict,
    }


def _verdict(checks: list[dict[str, Any]], flagged: list[str]) -> str:
    if not checks:
        return "no randomization could be applied to this model"
    if flagged:
        return ("FLAGGED: the maps survive " + "; ".join(flagged) + f" (median Spearman >= {SURVIVAL_RHO}): "
                "they do not explain what the model learned")
    worst = max(checks, key=lambda c: c["spearman_median"])
    return (f"the maps change under every randomization (highest median Spearman {worst['spearman_median']:.3f}, "
            f"{worst['name']}; threshold {SURVIVAL_RHO})")


def check_explanations(model, spec, images: Sequence[Any], results: Sequence[Any], method: str,
                       layer: str | None = None, aug_smooth: bool = False, labels: Sequence[int | None] | None = None,
                       seed: int = 0) -> dict[str, Any]:
    """:func:`run_checks` for maps made by ``explain.maps.compute_map`` (what ``fetalplanes explain`` draws:
    a CAM or a captum input attribution; the randomized models are explained the same way).

    ``results``: the trained model's CamResults for ``images`` (their ``cam`` and ``target``);
    ``labels``: class indices in ``spec.class_names`` order for the permuted-label check
    (None entries, or None: the trained model's predictions are used instead).
    """
    import torch

    def map_fn(m, image, target: str) -> np.ndarray:
        return compute_map(m, spec, image, method, target, layer=layer, aug_smooth=aug_smooth).cam

    predicted = [list(spec.class_names).index(r.label) for r in results]
    labels = predicted if labels is None else [p if lab is None else lab for lab, p in zip(labels, predicted)]
    inputs = torch.from_numpy(np.stack([preprocess(im, spec.preprocessing) for im in images]))
    report = run_checks(model, images, [r.cam for r in results], [r.target for r in results], map_fn, labels, inputs, seed)
    report.update(method=method, layer=layer, aug_smooth=aug_smooth)
    return report
