"""The one CSV reading rule, shared by every reader of label tables (FETAL_PLANES_DB, CSV lists,
external datasets).

Spreadsheets and dataset archives write CSV in many dialects; all of these read alike:

- a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped; CRLF, LF and CR line ends;
- the separator is sniffed from the header line: ``;`` (European Excel, the official
  FETAL_PLANES_DB table), ``,`` or tab, whichever occurs most (``,`` on a tie);
- names and values are stripped of surrounding spaces (FETAL_PLANES_DB ships ``Train ``);
- trailing separators (``a,b,,``) and the empty columns they make are dropped;
- blank rows (no field with text, e.g. ``,,`` rows a spreadsheet leaves below the data) are
  skipped;
- a row with more non-empty fields than the header, or a file that is not UTF-8 text, is a
  :class:`TableFormatError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

__all__ = ["Table", "TableFormatError", "read_table"]

SEPARATORS = (",", ";", "\t")


class TableFormatError(ValueError):
    """A CSV file breaks the reading rule; the message names the file (and line) and what was expected."""


class Table:
    """A read CSV: ``columns`` (header, stripped) and ``rows`` (dicts column -> stripped value)
    with ``lines`` (the 1-based line number of each row, for messages)."""

    def __init__(self, path: Path, columns: list[str], rows: list[dict[str, str]], lines: list[int], sep: str) -> None:
        self.path, self.columns, self.rows, self.lines, self.separator = path, columns, rows, lines, sep

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, *names: str) -> str | None:
        """The first header name matching one of ``names`` (case-insensitive), or None."""
        lowered = {c.lower(): c for c in self.columns}
        return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)


def read_table(path: str | Path) -> Table:
    """Read ``path`` by the rule in the module docstring; raises :class:`TableFormatError`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TableFormatError(f"{path}: not UTF-8 text ({err}); expected a UTF-8 CSV file") from None
    except OSError as err:
        raise TableFormatError(f"{path}: cannot read ({err.strerror or err})") from None
    sep = _separator(text)
    records = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header: list[str] | None = None
    rows, lines = [], []
    for values in records:
        line = records.line_num
        values = [v.strip() for v in values]
        if not any(values):
            continue  # blank rows, including ",,," rows below a spreadsheet's data
        if header is None:
            header = _trim(values)
            if len(set(header)) != len(header) or "" in header:
                raise TableFormatError(f"{path}:{line}: header {header} has empty or repeated column names")
            continue
        if len(_trim(values)) > len(header):
            raise TableFormatError(
                f"{path}:{line}: {len(_trim(values))} fields, expected at most {len(header)} ({sep!r}-separated)"
            )
        values += [""] * (len(header) - len(values))
        rows.append(dict(zip(header, values)))
        lines.append(line)
    if header is None:
        raise TableFormatError(f"{path}: empty file; expected a header row and data rows")
    return Table(path, header, rows, lines, sep)


def _separator(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: first.count(sep) for sep in SEPARATORS}
    best = max(SEPARATORS, key=lambda s: (counts[s], s == ","))
    return best if counts[best] else ","


def _trim(values: list[str]) -> list[str]:
    """Values without the empty fields that trailing separators leave at the end."""
    end = len(values)
    while end and not values[end - 1]:
        end -= 1
    return values[:end]
