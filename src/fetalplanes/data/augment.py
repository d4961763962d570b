"""THE training augmentation: one table of ranges, one rule for each image's parameters, one
application (torchvision.transforms.v2 functional ops), read by both data paths.

Ultrasound-appropriate, on the model-size grayscale image: small rotations / shifts / zoom (probe
angle and depth vary), horizontal flips (left/right orientation is operator-dependent),
brightness / contrast (gain, TGC) and a mild 3x3 Gaussian blur. No vertical flip: depth runs top
to bottom in every B-mode image.

- :data:`AUGMENT` holds the ranges at strength 1; ``data.augment`` (the strength s) scales them.
- :func:`augment_params` draws each image's parameters as a hash of (seed, epoch, index)
  (splitmix64, counter-based: no generator state), so any batch composition, DDP rank or resume
  point replays the same augmentation.
- :func:`augment_images` applies them with torchvision.transforms.v2 functional ops, in a fixed
  order: affine (bilinear, zero fill) -> horizontal flip -> brightness -> contrast -> blur.

The image path (``data.torch_data.ImageDataset``: one image per loader call, rounded back to
uint8) and the device path (``training.device_data``: whole batches on the training device, in
float) call the same two functions; they differ only by that final uint8 rounding (at most half a
grey level; ``tests/data/test_augment.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

N_PARAMS = 8  # angle, tx, ty, scale, flip, brightness, contrast, blur sigma (0: no blur)
N_UNIFORMS = 9  # the eight above, plus one deciding whether to blur
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class AugmentRanges:
    """Augmentation ranges at strength 1 (each scaled by the strength s, except probabilities
    and the blur's sigma).

    ``degrees``: rotation in [-d*s, d*s] degrees; ``translate``: shift in [-t*s, t*s] of the
    side, whole pixels; ``zoom``: scale in [1 - z*s, 1 + z*s]; ``hflip_p``: probability of a
    horizontal flip; ``brightness``/``contrast``: factors in [max(0, 1 - b*s), 1 + b*s];
    ``blur_p``: probability of a ``blur_kernel`` x ``blur_kernel`` Gaussian blur with sigma
    uniform in ``blur_sigma`` (pixels).
    """

    degrees: float = 10.0
    translate: float = 0.06
    zoom: float = 0.1
    hflip_p: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    blur_kernel: int = 3


AUGMENT = AugmentRanges()


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


def augment_params(seed: int, keys: np.ndarray, n: int, strength: float, image_size: int,
                   ranges: AugmentRanges = AUGMENT) -> np.ndarray:
    """Per-image parameters (B, 8) float32 for sampler keys ``epoch * n + index``: angle
    (degrees), tx, ty (whole pixels), scale, flip (0/1), brightness, contrast, blur sigma (0:
    no blur), drawn from ``ranges`` scaled by ``strength``."""
    epoch, index = np.divmod(np.asarray(keys, dtype=np.int64), n)
    u = uniforms(seed, epoch, index, N_UNIFORMS)
    s, r = strength, ranges
    shift = r.translate * s * image_size
    p = np.empty((len(u), N_PARAMS))
    p[:, 0] = (2 * u[:, 0] - 1) * r.degrees * s
    p[:, 1] = np.round((2 * u[:, 1] - 1) * shift)
    p[:, 2] = np.round((2 * u[:, 2] - 1) * shift)
    p[:, 3] = 1 - r.zoom * s + u[:, 3] * 2 * r.zoom * s
    p[:, 4] = u[:, 4] < r.hflip_p
    for col, width in ((5, r.brightness), (6, r.contrast)):
        low = max(0.0, 1 - width * s)
        p[:, col] = low + u[:, col] * (1 + width * s - low)
    lo, hi = r.blur_sigma
    p[:, 7] = np.where(u[:, 8] < r.blur_p, lo + (hi - lo) * u[:, 7], 0.0)
    return p.astype(np.float32)


def augment_image(x: torch.Tensor, p: np.ndarray | torch.Tensor, ranges: AugmentRanges = AUGMENT) -> torch.Tensor:
    """One image: float (C, H, W) in [0, 1] + its 8 parameters -> the augmented float image in
    [0, 1] (torchvision.transforms.v2 functional ops, in the order of the module docstring)."""
    angle, tx, ty, scale, flip, brightness, contrast, sigma = (float(v) for v in p)
    x = TF.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                  interpolation=InterpolationMode.BILINEAR)  # outside the image: 0 (grid_sample zeros)
    if flip > 0.5:
        x = TF.horizontal_flip(x)
    x = TF.adjust_contrast(TF.adjust_brightness(x, brightness), contrast)
    if sigma > 0:
        x = TF.gaussian_blur(x, [ranges.blur_kernel] * 2, [sigma, sigma])
    return x


def augment_images(x: torch.Tensor, params: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A batch: float (B, C, H, W) in [0, 1] + (B, 8) parameters -> augmented (B, C, H, W), each
    image by :func:`augment_image` with its own row (on the images' device)."""
    rows = params.tolist() if isinstance(params, torch.Tensor) else np.asarray(params).tolist()
    return torch.stack([augment_image(img, row) for img, row in zip(x, rows)]) if len(rows) else x
