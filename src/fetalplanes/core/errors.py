"""The project's user-facing exception types: the only errors the CLI shows as one line.

Everything the user can fix (a bad option value, data that cannot give the asked-for result, an
unreadable input) raises a subclass of :class:`UserError`; ``fetalplanes.cli.common`` prints its
message and exits with code 2. Any other exception is a bug: the CLI lets it through with its
traceback (exit code 1), so a ``KeyError`` from a typo is never mistaken for bad input.

Subclasses that replace an older ``raise ValueError(...)`` also derive from ``ValueError`` so
callers (and tests) that catch ``ValueError`` keep working.

The one input error, :class:`ImageLoadError` (file, frame, reason, expected), lives here too:
every loader in :mod:`fetalplanes.core` (images, DICOM, cine loops, video, frame folders) raises
it and nothing else for bad input, so the CLI and the service print one line per bad file (or
frame) and carry on with the good ones. It sits below :mod:`~fetalplanes.core.io` and
:mod:`~fetalplanes.core.dicom`, so neither has to import the other for it.
"""

from __future__ import annotations

import re

__all__ = ["EXPECTED", "BadFilesError", "DataError", "ImageLoadError", "MissingExtraError", "ModelFileError",
           "ModelFileNotFound", "UsageError", "UserError"]

# The accepted formats of core.formats.FORMATS (formats imports this module, so the text is
# written out here; tests/core/test_formats.py checks it equals formats.EXPECTED_TEXT).
EXPECTED = "a PNG, JPEG, TIFF, GIF, WebP, BMP, AVIF or DICOM image"


class UserError(Exception):
    """Base of every error the user can fix; its message is one line naming what was wrong."""


class UsageError(UserError, ValueError):
    """An argument or option value outside its valid set; the message lists the valid options."""


class DataError(UserError, ValueError):
    """The data given cannot produce the asked-for result (empty split, missing ids, shape mismatch)."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the ``fetalplanes[extra]`` to install."""


class ModelFileError(UserError, ValueError):
    """A model file cannot be used; the one-line message names the file and the accepted formats.

    Raised by the model-file readers (``runtime.artifact``, ``runtime.onnx_bounds``,
    ``models.checkpoint``); defined here so that they need not import each other."""


class ModelFileNotFound(ModelFileError, FileNotFoundError):
    """The model path does not exist (also a FileNotFoundError)."""


class ImageLoadError(DataError):
    """An input cannot be loaded; the message names the file (and frame), the reason and what was expected.

    Construct as ``ImageLoadError(name, reason, expected=..., frame=...)``; a single
    preformatted message, ``ImageLoadError("x.png: ...")``, is accepted too. ``frame`` is the
    0-based frame index inside a multi-frame file (DICOM cine, video, multi-page TIFF), the
    same index the frame iterator and ``stream``'s frames.csv use.
    """

    def __init__(self, name: str, reason: str | None = None, expected: str = EXPECTED, frame: int | None = None) -> None:
        where = name if frame is None else f"{name}: frame {frame}"
        message = name if reason is None else f"{where}: {reason}; expected {expected}"
        super().__init__(_one_line(message))
        self.name = name
        self.reason = reason if reason is not None else name
        self.expected = expected
        self.frame = frame
        self._init_args = (name, reason, expected, frame)

    @property
    def file(self) -> str:
        """The file (or upload) name, as given to the loader."""
        return self.name

    def with_frame(self, frame: int) -> ImageLoadError:
        """The same error (same class), located at ``frame`` of its file."""
        return type(self)(self.name, self.reason, self.expected, frame)

    def __reduce__(self) -> tuple:
        # Default exception pickling replays self.args (the message) as the only argument,
        # which would lose .reason in worker processes (e.g. data-loader workers).
        return (type(self), self._init_args)


class GateRefusal(ImageLoadError):
    """A readable DICOM the metadata gate refuses (``core.us_regions``: not ultrasound, or no B-mode
    tissue region): the file is fine, it is just not an input for this model. Counted apart from
    unreadable files (``evaluate --ood-data``)."""


def _one_line(text: str) -> str:
    """Control characters (newlines from a decoder's message or a damaged file's own text) become
    spaces, so every error prints as exactly one line."""
    return _CONTROL.sub(" ", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class BadFilesError(DataError):
    """Raised by :func:`fetalplanes.core.io.check_files`; ``.bad`` lists every ``(name, reason)`` pair."""

    def __init__(self, bad: list[tuple[str, str]]) -> None:
        self.bad = list(bad)
        lines = "\n".join(f"  {name}: {reason}" for name, reason in self.bad)
        header = (f"{len(self.bad)} image file(s) cannot be loaded (expected {EXPECTED} each; "
                  "--skip-bad leaves them out and goes on):")
        super().__init__(f"{header}\n{lines}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.bad,))
