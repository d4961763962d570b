"""The device data path (``data.loader: device``): decoded images held as one uint8 tensor on the
training device, augmented there in batches.

Why: on a GPU the per-image path (``PlaneDataModule``: PIL augmentation + normalisation in
loader processes, float32 tensors copied to the GPU) could not keep up with the training step
(issue 12: the GPU was busy 22 % of the time). Here every image is decoded and resized once
(``warm_dataset``, the same ``core.io`` + ``core.preprocess`` rule as everywhere), stacked into a
uint8 tensor (N, S, S) that is moved to the device once (6,060 images at 224 px: 304 MB); the
loader then yields only sample keys and augmentation parameters, and
:meth:`DeviceDataModule.on_after_batch_transfer` gathers, augments and normalises whole batches
on the device.

Randomness stays resume-exact: the batch order comes from the same ``EpochSampler`` as the
image path, and each image's augmentation parameters are a hash of (seed, epoch, index)
(``data.augment.augment_params``), so a resumed run replays the same data order and augmentations.

The augmentation is the image path's (``data.augment``: the same ranges, the same per-image
parameters for the same seed, the same torchvision v2 ops); the only difference is that the
image path rounds the augmented image to uint8 before normalising (at most half a grey level).
``data.loader`` is recorded in ``RUN/config.yaml``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.augment import augment_images, augment_params
from fetalplanes.data.records import Sample
from fetalplanes.data.torch_data import EpochSampler, ImageDataset, balanced_weights
from fetalplanes.training.config import TrainConfig
from fetalplanes.training.datamodule import warm_dataset

log = logging.getLogger(__name__)

def augment_batch(gray: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S) images + (B, 8) parameters (``data.augment.augment_params``) -> augmented
    float (B, 1, S, S) in [0, 255], by the one augmentation (``data.augment.augment_images``)."""
    return augment_images(gray[:, None].float() / 255.0, params) * 255.0


def normalize_batch(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """(B, 1, S, S) in [0, 255] (any dtype) -> float32 (B, 3, S, S) with the spec's mean/std:
    ``core.preprocess.normalize`` for a batch on any device."""
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=x.device)[None, :, None, None]
    std = torch.tensor(pre.std, dtype=torch.float32, device=x.device)[None, :, None, None]
    return (x.float() / 255.0 - mean) / std


class _Keys(Dataset):
    """The sampler's keys themselves: nothing is loaded per item."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> int:
        return int(key)


class _Collate:
    """keys -> (keys (B,) int64, augmentation parameters (B, 8) float32 or an empty (B, 0))."""

    def __init__(self, seed: int, n: int, strength: float, image_size: int) -> None:
        self.seed, self.n, self.strength, self.image_size = seed, n, strength, image_size

    def __call__(self, keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        k = np.asarray(keys, dtype=np.int64)
        if self.strength <= 0:
            return torch.from_numpy(k), torch.zeros((len(k), 0))
        return torch.from_numpy(k), torch.from_numpy(augment_params(self.seed, k, self.n, self.strength, self.image_size))


def stack_gray(ds: ImageDataset) -> torch.Tensor:
    """Every decoded image of a (warmed) dataset as one uint8 tensor (N, S, S)."""
    return torch.from_numpy(np.stack([ds.gray(i) for i in range(len(ds))])) if len(ds) else torch.zeros(
        (0, ds.pre.image_size, ds.pre.image_size), dtype=torch.uint8)


class DeviceDataModule(L.LightningDataModule):
    """Images decoded once into uint8 tensors on the training device; batches gathered,
    augmented (training only) and normalised there. Same samples, sampler and batch sizes as
    ``PlaneDataModule``; the loader itself runs in the main process (it only yields keys)."""

    def __init__(self, cfg: TrainConfig, pre: Preprocessing, train: list[Sample], val: list[Sample], num_classes: int):
        super().__init__()
        self.cfg, self.pre, self.num_classes = cfg, pre, num_classes
        d = cfg.data
        # The same datasets as the image path: decoding, the skip_bad rule and the sample lists.
        self.train_ds = ImageDataset(train, pre, None, seed=cfg.trainer.seed, cache=True)
        self.val_ds = ImageDataset(val, pre, None, seed=cfg.trainer.seed, cache=True)
        self.strength = d.augment
        self._images: dict[str, torch.Tensor] = {}
        self._labels: dict[str, torch.Tensor] = {}

    def prepare(self) -> None:
        """Decode and validate every image once (all unreadable files reported together)."""
        for part, ds in (("train", self.train_ds), ("val", self.val_ds)):
            warm_dataset(ds, self.cfg.data.skip_bad)
            self._images[part] = stack_gray(ds)
            self._labels[part] = torch.tensor([s.label for s in ds.samples], dtype=torch.long)
            ds._cache = None  # the stacked tensor holds the pixels now
        mb = sum(t.numel() for t in self._images.values()) / 2**20
        log.info("device data path: %d + %d images, %.0f MB of uint8 pixels", len(self._labels["train"]),
                 len(self._labels["val"]), mb)

    def _on(self, part: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Moved to the device once, at the first batch (non_blocking from pinned memory on CUDA).
        if self._images[part].device != device:
            src = self._images[part]
            if device.type == "cuda":
                src = src.pin_memory()
            self._images[part] = src.to(device, non_blocking=True)
            self._labels[part] = self._labels[part].to(device)
        return self._images[part], self._labels[part]

    def _loader(self, part: str, sampler: EpochSampler, batch_size: int, augment: bool) -> DataLoader:
        n = len(self._labels[part])
        collate = _Collate(self.cfg.trainer.seed, n, self.strength if augment else 0.0, self.pre.image_size)
        return DataLoader(_Keys(n), batch_size=batch_size, sampler=sampler, num_workers=0, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        labels = self._labels["train"].tolist()
        weights = balanced_weights(labels, self.num_classes) if self.cfg.data.balance == "sampler" else None
        sampler = EpochSampler(len(labels), self.cfg.trainer.seed, True, weights, world, rank)
        return self._loader("train", sampler, self.cfg.optim.batch_size, augment=True)

    def val_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self._labels["val"]), self.cfg.trainer.seed, shuffle=False)
        return self._loader("val", sampler, self.cfg.optim.batch_size * 2, augment=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys, params = batch
        training = self.trainer is not None and self.trainer.training
        images, labels = self._on("train" if training else "val", keys.device)
        index = torch.remainder(keys, images.shape[0])
        gray = images[index]
        x = augment_batch(gray, params) if params.shape[1] else gray[:, None]
        return normalize_batch(x, self.pre), labels[index]


def describe(cfg: TrainConfig) -> dict[str, Any]:
    """What ``train_summary.json`` records about the device data path."""
    return {"loader": "device", "augment": cfg.data.augment, "resampling": "bilinear, float32",
            "params_rule": "splitmix64 hash of (seed, epoch, index)", "uint8_bytes_per_image": cfg.data.image_size ** 2}
