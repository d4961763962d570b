"""Torch datasets and samplers over Samples, with resume-exact randomness.

The sampler yields ``epoch * N + index`` keys so the dataset knows the epoch inside worker
processes; both the shuffle order and each image's augmentation (``data.augment``) are seeded
from ``(seed, epoch, index)``. A run resumed from an epoch-end checkpoint therefore sees exactly
the batches and augmentations an unbroken run would have seen.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fetalplanes.core.io import load_image
from fetalplanes.core.preprocess import normalize, resize_gray
from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.augment import augment_image, augment_params
from fetalplanes.data.records import Sample

log = logging.getLogger(__name__)

def _seed_for(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ImageDataset(Dataset):
    """Samples -> (float32 tensor (3, S, S), label) through the shared core preprocessing.

    ``augment``: the strength of the one training augmentation (``data.augment``; None or 0:
    none). Item ``epoch * N + index`` gets the parameters hashed from (seed, epoch, index),
    applied to the uint8 image and rounded back to uint8 before normalising.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        pre: Preprocessing,
        augment: float | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.pre = pre
        self.augment = augment
        self.seed = seed
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def gray(self, index: int) -> np.ndarray:
        """Decoded, resized uint8 image (cached when enabled: decoding dominates CPU time)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        arr = resize_gray(load_image(self.samples[index].path), self.pre.image_size)
        if self._cache is not None:
            self._cache[index] = arr
        return arr

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        epoch, index = divmod(int(key), n)
        gray = self.gray(index)
        if self.augment:
            params = augment_params(self.seed, np.array([key]), n, self.augment, gray.shape[-1])[0]
            x = augment_image(torch.tensor(gray, dtype=torch.float32)[None] / 255.0, params)
            gray = (x[0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        x = torch.from_numpy(np.ascontiguousarray(normalize(gray, self.pre)))
        return x, self.samples[index].label


class EpochSampler(Sampler[int]):
    """Seeded per-epoch order (shuffled, class-balanced or sequential), sharded for DDP.

    Lightning calls ``set_epoch`` at every epoch start. Keys are ``epoch * N + index``.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        shuffle: bool = True,
        weights: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.per_replica = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_replica

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch, 0x7FFFFFFF))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.per_replica * self.num_replicas, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        order = order.tolist()
        total = self.per_replica * self.num_replicas
        order = (order * math.ceil(total / max(1, len(order))))[:total]  # pad so ranks get equal shares
        base = self.epoch * self.n
        log.debug("sampler epoch %d (rank %d/%d): first keys %s", self.epoch, self.rank, self.num_replicas, order[:4])
        return iter([base + i for i in order[self.rank : total : self.num_replicas]])


def balanced_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Per-sample weights so every class is drawn equally often."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(float)
    return [1.0 / counts[y] for y in labels]


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, normalized to mean 1 (absent classes get 0)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    return torch.tensor(w / w[w > 0].mean(), dtype=torch.float32)
