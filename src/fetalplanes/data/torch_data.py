"""Torch datasets and samplers over Samples, with resume-exact randomness.

The sampler yields ``epoch * N + index`` keys so the dataset knows the epoch inside worker
processes; both the shuffle order and each image's augmentation are seeded from
``(seed, epoch, index)``. A run resumed from an epoch-end checkpoint therefore sees exactly
the batches and augmentations an unbroken run would have seen.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from fetalplanes.core.io import load_image
from fetalplanes.core.preprocess import normalize, resize_gray
from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.records import Sample

log = logging.getLogger(__name__)

Augment = Callable[[Image.Image], Image.Image]


def default_augment(strength: float = 1.0) -> Augment:
    """Ultrasound-appropriate augmentation on the model-size grayscale image.

    Small rotations/shifts/zoom (probe angle and depth vary), horizontal flips (left/right
    orientation is operator-dependent), brightness/contrast (gain, TGC), and mild blur. No
    vertical flip: depth runs top to bottom in every B-mode image.
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomAffine(degrees=10 * strength, translate=(0.06 * strength,) * 2, scale=(1 - 0.1 * strength, 1 + 0.1 * strength)),
            v2.RandomHorizontalFlip(0.5),
            v2.ColorJitter(brightness=0.25 * strength, contrast=0.25 * strength),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2),
        ]
    )


def _seed_for(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ImageDataset(Dataset):
    """Samples -> (float32 tensor (3, S, S), label) through the shared core preprocessing."""

    def __init__(
        self,
        samples: Sequence[Sample],
        pre: Preprocessing,
        augment: Augment | None = None,
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
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed_for(self.seed, epoch, index))
                gray = np.asarray(self.augment(Image.fromarray(gray)), dtype=np.uint8)
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
