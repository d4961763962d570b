"""Does the heat map point at the anatomy? Pointing game and energy share against masks.

- pointing-game hit: the CAM's peak pixel lies inside the structure mask;
- energy share: the fraction of the CAM's total mass that falls inside the mask.

An empty heat map (constant, e.g. all zero) has no peak and points nowhere: it is left out of
the pointing game and counted (``n_empty_cams``); energy share is undefined only for a map with
no positive mass. Undefined values are None (``n/a`` in reports).

Each score comes with chance levels, computed over the same images as the score it goes with,
so a number is never read alone:
- ``uniform``: a flat CAM (energy share = mask area fraction) whose peak is a uniformly
  random pixel (hit probability = mask area fraction);
- ``center``: a centred Gaussian (sigma = 1/4 of each side), the "always look at the
  middle" prior that a lazy model could learn from fan-shaped images.

Masks are matched to an image by stem: ``<stem>.png`` or ``<stem>_Mask.png`` (HC18), any
mode; a pixel > 0 after ``convert('L')`` is inside.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from fetalplanes.core.errors import DataError

log = logging.getLogger(__name__)

MASK_SUFFIXES = ("", "_Mask", "_mask")
MASK_EXTENSIONS = (".png", ".PNG", ".bmp", ".tif", ".tiff")


def find_mask(stem: str, mask_dirs: Iterable[str | Path], image: str | Path | None = None) -> Path | None:
    """The first ``<dir>/<stem><suffix><ext>`` that exists, for suffix in '', '_Mask'.

    ``image`` (the image's own path) is never returned, so masks may sit next to their images.
    """
    own = Path(image).resolve() if image is not None else None
    for d in mask_dirs:
        for suffix in MASK_SUFFIXES:
            for ext in MASK_EXTENSIONS:
                p = Path(d) / f"{stem}{suffix}{ext}"
                if p.is_file() and p.resolve() != own:
                    return p
    return None


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean (H, W) mask; ``size`` (W, H) resizes it (nearest) to match its image."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            gray = im.convert("L")
            if size is not None and gray.size != tuple(size):
                log.warning("%s: mask size %s != image size %s; resizing the mask", path, gray.size, size)
                gray = gray.resize(tuple(size), Image.NEAREST)
            return np.asarray(gray) > 0
    except OSError as err:
        raise DataError(f"{path}: cannot read mask ({err})") from None


def peak(cam: np.ndarray) -> tuple[int, int]:
    """(row, col) of the CAM's maximum; a flat-topped maximum counts at its middle.

    Upsampling a coarse map with edge clamping turns a border cell's value into a plateau
    that reaches the image edge; plain argmax would then pick the plateau's first pixel (on
    the border) rather than the cell the map actually points at.
    """
    cam = np.asarray(cam, dtype=np.float32)
    top = float(cam.max())
    rows, cols = np.nonzero(cam >= top - 1e-6 * max(abs(top), 1e-12))
    if len(rows) == 1:
        return int(rows[0]), int(cols[0])
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[i]), int(cols[i])


def is_empty(cam: np.ndarray) -> bool:
    """True for a map without a peak: constant (all zero included) or with no finite value."""
    cam = np.asarray(cam, dtype=np.float64)
    finite = cam[np.isfinite(cam)]
    return finite.size == 0 or bool(finite.max() == finite.min())


def pointing_hit(cam: np.ndarray, mask: np.ndarray) -> bool | None:
    """True when the CAM's peak (see ``peak``) lies inside the mask; None for an empty CAM."""
    _check(cam, mask)
    if is_empty(cam):
        return None
    return bool(mask[peak(cam)])


def energy_share(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the CAM's mass inside the mask; None for an all-zero CAM (no evidence)."""
    _check(cam, mask)
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0.0, None)
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else None


def center_prior(shape: tuple[int, int]) -> np.ndarray:
    """A centred Gaussian in [0, 1] (sigma = a quarter of each side): the centre-bias baseline."""
    h, w = shape
    yy = (np.arange(h) - (h - 1) / 2) / (h / 4)
    xx = (np.arange(w) - (w - 1) / 2) / (w / 4)
    return np.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2)).astype(np.float32)


def score_one(cam: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Scores of one CAM and its chance levels (uniform and centre prior) against one mask.

    ``hit`` is None for an empty CAM (``is_empty``), ``energy`` None for a CAM without mass.
    """
    area = float(mask.mean())
    prior = center_prior(mask.shape)
    return {
        "hit": pointing_hit(cam, mask),
        "energy": energy_share(cam, mask),
        "area": area,
        "center_hit": pointing_hit(prior, mask),
        "center_energy": energy_share(prior, mask),
    }


def _mean(values: Sequence[Any]) -> float | None:
    return float(np.mean(np.asarray(values, dtype=float))) if len(values) else None


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-image scores: means, chance levels on the same images, a binomial SE.

    The pointing game runs over the images whose CAM has a peak (``n_scored``); empty CAMs are
    counted in ``n_empty_cams``, not scored as hits or misses. The energy share runs over the
    CAMs with mass. Each chance level averages over the same images as its score.
    """
    n = len(rows)
    if n == 0:
        return {"n": 0}
    pg_rows = [r for r in rows if r["hit"] is not None]
    en_rows = [r for r in rows if r["energy"] is not None]
    hit_rate = _mean([r["hit"] for r in pg_rows])
    return {
        "n": n,
        "pointing_game": {
            "hit_rate": hit_rate,
            "n_scored": len(pg_rows),
            "n_empty_cams": n - len(pg_rows),
            "se": None if hit_rate is None else float(np.sqrt(hit_rate * (1 - hit_rate) / len(pg_rows))),
            "chance_uniform": _mean([r["area"] for r in pg_rows]),
            "chance_center": _mean([r["center_hit"] for r in pg_rows]),
        },
        "energy_share": {
            "mean": _mean([r["energy"] for r in en_rows]),
            "n_scored": len(en_rows),
            "n_empty_cams": n - len(en_rows),
            "chance_uniform": _mean([r["area"] for r in en_rows]),
            "chance_center": _mean([r["center_energy"] for r in en_rows]),
        },
        "mask_area_fraction": _mean([r["area"] for r in rows]),
    }


def _check(cam: np.ndarray, mask: np.ndarray) -> None:
    if np.shape(cam) != np.shape(mask):
        raise DataError(f"CAM shape {np.shape(cam)} != mask shape {np.shape(mask)}")
