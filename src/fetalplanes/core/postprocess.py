"""Logits -> calibrated probabilities, top-k and the abstain decision (numpy only).

Conventions every caller shares (``docs/metrics.md``):

- ``softmax`` works and returns float64. With float32, ``exp`` underflows to exactly 0 once a
  class trails the top logit by ~103 / T, and tied zeros reorder top-2; float64 underflows only
  past ~745 / T, so for the temperatures calibration can choose (T >= 0.05) the order of the
  probabilities is the order of the logits whenever the logits span less than ~37 and no two
  of them differ by only a few ulp (such near-ties can round to equal probabilities).
- ties: ``topk_indices`` ranks classes like ``sklearn.metrics.top_k_accuracy_score`` (stable
  sort, then reversed), so among equal probabilities the class with the higher index ranks first.
  ``decide`` (predict, serve, stream) and the evaluation metrics use this one rule.
- abstain: a prediction is withheld when its confidence is strictly below the threshold, so
  threshold 0 never abstains and a case exactly at the threshold is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fetalplanes.core.errors import DataError, UsageError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (numerically stable).

    ``logits``: (..., C) array; returns an array of the same shape, float64, rows summing to 1.
    Raises ``UsageError`` for a temperature that is not a positive finite number.
    """
    t = float(temperature)
    if not (t > 0 and np.isfinite(t)):
        raise UsageError(f"temperature must be a positive finite number, got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """(N, min(k, C)) class indices by decreasing probability; ties rank the higher index first.

    The order ``sklearn.metrics.top_k_accuracy_score`` uses (its docs: "the labels with the
    highest indices will be chosen first"), so top-k accuracy computed from these indices equals
    scikit-learn's, ties included.
    """
    probs = np.atleast_2d(np.asarray(probs))
    k = max(1, min(int(k), probs.shape[1]))
    return np.argsort(probs, axis=1, kind="stable")[:, ::-1][:, :k]


def top1(probs: np.ndarray) -> np.ndarray:
    """(N,) predicted class per row under the tie rule of ``topk_indices``."""
    return topk_indices(probs, 1)[:, 0]


@dataclass(frozen=True)
class Prediction:
    """One image's answer, shared by the CLI, the runtime and the web service."""

    label: str
    confidence: float
    topk: list[tuple[str, float]]
    probabilities: dict[str, float]
    abstain: bool

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "confidence": self.confidence,
            "topk": [{"label": c, "probability": p} for c, p in self.topk],
            "probabilities": self.probabilities,
            "abstain": self.abstain,
        }


def decide(
    probs: np.ndarray, class_names: Sequence[str], k: int = 2, abstain_threshold: float = 0.0
) -> list[Prediction]:
    """Turn a (N, C) probability matrix into Predictions with top-k and abstain flags.

    Raises ``DataError`` when C differs from the number of class names.
    """
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if probs.shape[1] != len(class_names):
        raise DataError(f"got {probs.shape[1]} probabilities per image but {len(class_names)} class names")
    order = topk_indices(probs, k)
    out = []
    for row, idx in zip(probs, order):
        top = [(class_names[i], float(row[i])) for i in idx]
        out.append(
            Prediction(
                label=top[0][0],
                confidence=top[0][1],
                topk=top,
                probabilities={c: float(p) for c, p in zip(class_names, row)},
                abstain=bool(top[0][1] < abstain_threshold),
            )
        )
    return out
