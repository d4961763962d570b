"""Logits -> calibrated probabilities, top-k and the abstain decision (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


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
    """Turn a (N, C) probability matrix into Predictions with top-k and abstain flags."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if probs.shape[1] != len(class_names):
        raise ValueError(f"got {probs.shape[1]} probabilities per image but {len(class_names)} class names")
    k = max(1, min(int(k), len(class_names)))
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        top = [(class_names[i], float(row[i])) for i in order]
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
