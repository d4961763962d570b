"""The one training augmentation (``data.augment``): one table of ranges, per-image parameters
hashed from (seed, epoch, index), torchvision v2 ops; the image path (``ImageDataset``) and the
device path (``training.device_data``) give the same parameters and pixels within uint8 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.augment import AUGMENT, AugmentRanges, augment_image, augment_params
from fetalplanes.data.records import Sample
from fetalplanes.data.torch_data import ImageDataset
from fetalplanes.training.device_data import _Collate, augment_batch, normalize_batch, stack_gray

SIZE = 32
PRE = Preprocessing(image_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)


def _samples(tmp_path: Path, n: int = 6) -> list[Sample]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = []
    for i in range(n):  # smooth structure plus noise: geometry and blur both show
        img = (120 + 80 * np.sin(xx / (3 + i)) * np.cos(yy / 5) + rng.normal(0, 10, (SIZE, SIZE))).clip(0, 255)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        out.append(Sample(path, i % 2))
    return out


def test_both_paths_give_the_same_parameters_and_close_pixels(tmp_path: Path) -> None:
    samples, seed, strength = _samples(tmp_path), 11, 1.0
    n = len(samples)
    keys = np.arange(2 * n)  # two epochs: every image twice, with new parameters
    image_path = ImageDataset(samples, PRE, strength, seed=seed, cache=True)
    cpu = torch.stack([image_path[int(k)][0] for k in keys])
    # the device path: the collate's parameters, then the batch augmentation and normalisation
    dev_keys, params = _Collate(seed, n, strength, SIZE)(keys.tolist())
    assert np.array_equal(params.numpy(), augment_params(seed, keys, n, strength, SIZE))
    gray = stack_gray(image_path)[torch.remainder(dev_keys, n)]
    device = normalize_batch(augment_batch(gray, params), PRE)
    assert cpu.shape == device.shape == (2 * n, 3, SIZE, SIZE)
    # the image path rounds to uint8: at most half a grey level apart (in normalised units)
    assert (cpu - device).abs().max().item() <= 0.5 / 255 / 0.25 + 1e-4
    # ... and the augmentation was applied (not two copies of the plain images)
    plain = torch.stack([ImageDataset(samples, PRE)[int(k) % n][0] for k in keys])
    assert (cpu - plain).abs().mean().item() > 0.05
    assert not torch.equal(cpu[:n], cpu[n:])  # a new epoch draws anew


def test_the_image_path_replays_the_hashed_parameters(tmp_path: Path) -> None:
    samples = _samples(tmp_path, 2)
    ds = ImageDataset(samples, PRE, 0.7, seed=4)
    key = 1 * 2 + 1  # epoch 1, image 1
    p = augment_params(4, np.array([key]), 2, 0.7, SIZE)[0]
    gray = torch.from_numpy(ds.gray(1))[None].float() / 255
    want = (augment_image(gray, p)[0] * 255).round().clamp(0, 255).numpy() / 255
    got = ds[key][0][0].numpy() * 0.25 + 0.5  # undo the normalisation
    assert np.abs(got - want).max() < 1e-5
    assert np.array_equal(ds[key][0].numpy(), ds[key][0].numpy())  # the same key, the same image


def test_one_table_of_ranges_scales_with_strength() -> None:
    keys = np.arange(4000)
    p = augment_params(0, keys, 1000, 1.0, 200)
    assert np.abs(p[:, 0]).max() <= AUGMENT.degrees and np.abs(p[:, 0]).max() > 0.9 * AUGMENT.degrees
    assert np.abs(p[:, 1:3]).max() <= round(AUGMENT.translate * 200)
    assert 0.4 < p[:, 4].mean() < 0.6 and 0.15 < (p[:, 7] > 0).mean() < 0.25
    no_rotation = augment_params(0, keys, 1000, 1.0, 200, AugmentRanges(degrees=0.0, blur_p=0.0))
    assert np.all(no_rotation[:, 0] == 0) and np.all(no_rotation[:, 7] == 0)
    assert np.array_equal(no_rotation[:, 1:7], p[:, 1:7])  # the other columns are the same draws
    half = augment_params(0, keys, 1000, 0.5, 200)
    assert np.abs(half[:, 0]).max() <= AUGMENT.degrees / 2 and half[:, 3].min() >= 1 - AUGMENT.zoom / 2
