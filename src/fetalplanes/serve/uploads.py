"""Reading image uploads: streamed multipart parsing into memory with size limits.

Starlette's form parser spools files above 1 MB to a temporary file on disk; this service
promises that nothing an upload contains is written to disk, so the body is parsed here
with python-multipart's streaming parser straight into memory. The size limit is enforced
while the body streams in (a lying or absent Content-Length does not help a client), and
upload file names are only ever echoed back for display, never used as paths.

A part's Content-Disposition is read with the standard library's RFC 2231 support
(:mod:`email.message`), so ``filename*=UTF-8''...`` (RFC 6266 / RFC 5987, sent by some
clients for non-ASCII names) names a file part, and wins over a plain ``filename`` when
both are sent (RFC 6266 section 4.3). python-multipart ignores the extended form.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["Upload", "UploadError", "read_uploads", "safe_filename"]

# Headers, boundaries and field names of a multipart body: room on top of the files themselves.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FILENAME_CHARS = 200


class UploadError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Upload:
    """One uploaded file, held in memory."""

    field: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


def safe_filename(raw: str | None) -> str | None:
    """A display-only name: last path component, no control characters, bounded length."""
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:MAX_FILENAME_CHARS] or None


def content_disposition(raw: bytes) -> tuple[str, str | None]:
    """(part name, file name or None) of a multipart part's Content-Disposition header.

    ``filename*`` (RFC 5987 encoded, e.g. ``UTF-8''%C3%A9cho.png``) is preferred over
    ``filename``; None means the part carries no file (a plain form field).
    """
    message = Message()
    message["Content-Disposition"] = _decode(raw)
    params = message.get_params(header="content-disposition", failobj=[])[1:]
    names = [value for key, value in params if key.lower() == "name"]
    files = [value for key, value in params if key.lower() == "filename"]
    # decode_params turns filename* into a (charset, language, value) tuple: RFC 6266 prefers it.
    extended = [value for value in files if isinstance(value, tuple)]
    chosen = (extended or files or [None])[0]
    filename = None if chosen is None else collapse_rfc2231_value(chosen)
    name = collapse_rfc2231_value(names[0]) if names else ""
    return str(name), None if filename is None else str(filename)


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _Collector:
    """python-multipart callbacks that gather file parts in memory."""

    def __init__(self, max_files: int, max_file_bytes: int) -> None:
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.uploads: list[Upload] = []
        self.ended = False
        self._current: Upload | None = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._parts = 0
        self.fields: list[str] = []  # names of parts that carried no file

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._parts += 1
        # Ordinary form fields are ignored, but a flood of them is refused.
        if self._parts > self.max_files + 16:
            raise UploadError(422, f"too many form parts (at most {self.max_files} files are accepted)")
        self._current = None
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        name, filename = content_disposition(self._disposition)
        if filename is None:
            self.fields.append(name)  # a plain form field: its data is dropped, its name reported
            return
        if len(self.uploads) >= self.max_files:
            # 422, not 413: the count is a documented constraint of the request (maxItems).
            raise UploadError(422, f"too many files: at most {self.max_files} per request")
        self._current = Upload(name, safe_filename(filename))
        self.uploads.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is None:
            return
        self._current.data += data[start:end]
        if len(self._current.data) > self.max_file_bytes:
            name = self._current.filename or "upload"
            limit = self.max_file_bytes
            raise UploadError(413, f"{name}: file exceeds the upload limit of {limit / 2**20:.3g} MB ({limit:,} bytes)")

    def on_end(self) -> None:
        self.ended = True


def _boundary(content_type: str | None) -> bytes:
    if not content_type:
        raise UploadError(415, "missing Content-Type; send the image as multipart/form-data")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise UploadError(415, f"unsupported Content-Type {kind.decode('latin-1')!r}; expected multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(422, "multipart/form-data without a boundary parameter")
    return boundary


def _too_large(max_bytes: int, size: int | None = None) -> UploadError:
    what = f"request body of {size:,} bytes" if size is not None else "request body"
    return UploadError(413, f"{what} exceeds the upload limit of {max_bytes / 2**20:.3g} MB ({max_bytes:,} bytes)")


def _check_length(content_length: str | None, limit: int, max_bytes: int) -> None:
    """Early refusal from Content-Length; the streamed count below is what is enforced."""
    if content_length is None:
        return
    try:
        length = int(content_length)
    except ValueError:
        raise UploadError(422, f"invalid Content-Length {content_length!r}") from None
    if length > limit:
        raise _too_large(max_bytes, length)


async def read_uploads(
    stream: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    *,
    max_bytes: int,
    max_files: int,
) -> list[Upload]:
    """Parse a multipart body into in-memory uploads (files only; other fields ignored).

    Raises :class:`UploadError` with 413 (too large), 415 (not multipart) or 422 (malformed
    body, no file, too many files).
    """
    boundary = _boundary(content_type)
    limit = max_bytes + MULTIPART_OVERHEAD
    _check_length(content_length, limit, max_bytes)
    collector = _Collector(max_files, max_bytes)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        total = 0
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                raise _too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise UploadError(422, f"malformed multipart/form-data body ({err})") from None
    if not collector.ended:
        raise UploadError(422, "truncated multipart/form-data body (no closing boundary)")
    if not collector.uploads:
        hint = "send the image as a multipart file field (Content-Disposition: form-data; name=\"file\"; filename=\"scan.png\")"
        if collector.fields:
            shown = ", ".join(repr(safe_filename(n) or n[:40]) for n in collector.fields[:5])
            raise UploadError(422, f"no file in the request: part(s) {shown} carry no filename, so they are form "
                                   f"fields, not files; {hint}")
        raise UploadError(422, f"no file in the request; {hint}")
    return collector.uploads
