"""The node's on-disk journal: every received instance, its results, and their delivery, by SOP Instance UID.

"Nothing is lost" rests on three rules kept here:

1. an instance is written to disk (temporary sibling, fsync, rename, fsync of the folder) *before*
   the C-STORE success status is returned, so a crash after "success" cannot lose it;
2. each step's outcome is a file written the same way, so after a restart (or a SIGKILL) the
   journal says exactly what is left to do: classify (``received``), deliver (``processed``),
   nothing (``delivered`` or ``failed``);
3. the journal is keyed by the source SOP Instance UID and the result UIDs are derived from it
   (:func:`fetalplanes.node.sr.result_uids`), so a re-sent instance is not processed twice and a
   result sent twice (crash between "sent" and "marked sent") is the same instance to the PACS.
   The exception is an instance marked ``failed``: its re-sent copy is journaled again and
   classified again (a scanner re-sends what went wrong; it must not be silently swallowed).

Layout (one folder per instance)::

    ROOT/instances/<SOPInstanceUID>/instance.dcm     received (Part 10 file as sent)
                                   /received.json    calling AE, SOP class, time
                                   /results/*.dcm    the SR (and SC) made for it
                                   /processed.json   outcome of classification, result file names
                                   /delivery.json    attempts, next try, targets reached
                                   /delivered.json   every target reached
                                   /failed.json      no result can be made (one-line reason)
    ROOT/.writer.lock                                one writing process at a time (its PID inside)

One process writes a journal: a :class:`Journal` opened for writing takes an exclusive lock on
``ROOT/.writer.lock`` (``flock``; the kernel drops it when the process ends, even by SIGKILL),
and only that process deletes the temporary files a crashed writer left behind. A second
process (another node, a ``dicomweb`` pull on the same folder) gets a one-line JournalInUse; a
monitor reads with ``Journal(root, writer=False)``, which takes no lock and deletes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from fetalplanes.core.errors import UserError

__all__ = ["Journal", "JournalError", "JournalInUse", "STATES"]

log = logging.getLogger(__name__)

STATES = ("received", "processed", "delivered", "failed")
# A UID is digits and dots, at most 64 characters (PS3.5 9.1); anything else never becomes a path.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
LOCK_NAME = ".writer.lock"

# Journals this process holds for writing: resolved root -> [lock file descriptor, open Journals].
# flock belongs to an open file, so a second Journal of the same root in this process shares the
# hold (the first one's start-up clean-up already ran; its in-flight writes are not stale).
_HOLDS: dict[Path, list[int]] = {}
_HOLDS_LOCK = threading.Lock()


class JournalError(OSError):
    """The journal cannot be written (disk full, permissions): the C-STORE must not be acknowledged."""


class JournalInUse(JournalError, UserError):
    """Another process holds the journal for writing (one line naming the folder and its PID)."""


def _durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it is complete or absent after a crash or power cut.

    core.atomic fsyncs the file but not the folder; a rename is only durable once the folder's
    entry is on disk, and the C-STORE success status promises exactly that.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make renames and unlinks in ``folder`` durable (its entries on disk)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_json(path: Path, obj: Any) -> None:
    _durable_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _hold(root: Path) -> None:
    """Take (or share, within this process) the writer lock of ``root``; the first holder deletes
    the temporary files of a crashed writer. JournalInUse when another process holds it."""
    key = root.resolve()
    with _HOLDS_LOCK:
        if key in _HOLDS:
            _HOLDS[key][1] += 1
            return
        fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if not isinstance(exc, BlockingIOError):  # e.g. no locks on this filesystem: said as itself
                    raise
                raise JournalInUse(f"{root}: the journal is held by another process (PID {holder}: a running "
                                   "dicom-node or dicomweb pull); one process writes a journal, give this one "
                                   "another --journal folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HOLDS[key] = [fd, 1]
        for stale in (key / "instances").glob("*/.*.tmp"):  # a write cut short by a crash: never trusted
            stale.unlink(missing_ok=True)


def _release(root: Path) -> None:
    key = root.resolve()
    with _HOLDS_LOCK:
        held = _HOLDS.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HOLDS[key]
            os.close(held[0])  # drops the flock


class Journal:
    """The journal under ``root``. Thread-safe for one process.

    ``writer=True`` (the node, a ``dicomweb`` pull): creates the folder when missing and holds
    the writer lock until :meth:`close` (or the process ends); raises :class:`JournalInUse` (a
    JournalError and a UserError) when another process holds it. ``writer=False``: a reader
    beside a live writer (monitoring, tests): no lock, no clean-up, and every transition raises
    JournalError.
    """

    def __init__(self, root: str | os.PathLike[str], *, writer: bool = True) -> None:
        self.root = Path(root)
        self.folder = self.root / "instances"
        self._lock = threading.Lock()
        self.writer = False
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)  # PermissionError: the CLI's one line
            _hold(self.root)
            self.writer = True

    def close(self) -> None:
        """Release this Journal's share of the writer lock (idempotent)."""
        if self.writer:
            self.writer = False
            _release(self.root)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writable(self) -> None:
        if not self.writer:
            raise JournalError(f"{self.root}: this Journal was opened read-only (writer=False) or closed")

    # ------------------------------------------------------------------ paths and states
    def path(self, uid: str) -> Path:
        """The instance's folder; ValueError for a string that is not a DICOM UID."""
        if not (isinstance(uid, str) and len(uid) <= 64 and _UID.match(uid)):
            raise ValueError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
        return self.folder / uid

    def instance_file(self, uid: str) -> Path:
        return self.path(uid) / "instance.dcm"

    def state(self, uid: str) -> str | None:
        """'received', 'processed', 'delivered', 'failed', or None for an unknown UID."""
        d = self.path(uid)
        for name, state in (("failed.json", "failed"), ("delivered.json", "delivered"),
                            ("processed.json", "processed"), ("instance.dcm", "received")):
            if (d / name).is_file():
                return state
        return None

    def uids(self, state: str | None = None) -> list[str]:
        """Journaled UIDs in order of receipt (oldest first), optionally only those in ``state``."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown journal state {state!r}; choose one of {list(STATES)}")
        found = []
        if not self.folder.is_dir():  # a reader of a journal no writer has created yet
            return []
        for d in self.folder.iterdir():
            if d.name.startswith(".") or not (d / "instance.dcm").is_file():
                continue
            if state is None or self.state(d.name) == state:
                found.append(((d / "instance.dcm").stat().st_mtime_ns, d.name))
        return [uid for _, uid in sorted(found)]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for uid in self.uids():
            out[self.state(uid) or "received"] += 1
        return out

    # ------------------------------------------------------------------ transitions
    def receive(self, uid: str, data: bytes, info: dict[str, Any]) -> bool:
        """Journal a received instance durably; True when it is (again) to be classified.

        - unknown UID: journaled, True;
        - ``failed`` (its first copy could not be reported): the re-sent copy replaces it, the
          failure moves to ``received.json``'s ``previous_failures`` and ``failed.json`` is removed
          last, so the instance is ``received`` again and classified again; True;
        - ``received`` (not classified yet), ``processed`` or ``delivered``: nothing written, False
          (idempotent: a re-send never makes a second result; a pending one is classified anyway).

        Raises :class:`JournalError` when the disk refuses the write.
        """
        self._writable()
        with self._lock:
            d = self.path(uid)
            state = self.state(uid)
            if state not in (None, "failed"):
                return False
            try:
                record = {**info, "received": time.time(), "bytes": len(data)}
                if state == "failed":
                    old = _read_json(d / "received.json")
                    record["previous_failures"] = (old.get("previous_failures", []) + [self.failure(uid)])[-10:]
                _write_json(d / "received.json", record)
                _durable_write(d / "instance.dcm", data)  # its presence means "received"
                if state == "failed":  # a stale outcome must not count as this copy's result
                    for name in ("processed.json", "delivery.json", "delivered.json", "failed.json"):
                        (d / name).unlink(missing_ok=True)  # failed.json last: until then, still "failed"
                    _fsync_dir(d)
            except OSError as exc:
                raise JournalError(f"cannot journal instance {uid} under {self.root}: {exc}") from exc
            if state == "failed":
                log.info("instance %s: re-sent after a failure; classified again", uid)
            return True

    def info(self, uid: str) -> dict[str, Any]:
        return _read_json(self.path(uid) / "received.json")

    def save_results(self, uid: str, files: dict[str, bytes], outcome: dict[str, Any]) -> None:
        """Store the result files, then ``processed.json`` naming them (so a partial set never counts)."""
        self._writable()
        d = self.path(uid)
        for name, data in files.items():
            _durable_write(d / "results" / name, data)
        _write_json(d / "processed.json", {**outcome, "files": sorted(files), "processed": time.time()})

    def results(self, uid: str) -> list[Path]:
        names = _read_json(self.path(uid) / "processed.json").get("files", [])
        return [self.path(uid) / "results" / n for n in names]

    def outcome(self, uid: str) -> dict[str, Any]:
        return _read_json(self.path(uid) / "processed.json")

    def delivery(self, uid: str) -> dict[str, Any]:
        """{'attempts': n, 'next_try': unix time, 'reached': [target, ...], 'last_error': str}."""
        return {"attempts": 0, "next_try": 0.0, "reached": [], "last_error": None,
                **_read_json(self.path(uid) / "delivery.json")}

    def record_attempt(self, uid: str, reached: list[str], error: str | None, next_try: float) -> None:
        self._writable()
        state = self.delivery(uid)
        state.update(attempts=state["attempts"] + 1, reached=sorted(set(reached)), last_error=error,
                     next_try=next_try)
        _write_json(self.path(uid) / "delivery.json", state)

    def mark_delivered(self, uid: str, targets: list[str]) -> None:
        self._writable()
        _write_json(self.path(uid) / "delivered.json", {"targets": targets, "delivered": time.time()})

    def mark_failed(self, uid: str, reason: str) -> None:
        self._writable()
        _write_json(self.path(uid) / "failed.json", {"reason": reason, "failed": time.time()})

    def failure(self, uid: str) -> str | None:
        return _read_json(self.path(uid) / "failed.json").get("reason")

    def __iter__(self) -> Iterator[str]:
        return iter(self.uids())
