"""What a model costs: parameters, FLOPs of one image, size of its weights, CPU latency.

The one place these are measured: ``fetalplanes bench`` (``deploy.bench_models``), the
``reproduce`` results table (``reproduce.runner.measure_costs``), the training log and
``PlaneClassifier.param_counts`` all call these functions.

- Parameters: total and trainable (``requires_grad``) element counts.
- FLOPs: one forward pass at batch 1, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products only; 2 FLOPs per multiply-accumulate). Input values do
  not change the count, so a zero image is used.
- Weights: the bytes ``torch.save(model.state_dict())`` writes (what a ``.pt`` file holds).
- Latency: wall time of one eager forward pass at batch 1 under ``torch.inference_mode``,
  after warm-up passes, on ``threads`` intra-op threads (torch's count is process-wide: it is
  set for the measurement and restored after).

torch is imported inside the functions: importing this module (e.g. with the bench command's
model table) stays cheap.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """``{"total": n, "trainable": n}``: parameter elements, all and those with ``requires_grad``."""
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def _image(image_size: int) -> torch.Tensor:
    import torch

    return torch.zeros(1, 3, image_size, image_size)


def flops_per_image(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass of a (1, 3, S, S) image (conv + matmul; 2 FLOPs per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(_image(image_size))
    return int(counter.get_total_flops())


def weights_bytes(model: torch.nn.Module) -> int:
    """Size of the model's weights as ``torch.save`` writes them, in bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def latency_ms(model: torch.nn.Module, image_size: int, runs: int = 7, threads: int = 1, warmup: int = 2) -> list[float]:
    """Milliseconds of each of ``runs`` (at least 1) timed forward passes of a (1, 3, S, S) image,
    after ``warmup`` untimed ones, on ``threads`` intra-op threads (restored afterwards)."""
    import torch

    x = _image(image_size)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            times = []
            for _ in range(max(1, runs)):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(before)
    return times
