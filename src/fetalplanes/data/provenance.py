"""Which images a model was trained, validated and tested on: the record inside the model file.

``training.fit`` writes :func:`build_record` into the ModelSpec's ``training["images"]``, so it
travels with the checkpoint and into the ONNX export; ``data.splits.choose_split`` reads it back
(:class:`ImageRecord`) to score only images the model never saw.

An image's identity is its content: the first 9 bytes of the SHA-256 of the file's bytes,
base64url-encoded (12 characters, 72 bits; the chance that two of 10^5 different files share one
is ~10^-12). A renamed or copied file is still recognised; a re-encoded one (PNG -> JPEG) is not
(documented limit). The relative path is kept as well: it identifies an image whose bytes could
not be read (no hash), and it lets a person see what the record holds.

Encoding (compact: FETAL_PLANES_DB's 12,400 images take ~20 bytes each), per split ``train``,
``val``, ``test``, in the order of the sorted relative paths::

    {"n": 3, "ids": "<12 chars per image, concatenated; '............' when unreadable>",
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

from fetalplanes.data.records import Sample

log = logging.getLogger(__name__)

RECORD_KEY = "images"  # ModelSpec.training[RECORD_KEY]
RECORD_VERSION = 1
ID_BYTES = 9
ID_CHARS = 12  # base64 of 9 bytes, no padding
NO_ID = "." * ID_CHARS  # the file could not be read when the record was written (not a base64url char)
PARTS = ("train", "val", "test")
SEEN_PARTS = ("train", "val")  # what "seen in training or validation" means


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


def image_ids(paths: Sequence[str | os.PathLike[str]]) -> list[str | None]:
    """:func:`image_id` of many files, read by a few threads (hashlib releases the GIL)."""
    if len(paths) < 64:
        return [image_id(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(image_id, paths, chunksize=64))


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
    out: dict[str, Any] = {"version": RECORD_VERSION, "id": f"sha256[:{ID_BYTES}] base64url of the file bytes"}
    for name in PARTS:
        samples = sorted(parts.get(name, ()), key=lambda s: relative_path(s.path, root))
        ids = image_ids([s.path for s in samples])
        out[name] = {
            "n": len(samples),
            "ids": "".join(i or NO_ID for i in ids),
            "paths": _pack_paths([relative_path(s.path, root) for s in samples]),
            "patients": sorted({s.patient for s in samples if s.patient is not None}),
        }
    return out


@dataclass
class _Part:
    ids: set[str] = field(default_factory=set)
    id_of_path: dict[str, str] = field(default_factory=dict)  # relative path -> id (NO_ID: unreadable)
    patients: set[str] = field(default_factory=set)

    def keys(self) -> set[str]:
        """One key per distinct recorded image: its id, or ``path:<relpath>`` without one."""
        return set(self.ids) | {f"path:{p}" for p, i in self.id_of_path.items() if i == NO_ID}


@dataclass
class ImageRecord:
    """A model's record of its train/val/test images, decoded (see :func:`build_record`)."""

    parts: dict[str, _Part]

    @classmethod
    def from_training(cls, training: Mapping[str, Any] | None) -> "ImageRecord | None":
        """The record in a ModelSpec's ``training`` section; None for models written before it."""
        raw = (training or {}).get(RECORD_KEY)
        if not raw:
            return None
        parts = {}
        for name in PARTS:
            p = raw.get(name) or {}
            text, paths = p.get("ids", ""), _unpack_paths(p.get("paths", "")) if p.get("paths") else []
            ids = [text[i:i + ID_CHARS] for i in range(0, len(text), ID_CHARS)]
            parts[name] = _Part({i for i in ids if i != NO_ID}, dict(zip(paths, ids)), set(p.get("patients", ())))
        return cls(parts)

    def n(self, part: str) -> int:
        return len(self.parts[part].keys())

    def membership(self, samples: Sequence[Sample], root: str | os.PathLike[str]) -> list[tuple[frozenset[str], str]]:
        """Per sample: (the record's splits it belongs to, its match key), matched by content id,
        falling back to the relative path when either side could not be read."""
        root = Path(root)
        ids = image_ids([s.path for s in samples])
        out = []
        for s, sid in zip(samples, ids):
            rel = relative_path(s.path, root)
            where, key = set(), sid or f"path:{rel}"
            for name, part in self.parts.items():
                recorded = part.id_of_path.get(rel)
                if sid is not None and sid in part.ids:
                    where.add(name)
                elif recorded is not None and (sid is None or recorded == NO_ID):
                    where.add(name)
                    key = recorded if recorded != NO_ID else f"path:{rel}"
            out.append((frozenset(where), key))
        return out

    def covers(self, part: str, keys: set[str]) -> bool:
        """Whether ``keys`` (the match keys of some data) hold every image of ``part`` (non-empty)."""
        wanted = self.parts[part].keys()
        return bool(wanted) and wanted <= keys

    def patients_seen(self, patients: set[str]) -> set[str]:
        """The patients of ``patients`` that have images in the record's train or val split."""
        return patients & set().union(*(self.parts[p].patients for p in SEEN_PARTS))
