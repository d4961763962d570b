"""Shared fixtures of the explain tests: a toy model whose evidence sits in a known box."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class RegionModel(nn.Module):
    """Class 'a' logit = 8 x mean brightness of a fixed square of the input (all channels); the
    other two logits are 0. A map that explains it must point at the square."""

    def __init__(self, box: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.box = box
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r0, r1, c0, c1 = self.box
        a = 8.0 * x[:, :, r0:r1, c0:c1].mean(dim=(1, 2, 3))
        return torch.stack([a, torch.zeros_like(a), torch.zeros_like(a)], dim=1) + self.dummy


@pytest.fixture()
def region_model() -> type[RegionModel]:
    """The :class:`RegionModel` class (build it with the box, rows r0:r1 and columns c0:c1)."""
    return RegionModel
