"""The one preprocessing: PIL image -> normalized float32 CHW array (numpy only).

Training, evaluation, ONNX export, the torch-free runtime and the web service all call
this function, so a model always sees inputs prepared exactly as in training.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from fetalplanes.core.intensity import scale_by_bits
from fetalplanes.core.spec import Preprocessing


def to_gray(image: Image.Image) -> Image.Image:
    """Grayscale 8-bit view of any loaded image (ultrasound B-mode is grayscale).

    16-bit gray is scaled by its bit depth (v / 257), never by the image's own min/max, so
    the 8-bit and 16-bit exports of one frame give identical pixels (the intensity rule of
    :mod:`fetalplanes.core.intensity`). Pillow's 32-bit 'I' mode is read as 16-bit data
    (what :func:`fetalplanes.core.io.load_image` leaves in it), clipped to 0..65535.
    """
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image).astype(np.int64).clip(0, 65535)
        return Image.fromarray(scale_by_bits(arr, 16))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        return _on_black(image)
    return image.convert("L")


_STRIP_PIXELS = 1 << 22  # pixels per strip when compositing: bounds the temporary RGBA copies (~16 MB each)


def _on_black(image: Image.Image) -> Image.Image:
    """Transparent pixels over black, then gray; strip by strip, so a large RGBA upload needs ~one
    gray copy more, not three full RGBA copies (the pixels are the same: each is composited alone)."""
    out = Image.new("L", image.size)
    step = max(1, _STRIP_PIXELS // max(1, image.width))
    for top in range(0, image.height, step):
        box = (0, top, image.width, min(image.height, top + step))
        strip = image.crop(box).convert("RGBA")
        background = Image.new("RGBA", strip.size, (0, 0, 0, 255))
        out.paste(Image.alpha_composite(background, strip).convert("L"), box[:2])
    return out


def resize_gray(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale uint8 array of shape (size, size); antialiased bilinear resize."""
    gray = to_gray(image)
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def normalize(gray: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 (H, W) -> float32 (3, H, W) normalized with the spec's mean/std."""
    x = gray.astype(np.float32) / 255.0
    mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
    return (np.broadcast_to(x, (3, *x.shape)) - mean) / std


def preprocess(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """One image -> float32 array (3, S, S)."""
    return np.ascontiguousarray(normalize(resize_gray(image, pre.image_size), pre), dtype=np.float32)


def preprocess_batch(images: Sequence[Image.Image], pre: Preprocessing) -> np.ndarray:
    """Images -> float32 array (N, 3, S, S)."""
    if not images:
        return np.zeros((0, 3, pre.image_size, pre.image_size), dtype=np.float32)
    return np.stack([preprocess(im, pre) for im in images])
