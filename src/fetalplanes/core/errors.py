"""The project's user-facing exception types: the only errors the CLI shows as one line.

Everything the user can fix (a bad option value, data that cannot give the asked-for result, an
unreadable input) raises a subclass of :class:`UserError`; ``fetalplanes.cli.common`` prints its
message and exits with code 2. Any other exception is a bug: the CLI lets it through with its
traceback (exit code 1), so a ``KeyError`` from a typo is never mistaken for bad input.

Subclasses that replace an older ``raise ValueError(...)`` also derive from ``ValueError`` so
callers (and tests) that catch ``ValueError`` keep working. Other modules subclass these
(e.g. an image-reading error in ``core.io``); keep this module import-free.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error the user can fix; its message is one line naming what was wrong."""


class UsageError(UserError, ValueError):
    """An argument or option value outside its valid set; the message lists the valid options."""


class DataError(UserError, ValueError):
    """The data given cannot produce the asked-for result (empty split, missing ids, shape mismatch)."""
