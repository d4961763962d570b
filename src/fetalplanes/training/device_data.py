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
(:func:`augment_params`), so a resumed run replays the same data order and augmentations.

The augmentation draws the same families and ranges as ``data.torch_data.default_augment``
(rotation, shift, zoom, horizontal flip, brightness, contrast, 3x3 Gaussian blur with p = 0.2),
but it is computed differently (bilinear resampling in float, fixed brightness -> contrast
order, no uint8 rounding between steps), so its results are NOT bit-identical to the image
path's: that is why it is a config choice (``data.loader``) recorded in ``RUN/config.yaml``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.records import Sample
from fetalplanes.data.torch_data import EpochSampler, ImageDataset, balanced_weights
from fetalplanes.training.config import TrainConfig
from fetalplanes.training.datamodule import warm_dataset

log = logging.getLogger(__name__)

N_PARAMS = 8  # angle, tx, ty, scale, flip, brightness, contrast, blur sigma (0: no blur)
N_UNIFORMS = 9  # the eight above, plus one deciding whether to blur
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a well-mixed hash."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """(B, k) float64 uniforms in [0, 1) that depend only on (seed, epoch, index, column).

    Vectorised counter-based draws: no generator state, so any batch composition, rank or
    resume point gives each image the same numbers.
    """
    epoch = np.asarray(epoch, dtype=np.uint64)[:, None]
    index = np.asarray(index, dtype=np.uint64)[:, None]
    cols = np.arange(k, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = _mix(np.full_like(epoch, seed & 0xFFFFFFFFFFFFFFFF) + _GOLDEN)
        h = _mix(h ^ (epoch + _GOLDEN))
        h = _mix(h ^ (index + _GOLDEN))
        h = _mix(h ^ (cols + _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def augment_params(seed: int, keys: np.ndarray, n: int, strength: float, image_size: int) -> np.ndarray:
    """Per-image augmentation parameters (B, 8) float32 for sampler keys ``epoch * n + index``.

    Ranges as ``default_augment(strength)``: rotation +-10*s degrees, shift +-6*s % of the side
    (whole pixels), zoom 1 +- 0.1*s, horizontal flip p 0.5, brightness and contrast factors
    1 +- 0.25*s, Gaussian blur 3x3 with sigma in [0.1, 1] with p 0.2 (sigma 0 = no blur).
    """
    epoch, index = np.divmod(np.asarray(keys, dtype=np.int64), n)
    u = uniforms(seed, epoch, index, N_UNIFORMS)
    s = strength
    shift = 0.06 * s * image_size
    p = np.empty((len(u), N_PARAMS))
    p[:, 0] = (2 * u[:, 0] - 1) * 10 * s
    p[:, 1] = np.round((2 * u[:, 1] - 1) * shift)
    p[:, 2] = np.round((2 * u[:, 2] - 1) * shift)
    p[:, 3] = 1 - 0.1 * s + u[:, 3] * 0.2 * s
    p[:, 4] = u[:, 4] < 0.5
    p[:, 5] = max(0.0, 1 - 0.25 * s) + u[:, 5] * (1 + 0.25 * s - max(0.0, 1 - 0.25 * s))
    p[:, 6] = max(0.0, 1 - 0.25 * s) + u[:, 6] * (1 + 0.25 * s - max(0.0, 1 - 0.25 * s))
    p[:, 7] = np.where(u[:, 8] < 0.2, 0.1 + 0.9 * u[:, 7], 0.0)
    return p.astype(np.float32)


def _affine_grid(p: torch.Tensor, size: int) -> torch.Tensor:
    """Sampling grid (B, S, S, 2) of rotation/shift/zoom/flip, about the image centre, output to
    input in ``grid_sample``'s normalised coordinates (the inverse of the forward transform)."""
    angle = torch.deg2rad(p[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    scale, flip = p[:, 3], torch.where(p[:, 4] > 0.5, -1.0, 1.0)
    t = p[:, 1:3] * (2.0 / size)  # pixels -> normalised units
    # in = R(-a) (out - t) / s, with the output's x mirrored first when flipped.
    a = torch.stack([torch.stack([cos * flip, sin], 1), torch.stack([-sin * flip, cos], 1)], 1) / scale[:, None, None]
    b = -(a @ (t * torch.stack([flip, torch.ones_like(flip)], 1))[:, :, None])[:, :, 0]
    theta = torch.cat([a, b[:, :, None]], 2)
    return F.affine_grid(theta, [p.shape[0], 1, size, size], align_corners=False)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image 3x3 Gaussian blur (reflect padding, as torchvision); sigma 0 leaves the image."""
    b = x.shape[0]
    r = torch.tensor([-1.0, 0.0, 1.0], device=x.device)
    safe = sigma.clamp_min(1e-6)[:, None]
    k1 = torch.exp(-0.5 * (r[None, :] / safe) ** 2)
    k1 = torch.where(sigma[:, None] > 0, k1 / k1.sum(1, keepdim=True), torch.tensor([0.0, 1.0, 0.0], device=x.device))
    kernel = (k1[:, :, None] * k1[:, None, :])[:, None]  # (B, 1, 3, 3)
    padded = F.pad(x.reshape(1, b, *x.shape[2:]), (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel, groups=b).reshape_as(x)


def augment_batch(gray: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S) images + (B, 8) parameters -> augmented float (B, 1, S, S) in [0, 255]."""
    x = gray[:, None].float()
    size = x.shape[-1]
    x = F.grid_sample(x, _affine_grid(params, size), mode="bilinear", padding_mode="zeros", align_corners=False)
    x = (x * params[:, 5, None, None, None]).clamp(0, 255)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = params[:, 6, None, None, None]
    x = (c * x + (1 - c) * mean).clamp(0, 255)
    return _blur(x, params[:, 7])


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
