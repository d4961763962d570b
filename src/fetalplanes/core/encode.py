"""Image encoding shared by the explain report and the web service (Pillow only, no torch)."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(image: Image.Image, compress_level: int = 3) -> bytes:
    """PNG-encode ``image``. zlib level 3 is ~2.5x faster than PIL's default 6 for ~10 % larger files."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
