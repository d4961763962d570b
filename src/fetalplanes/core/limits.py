"""The one table of input limits: how much any file, upload or client may make this process do.

Every decoder and every door reads its bound from :data:`LIMITS` (the CLI, ``scan``, ``stream``,
``download``, the service and every error message), so a limit is changed in one place and a
message always quotes the number that was enforced. Each bound is checked *before* the work it
guards is done: a header's declared size before decoding, a declared element length before
inflating, an archive's declared sizes before extracting, a model file's declared tensor
shapes before building a session.

| limit | value | guards |
|---|---|---|
| ``max_pixels`` | 50 M px per frame | images, DICOM frames (and their codestreams), video frames: CLI, scan, stream |
| ``serve_max_pixels`` | 40 M px per image | the service (many requests share one process) |
| ``serve_request_pixels`` | 64 M px per request | the service: decoded pixels of all images of one request |
| ``dicom_element_bytes`` | 16 MiB | any DICOM element but the pixel data, declared length (deflated data sets) |
| ``archive_total_bytes`` | 8 GiB | declared uncompressed total of a downloaded zip |
| ``archive_ratio`` | 200 | declared uncompressed / compressed size, per zip entry |
| ``archive_members`` | 100,000 | entries of a downloaded zip |
| ``model_bytes`` | 2 GiB | size of a model file (ONNX) |
| ``model_tensor_elements`` | 2**28 | elements of one declared ONNX tensor (initializer or graph input/output) |
| ``serve_receive_s`` | 30 s | time to receive one whole request, body included |
| ``serve_buffered_bytes`` | 96 MiB | request bytes buffered across all uploads in flight |

Numbers are far above what real ultrasound data needs (a frame is ~1 Mpx, a data set a few MB)
and far below what exhausts a small server. Torch-free: the stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fetalplanes.core.errors import ImageLoadError

__all__ = ["LIMITS", "BudgetExceeded", "Limits", "PixelBudget"]


@dataclass(frozen=True)
class Limits:
    """Input limits (see the module table); ``LIMITS`` is the instance every path reads."""

    max_pixels: int = 50_000_000
    serve_max_pixels: int = 40_000_000
    serve_request_pixels: int = 64_000_000
    dicom_element_bytes: int = 16 * 2**20
    archive_total_bytes: int = 8 * 2**30
    archive_ratio: int = 200
    archive_members: int = 100_000
    model_bytes: int = 2 * 2**30
    model_tensor_elements: int = 2**28
    serve_receive_s: float = 30.0
    serve_buffered_bytes: int = 96 * 2**20

    def inflated_bytes(self, max_pixels: int | None = None) -> int:
        """Cap on a deflated DICOM data set once inflated: one frame at the pixel limit as 16-bit
        RGB (the largest native frame the loader would accept) plus room for the header elements."""
        return (max_pixels or self.max_pixels) * 3 * 2 + self.dicom_element_bytes


LIMITS = Limits()


class BudgetExceeded(ImageLoadError):
    """A frame refused because the request's (or call's) decoded-pixel budget is spent; the file may be fine."""


@dataclass
class PixelBudget:
    """Decoded pixels one request (or one call) may still spend; the decode path charges each frame's
    header size (width x height) before decoding it and refuses the frame once the budget is spent.

    ``total`` is in pixels; ``spent`` grows with every accepted frame. Not thread-safe: one per request.
    """

    total: int
    spent: int = field(default=0)

    def charge(self, width: int, height: int, label: str, frame: int | None = None) -> None:
        """Spend ``width * height``; :class:`BudgetExceeded` naming ``label`` when it would exceed ``total``."""
        pixels = max(0, width) * max(0, height)
        if self.spent + pixels > self.total:
            left = max(0, self.total - self.spent)
            raise BudgetExceeded(
                label,
                f"{width}x{height} = {pixels:,} pixels exceeds what is left of this request's decoded-pixel "
                f"budget ({left:,} of {self.total:,})",
                "fewer or smaller images per request",
                frame,
            )
        self.spent += pixels
