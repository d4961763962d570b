"""Batch inference of a torch model over Samples or files, with the shared preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.records import Sample
from fetalplanes.data.torch_data import EpochSampler, ImageDataset


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module, spec: ModelSpec, samples: Sequence[Sample], batch_size: int = 32, num_workers: int = 0
) -> np.ndarray:
    """(N, C) logits for ``samples`` in order (eval mode, channels_last on CPU)."""
    ds = ImageDataset(samples, spec.preprocessing)
    loader = DataLoader(ds, batch_size=batch_size, sampler=EpochSampler(len(ds), shuffle=False), num_workers=num_workers)
    model = model.eval().to(memory_format=torch.channels_last)
    out = [model(x.contiguous(memory_format=torch.channels_last)).float() for x, _ in loader]
    return torch.cat(out).numpy() if out else np.zeros((0, spec.num_classes), dtype=np.float32)


def samples_from_paths(paths: Sequence[str | Path]) -> list[Sample]:
    """Unlabelled samples (label -1) for prediction on arbitrary files or folders."""
    from fetalplanes.core.io import list_images

    out: list[Sample] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [Sample(f, -1) for f in list_images(p)]
        elif p.exists():
            out.append(Sample(p, -1))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], k: int = 2, batch_size: int = 32):
    """[(path, Prediction)] for files/folders, using the checkpoint's spec end to end."""
    from fetalplanes.core.postprocess import decide, softmax
    from fetalplanes.models.checkpoint import load_checkpoint

    model, spec = load_checkpoint(checkpoint)
    samples = samples_from_paths(inputs)
    if not samples:
        raise ValueError(f"no images found in {[str(i) for i in inputs]}")
    probs = softmax(predict_logits(model, spec, samples, batch_size), spec.temperature)
    preds = decide(probs, spec.class_names, k, spec.abstain_threshold)
    return [(s.path, p) for s, p in zip(samples, preds)], spec
