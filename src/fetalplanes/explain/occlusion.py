"""Occlusion sensitivity: a model-agnostic cross-check of the gradient-based maps.

Slide a square patch over the model input, replace it with a fill value, and record how much
the target class probability drops. Unlike Grad-CAM it needs no gradients and no target
layer, so agreement between the two is evidence that a heat map is not an artefact of one
layer's gradients. pytorch-grad-cam has no occlusion method, hence this small batched version.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fetalplanes.core.errors import UsageError
from fetalplanes.core.postprocess import softmax, top1
from fetalplanes.core.preprocess import preprocess
from fetalplanes.explain.cam import build_result, resolve_target
from fetalplanes.explain.result import CamResult

FILLS = ("mean", "black")


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins covering [0, size) with the last window flush with the edge."""
    if not 0 < patch <= size or stride <= 0:
        raise UsageError(f"occlusion needs 0 < patch <= {size} and stride > 0, got patch={patch}, stride={stride}")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _fill_value(x: torch.Tensor, fill: str | float, spec) -> torch.Tensor:
    if fill == "mean":  # the image's own mean: removes structure without adding contrast
        return x.mean(dim=(1, 2), keepdim=True)
    if fill == "black":  # anechoic (no echo) in the model's normalized units
        mean = torch.tensor(spec.preprocessing.mean, dtype=x.dtype)[:, None, None]
        std = torch.tensor(spec.preprocessing.std, dtype=x.dtype)[:, None, None]
        return (0.0 - mean) / std
    if isinstance(fill, (int, float)):
        return torch.full((x.shape[0], 1, 1), float(fill), dtype=x.dtype)
    raise UsageError(f"unknown occlusion fill {fill!r}; choose one of {list(FILLS)} or a number")


@torch.inference_mode()
def occlusion_map(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int,
    spec,
    patch: int,
    stride: int,
    fill: str | float = "mean",
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """(sensitivity (S, S) >= 0, unoccluded probabilities (C,)) for one input (3, S, S)."""
    size = x.shape[-1]
    value = _fill_value(x, fill, spec)
    starts = [(r, c) for r in window_starts(size, patch, stride) for c in window_starts(size, patch, stride)]
    base = softmax(model(x[None]).float().cpu().numpy(), spec.temperature)[0]
    drops = []
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = x[None].repeat(len(chunk), 1, 1, 1)
        for j, (r, c) in enumerate(chunk):
            batch[j, :, r : r + patch, c : c + patch] = value
        probs = softmax(model(batch).float().cpu().numpy(), spec.temperature)
        drops.append(base[target] - probs[:, target])
    drop = np.concatenate(drops)
    total = np.zeros((size, size), dtype=np.float64)
    count = np.zeros((size, size), dtype=np.float64)
    for d, (r, c) in zip(drop, starts):
        total[r : r + patch, c : c + patch] += d
        count[r : r + patch, c : c + patch] += 1
    sens = np.clip(total / np.maximum(count, 1), 0.0, None)  # only evidence FOR the class
    return sens.astype(np.float32), base


def compute_occlusion(
    model: torch.nn.Module,
    spec,
    image: Image.Image,
    target: str | int | None = None,
    patch: int | None = None,
    stride: int | None = None,
    fill: str | float = "mean",
    batch_size: int = 32,
) -> CamResult:
    """Occlusion map for one image as a CamResult (method 'occlusion'), at the image's size.

    Defaults: patch = 1/8 of the input side (at least 4 px), stride = half a patch.
    """
    size = spec.preprocessing.image_size
    patch = patch or max(4, size // 8)
    stride = stride or max(1, patch // 2)
    x = torch.from_numpy(preprocess(image, spec.preprocessing))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            logits = model(x[None].to(device)).float().cpu().numpy()
        idx = resolve_target(target, spec.class_names, int(top1(logits[0])[0]))
        sens, probs = occlusion_map(model, x.to(device), idx, spec, patch, stride, fill, batch_size)
    finally:
        model.train(was_training)
    peak = float(sens.max())
    cam = sens / peak if peak > 0 else sens
    return build_result(cam, image, spec, probs, idx, "occlusion", {"patch": patch, "stride": stride, "fill": fill})
