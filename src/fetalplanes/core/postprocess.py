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
- state: every answer is exactly one of ``out_of_distribution`` (the model's OOD gate scored the
  input strictly above its threshold: "not a fetal plane"; ``core.ood``), ``abstain`` (low
  confidence) or ``plane`` (the label stands). The gate is checked first. ``abstain`` keeps its
  meaning (confidence below the threshold) whatever the state. The attribute ``label`` is always
  the top class; what every answer *reports* as the plane is ``Prediction.plane``: the top class
  for ``plane`` and ``abstain`` (a suggestion, flagged), None for ``out_of_distribution``, whose
  top class is reported only as ``nearest_plane`` (so no output of a rejected input carries a
  plane that reads like a classification). A model without an OOD gate says so (``ood_gate`` False).
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


STATES = ("plane", "abstain", "out_of_distribution")
NOT_A_PLANE = "not a fetal plane"


@dataclass(frozen=True)
class Prediction:
    """One image's answer, shared by the CLI, the runtime and the web service (states: module docstring)."""

    label: str
    confidence: float
    topk: list[tuple[str, float]]
    probabilities: dict[str, float]
    abstain: bool
    ood: bool = False
    ood_score: float | None = None
    ood_threshold: float | None = None
    ood_gate: bool = False

    @property
    def state(self) -> str:
        """``out_of_distribution``, ``abstain`` or ``plane``."""
        return "out_of_distribution" if self.ood else "abstain" if self.abstain else "plane"

    @property
    def plane(self) -> str | None:
        """The plane an answer reports: the top class, or None when out of distribution."""
        return None if self.ood else self.label

    @property
    def nearest_plane(self) -> str | None:
        """The top class of an out-of-distribution input (None otherwise): the closest plane, not an answer."""
        return self.label if self.ood else None

    @property
    def accepted(self) -> bool:
        """True when the label stands (neither out of distribution nor abstained)."""
        return self.state == "plane"

    def verdict(self) -> str:
        """One short line for people: the plane, or why there is none."""
        if self.ood:
            return f"{NOT_A_PLANE} (OOD score {self.ood_score:.3g} > threshold {self.ood_threshold:.3g})"
        if self.abstain:
            return f"abstain (low confidence {self.confidence:.3f}; top class {self.label})"
        return f"{self.label} {self.confidence:.3f}"

    def to_dict(self) -> dict:
        return {
            "label": self.plane,
            "nearest_plane": self.nearest_plane,
            "confidence": self.confidence,
            "topk": [{"label": c, "probability": p} for c, p in self.topk],
            "probabilities": self.probabilities,
            "abstain": self.abstain,
            "state": self.state,
            "ood": {"gate": self.ood_gate, "out_of_distribution": self.ood, "score": self.ood_score,
                    "threshold": self.ood_threshold} if self.ood_gate else {"gate": False, "note": "no OOD gate in this model file"},
        }


def decide(
    probs: np.ndarray, class_names: Sequence[str], k: int = 2, abstain_threshold: float = 0.0,
    ood_scores: np.ndarray | None = None, ood_threshold: float | None = None,
) -> list[Prediction]:
    """Turn a (N, C) probability matrix into Predictions with top-k, abstain and OOD flags.

    ``ood_scores`` (N,) and ``ood_threshold``: the model's OOD gate (``core.ood``); None when the
    model has none. Raises ``DataError`` when C differs from the number of class names, or when
    the number of OOD scores differs from the number of rows.
    """
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if probs.shape[1] != len(class_names):
        raise DataError(f"got {probs.shape[1]} probabilities per image but {len(class_names)} class names")
    gate = ood_scores is not None and ood_threshold is not None
    scores = np.asarray(ood_scores, dtype=np.float64).reshape(-1) if gate else np.full(len(probs), np.nan)
    if len(scores) != len(probs):
        raise DataError(f"got {len(scores)} OOD scores for {len(probs)} images")
    order = topk_indices(probs, k)
    out = []
    for row, idx, score in zip(probs, order, scores):
        top = [(class_names[i], float(row[i])) for i in idx]
        gate_fields = dict(ood=bool(not score <= ood_threshold), ood_score=float(score),
                           ood_threshold=float(ood_threshold), ood_gate=True) if gate else {}
        out.append(
            Prediction(
                label=top[0][0],
                confidence=top[0][1],
                topk=top,
                probabilities={c: float(p) for c, p in zip(class_names, row)},
                abstain=bool(top[0][1] < abstain_threshold),
                **gate_fields,
            )
        )
    return out
