"""Content hashes of files: which model file produced a report, a model card or a DICOM SR.

A model file is named by the SHA-256 of its bytes (hex). Reports (``metrics.json``) record it so
that a model card can check that the metrics it is given belong to the checkpoint it describes.
"""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (64 hex characters) of a file's bytes, read in 1 MiB chunks; ``OSError`` if unreadable."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
