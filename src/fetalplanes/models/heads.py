"""Classification heads: pooled features -> logits."""

from __future__ import annotations

from typing import Sequence

from torch import nn


class MLPHead(nn.Sequential):
    """Perceptron head: Linear-ReLU-Dropout per hidden width, then the output Linear.

    ``hidden=(512, 256)`` gives the paper's 3-layer perceptron; ``hidden=()`` gives a plain
    linear head (the baseline/ablation).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.3):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = int(h)
        if not hidden and dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.in_features, self.num_classes = in_features, num_classes
