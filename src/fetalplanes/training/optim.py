"""The one optimizer rule of both training paths: parameter groups, AdamW, warm-up + cosine.

``PlaneModule.configure_optimizers`` builds its optimizer here, whether the module is fed
images (the Lightning path) or cached backbone features (the frozen fast path), so a change
to the rule reaches both.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters of ``model``.

    - No weight decay on biases and normalization scales (tensors with ``ndim <= 1``).
    - Discriminative learning rates for fine-tuning: parameters under ``backbone.`` learn at
      ``lr * backbone_lr_mult``, the new attention block and head at ``lr``.

    Frozen parameters (``requires_grad`` False) are left out. Empty groups are not returned.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("backbone."), p.ndim <= 1), []).append(p)
    return [
        {"params": ps, "lr": lr * (backbone_lr_mult if is_backbone else 1.0), "weight_decay": 0.0 if no_decay else weight_decay}
        for (is_backbone, no_decay), ps in groups.items()  # first-seen order: resumable with older checkpoints
    ]


def adamw(groups: list[dict[str, Any]], lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``groups``; ``fused`` asks for the one-kernel implementation when available.

    The fused kernel computes the same update with one op per tensor group: on the frozen fast
    path the steps are so small that the optimizer's per-tensor overhead was half of each step
    on CPU (docs/reproduce.md).
    """
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # device or torch build without the fused kernel
            pass
    return torch.optim.AdamW(groups, lr=lr)


def use_fused(inputs: str, device: torch.device | str) -> bool:
    """Whether a module's AdamW is the fused kernel: on the frozen fast path (``inputs ==
    "features"``: the optimizer's per-tensor overhead dominated its tiny steps) and on CUDA
    (one kernel launch per parameter group instead of several per tensor). Image training on
    the CPU keeps the reference implementation, so CPU results stay as they were."""
    return inputs == "features" or torch.device(device).type == "cuda"


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.01) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``floor`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
