"""Which images a model was trained, validated and tested on: the record inside the model file.

``training.fit`` writes :func:`build_record` into the ModelSpec's ``training["images"]``, so it
travels with the checkpoint and into the ONNX export; ``data.splits.choose_split`` reads it back
(:class:`ImageRecord`) to score only images the model never saw.

An image has two exact identities and one near one (record version 2):

- its file: the first 9 bytes of the SHA-256 of the file's bytes, base64url-encoded (12
  characters, 72 bits; the chance that two of 10^5 different files share one is ~10^-12). A
  renamed or copied file is recognised;
- its pixels: the same hash of the decoded 8-bit grey pixels and their size (the one decode and
  intensity rule of ``core.io`` + ``core.preprocess.to_gray``). A lossless re-save (PNG -> PNG,
  TIFF, BMP) or a DICOM wrapper of the same grey pixels is recognised like a byte copy;
- near (train and val only): a 256-bit difference hash (dHash: the grey image resized to 17x16,
  one bit per horizontally adjacent pair). A JPEG re-encode (q95) or a 1-px resize of a real
  FETAL_PLANES_DB image moved it by at most 4 bits, while the closest two different images of the
  59 in ../shared moved 6 apart (measured here); within ``NEAR_BITS`` it is reported as a *near
  duplicate*: a warning and a count, never a refusal, since look-alike frames of one patient can
  be that close.

The relative path is kept as well: it identifies an image whose bytes could not be read (no
hash), and it lets a person see what the record holds. Version-1 records (no pixel or near
hashes) are still read; their checks are by file bytes only, and say so.

Encoding (compact: FETAL_PLANES_DB's 12,400 images take ~20 bytes each), per split ``train``,
``val``, ``test``, in the order of the sorted relative paths::

    {"n": 3, "ids": "<12 chars per image, concatenated; '............' when unreadable>",
     "pixels": "<12 chars per image: the pixel identity, same order>",
     "near": "<base64 of the 32-byte dHashes, same order (train and val only)>",
     "paths": "<base64 of zlib('\\n'.join(relative paths))>", "patients": ["12", "13"]}
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.io import load_image
from fetalplanes.core.preprocess import to_gray
from fetalplanes.data.records import Sample

log = logging.getLogger(__name__)

RECORD_KEY = "images"  # ModelSpec.training[RECORD_KEY]
RECORD_VERSION = 2
ID_BYTES = 9
ID_CHARS = 12  # base64 of 9 bytes, no padding
NO_ID = "." * ID_CHARS  # the file could not be read when the record was written (not a base64url char)
PARTS = ("train", "val", "test")
SEEN_PARTS = ("train", "val")  # what "seen in training or validation" means
NEAR_SIZE = (17, 16)  # dHash grid (width, height): 16 x 16 = 256 bits
NEAR_BYTES = 32
NEAR_BITS = 8  # Hamming distance (of 256) at or below which two images are near duplicates


def image_id(path: str | os.PathLike[str]) -> str | None:
    """The content identity of one image file (see module docstring); None if it cannot be read."""
    try:
        st = os.stat(path)
        return _hashed(os.fspath(path), st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError as err:
        log.warning("%s: cannot be read to identify it (%s); matched by path only", path, err)
        return None


@functools.lru_cache(maxsize=65536)
def _hashed(path: str, mtime_ns: int, size: int, inode: int) -> str:
    # Keyed by modification time, size and inode too: calibrate asks for val and test of the same data,
    # and a file rewritten in place is hashed again.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.urlsafe_b64encode(h.digest()[:ID_BYTES]).decode("ascii")


def _digest_id(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()[:ID_BYTES]).decode("ascii")


def pixel_identity(path: str | os.PathLike[str]) -> tuple[str, bytes] | None:
    """(pixel id, 32-byte dHash) of one image file's decoded grey pixels (module docstring);
    None when it cannot be decoded (then it is matched by file bytes and path only)."""
    try:
        st = os.stat(path)
        return _pixel_hashed(os.fspath(path), st.st_mtime_ns, st.st_size, st.st_ino)
    except (OSError, ImageLoadError) as err:
        # The command that scores the image reports it (once, with the others); here it just
        # falls back to the file-bytes and path checks.
        log.debug("%s: cannot be decoded to identify its pixels (%s)", path, err)
        return None


@functools.lru_cache(maxsize=65536)
def _pixel_hashed(path: str, mtime_ns: int, size: int, inode: int) -> tuple[str, bytes]:
    gray = to_gray(load_image(Path(path)))
    pixels = np.asarray(gray, dtype=np.uint8)
    pid = _digest_id(f"{pixels.shape[1]}x{pixels.shape[0]}:".encode() + pixels.tobytes())
    return pid, near_hash(gray)


def near_hash(gray: "Image.Image") -> bytes:
    """The 256-bit difference hash (32 bytes) of an 8-bit grey PIL image."""
    small = np.asarray(gray.resize(NEAR_SIZE, Image.Resampling.BILINEAR), dtype=np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).tobytes()


def _threaded(fn: Any, paths: Sequence[Any]) -> list[Any]:
    """``fn`` over many files, by a few threads (hashlib and the decoders release the GIL)."""
    if len(paths) < 64:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, paths, chunksize=64))


def image_ids(paths: Sequence[str | os.PathLike[str]]) -> list[str | None]:
    """:func:`image_id` of many files."""
    return _threaded(image_id, paths)


def pixel_identities(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[str, bytes] | None]:
    """:func:`pixel_identity` of many files."""
    return _threaded(pixel_identity, paths)


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix separators); the absolute path when it lies outside."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def _pack_paths(paths: Sequence[str]) -> str:
    return base64.b64encode(zlib.compress("\n".join(paths).encode("utf-8"), 9)).decode("ascii")


def _unpack_paths(text: str) -> list[str]:
    raw = zlib.decompress(base64.b64decode(text)).decode("utf-8")
    return raw.split("\n") if raw else []


def build_record(parts: Mapping[str, Sequence[Sample]], root: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON-able record of which images (content id + relative path) and patients are in
    each split (``parts``: ``train``/``val``/``test`` -> samples); ``root`` is the data root."""
    root = Path(root)
    out: dict[str, Any] = {"version": RECORD_VERSION, "id": f"sha256[:{ID_BYTES}] base64url of the file bytes",
                           "pixels": f"sha256[:{ID_BYTES}] base64url of 'WxH:' + the decoded 8-bit grey pixels",
                           "near": f"dHash {NEAR_SIZE[0]}x{NEAR_SIZE[1]} of the grey pixels (train, val)"}
    for name in PARTS:
        samples = sorted(parts.get(name, ()), key=lambda s: relative_path(s.path, root))
        paths = [s.path for s in samples]
        pixels = pixel_identities(paths)
        out[name] = {
            "n": len(samples),
            "ids": "".join(i or NO_ID for i in image_ids(paths)),
            "pixels": "".join(p[0] if p else NO_ID for p in pixels),
            "paths": _pack_paths([relative_path(s.path, root) for s in samples]),
            "patients": sorted({s.patient for s in samples if s.patient is not None}),
        }
        if name in SEEN_PARTS:
            near = b"".join(p[1] for p in pixels if p)  # a bank: an undecodable image adds nothing
            out[name]["near"] = base64.b64encode(near).decode("ascii")
    return out


def _split_ids(text: str) -> list[str]:
    return [text[i:i + ID_CHARS] for i in range(0, len(text), ID_CHARS)]


@dataclass
class _Part:
    ids: set[str] = field(default_factory=set)
    id_of_path: dict[str, str] = field(default_factory=dict)  # relative path -> id (NO_ID: unreadable)
    patients: set[str] = field(default_factory=set)
    pixel_ids: set[str] = field(default_factory=set)
    near: np.ndarray = field(default_factory=lambda: np.zeros((0, NEAR_BYTES), np.uint8))

    def keys(self) -> set[str]:
        """One key per distinct recorded image: its id, or ``path:<relpath>`` without one."""
        return set(self.ids) | {f"path:{p}" for p, i in self.id_of_path.items() if i == NO_ID}


@dataclass
class ImageRecord:
    """A model's record of its train/val/test images, decoded (see :func:`build_record`)."""

    parts: dict[str, _Part]
    version: int = 1

    @property
    def checks(self) -> str:
        """What a membership test of this record compares, in words (for reports)."""
        if self.version < 2:
            return "file-content hash (a record of version 1: re-saved or re-encoded copies are not recognised)"
        return (f"file-content hash and decoded-pixel hash; near duplicates (JPEG or resized copies) by a "
                f"256-bit perceptual hash within {NEAR_BITS} bits")

    @classmethod
    def from_training(cls, training: Mapping[str, Any] | None) -> "ImageRecord | None":
        """The record in a ModelSpec's ``training`` section; None for models written before it."""
        raw = (training or {}).get(RECORD_KEY)
        if not raw:
            return None
        parts = {}
        for name in PARTS:
            p = raw.get(name) or {}
            paths = _unpack_paths(p.get("paths", "")) if p.get("paths") else []
            ids = _split_ids(p.get("ids", ""))
            near = np.frombuffer(base64.b64decode(p.get("near", "")), np.uint8).reshape(-1, NEAR_BYTES)
            parts[name] = _Part({i for i in ids if i != NO_ID}, dict(zip(paths, ids)), set(p.get("patients", ())),
                                {i for i in _split_ids(p.get("pixels", "")) if i != NO_ID}, near)
        return cls(parts, int(raw.get("version", 1)))

    def n(self, part: str) -> int:
        return len(self.parts[part].keys())

    def membership(self, samples: Sequence[Sample], root: str | os.PathLike[str]) -> list[tuple[frozenset[str], str]]:
        """Per sample: (the record's splits it belongs to, its match key), matched by content id,
        falling back to the relative path when either side could not be read."""
        root = Path(root)
        ids = image_ids([s.path for s in samples])
        pixels = self._pixels(samples)
        out = []
        for s, sid, pix in zip(samples, ids, pixels):
            rel = relative_path(s.path, root)
            where, key = set(), sid or f"path:{rel}"
            for name, part in self.parts.items():
                recorded = part.id_of_path.get(rel)
                if (sid is not None and sid in part.ids) or (pix is not None and pix[0] in part.pixel_ids):
                    where.add(name)
                elif recorded is not None and (sid is None or recorded == NO_ID):
                    where.add(name)
                    key = recorded if recorded != NO_ID else f"path:{rel}"
            out.append((frozenset(where), key))
        return out

    def _pixels(self, samples: Sequence[Sample]) -> list[tuple[str, bytes] | None]:
        if self.version < 2:
            return [None] * len(samples)
        return pixel_identities([s.path for s in samples])

    def near_duplicates(self, samples: Sequence[Sample]) -> list[int]:
        """Positions of ``samples`` whose perceptual hash lies within ``NEAR_BITS`` of an image
        of the record's train or val split (exact copies included); [] for a version-1 record."""
        seen = np.concatenate([self.parts[p].near for p in SEEN_PARTS])
        if self.version < 2 or not len(seen) or not samples:
            return []
        bank = seen.view(np.uint64)  # (n, 4) words of 64 bits
        hits = []
        for i, pix in enumerate(self._pixels(samples)):
            if pix is None:
                continue
            q = np.frombuffer(pix[1], np.uint8).view(np.uint64)
            if int(np.bitwise_count(bank ^ q).sum(axis=1).min()) <= NEAR_BITS:
                hits.append(i)
        return hits

    def covers(self, part: str, keys: set[str]) -> bool:
        """Whether ``keys`` (the match keys of some data) hold every image of ``part`` (non-empty)."""
        wanted = self.parts[part].keys()
        return bool(wanted) and wanted <= keys

    def patients_seen(self, patients: set[str]) -> set[str]:
        """The patients of ``patients`` that have images in the record's train or val split."""
        return patients & set().union(*(self.parts[p].patients for p in SEEN_PARTS))
