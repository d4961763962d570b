"""The Storage SCP: answers C-ECHO, accepts C-STORE of ultrasound and secondary-capture images.

Accepted storage classes (:data:`STORAGE_CLASSES`): US Image, US Multi-frame (and their retired
forms, which older scanners still send), Enhanced US Volume, Secondary Capture (single- and
multi-frame). Accepted transfer syntaxes (:func:`transfer_syntaxes`): every one the installed
pydicom decoders can read, from uncompressed and deflated to RLE, JPEG Baseline/Extended, JPEG
Lossless, JPEG-LS and JPEG 2000; refusing these is why Philips and Voluson images "never arrive"
at many receivers (pynetdicom issues #1006, #670, #599, #62).

Per C-STORE (PS3.4 B.2.3 statuses):

- another SOP class is refused at association (presentation context "abstract syntax not
  supported"); a data set whose SOP Class UID does not match its context gets 0xA900;
- an instance that fails the admission gate (:func:`fetalplanes.node.classify.admit`: size,
  geometry, decoder, first frame) gets 0xC000 "cannot understand" with the one-line reason in
  ErrorComment, and the same line in the log;
- the journal cannot write it: 0xA700 "out of resources";
- otherwise it is journaled durably, *then* answered 0x0000 (a re-sent instance is answered
  0x0000 again and not processed twice).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Sequence

from fetalplanes.core.errors import ImageLoadError, UsageError
from fetalplanes.core.formats import DEFAULT_MAX_PIXELS
from fetalplanes.core.us_regions import SECONDARY_CAPTURE_SOP_CLASSES, US_SOP_CLASSES
from fetalplanes.node.classify import DEFAULT_MAX_BYTES, admit
from fetalplanes.node.journal import Journal, JournalError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from fetalplanes.node.pipeline import Pipeline

__all__ = ["STATUS", "STORAGE_CLASSES", "StorageSCP", "transfer_syntaxes"]

log = logging.getLogger(__name__)

# The metadata gate's own table (core.us_regions): the node accepts exactly what the gate lets in.
STORAGE_CLASSES: dict[str, str] = {**US_SOP_CLASSES, **SECONDARY_CAPTURE_SOP_CLASSES}
"""The one table of storage classes the node accepts (SOP Class UID -> name, PS3.4 B.5)."""

_CANDIDATE_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)

STATUS = {"success": 0x0000, "out_of_resources": 0xA700, "sop_class_mismatch": 0xA900, "cannot_understand": 0xC000}


def transfer_syntaxes() -> list[str]:
    """The transfer syntaxes offered: those of :data:`_CANDIDATE_SYNTAXES` that the installed
    pydicom decoders read (uncompressed ones always; compressed ones when their plugin is present)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    out = []
    for uid in _CANDIDATE_SYNTAXES:
        u = UID(uid)
        if not u.is_compressed:
            out.append(uid)
            continue
        try:
            if get_decoder(u).is_available:
                out.append(uid)
        except NotImplementedError:
            continue
    return out


def _register_retired_storage_classes() -> None:
    """Make pynetdicom treat every class of :data:`STORAGE_CLASSES` as a storage class.

    pynetdicom (3.0) knows the retired US Image (``...1.6``) and US Multi-frame (``...1.3``)
    classes only as generic services: a C-STORE of them was accepted at association and then
    answered with no status at all, although old scanners still send them. Idempotent."""
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import register_uid, uid_to_service_class

    for uid, name in STORAGE_CLASSES.items():
        if not issubclass(uid_to_service_class(uid), StorageServiceClass):
            register_uid(uid, "".join(w for w in name.title() if w.isalnum()), StorageServiceClass)


def _status(code: int, comment: str | None = None) -> Dataset:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO: 64 characters; the full line is in the log
    return ds


class StorageSCP:
    """A listening node: ``start()`` binds ``host:port`` as ``aet``; received instances go into the
    ``journal`` and wake the ``pipeline``. ``allowed_callers`` (AE titles), when given, is the
    only set of calling AEs accepted."""

    def __init__(self, journal: Journal, pipeline: Pipeline | None, aet: str = "FETALPLANES",
                 host: str = "127.0.0.1", port: int = 11112, allowed_callers: Sequence[str] = (),
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.journal, self.pipeline = journal, pipeline
        self.aet, self.host, self.port = aet, host, port
        self.allowed_callers = list(allowed_callers)
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self._server: Any = None
        self.counts = {"received": 0, "duplicate": 0, "refused": 0}
        self._lock = threading.Lock()

    def _ae(self) -> Any:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        _register_retired_storage_classes()
        ae = AE(ae_title=self.aet)
        syntaxes = transfer_syntaxes()
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(Verification)
        if self.allowed_callers:
            ae.require_calling_aet = self.allowed_callers
        ae.maximum_pdu_size = 0  # no limit on our side: the sender's PDU size is used
        return ae

    def start(self) -> None:
        """Listen in background threads; returns once the port is bound (UsageError if it cannot be)."""
        from pynetdicom import evt

        try:
            self._server = self._ae().start_server((self.host, self.port), block=False,
                                                   evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])
        except OSError as exc:
            raise UsageError(f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                             "choose another --port or --host") from None
        log.info("DICOM node %s listening on %s:%d (%d storage classes, %d transfer syntaxes)", self.aet,
                 self.host, self.port, len(STORAGE_CLASSES), len(transfer_syntaxes()))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def handle_store(self, event: Any) -> Dataset | int:
        """EVT_C_STORE: admit, journal durably, then answer (see module docstring for statuses)."""
        req_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "?")
        caller = str(getattr(event.assoc.requestor, "ae_title", "") or "?").strip()
        label = f"C-STORE from {caller} instance {req_uid}"
        try:
            data = event.encoded_dataset(include_meta=True)
            admitted = admit(data, label, self.max_pixels, self.max_bytes)
        except ImageLoadError as err:
            return self._refuse(STATUS["cannot_understand"], str(err))
        except Exception as exc:  # pynetdicom cannot even encode what it received
            return self._refuse(STATUS["cannot_understand"], f"{label}: unreadable data set ({type(exc).__name__}: {exc})")
        header = admitted.header
        sop_class, uid = str(header.get("SOPClassUID", "")), str(header.get("SOPInstanceUID", ""))
        if sop_class != str(event.context.abstract_syntax):
            return self._refuse(STATUS["sop_class_mismatch"],
                                f"{label}: SOP Class UID {sop_class or '(none)'} does not match the presentation "
                                f"context's {event.context.abstract_syntax}; expected one of {sorted(STORAGE_CLASSES)}")
        try:
            before = self.journal.state(uid)
            new = self.journal.receive(uid, data, {"calling_aet": caller, "sop_class": sop_class,
                                                   "frames": admitted.frames,
                                                   "study": str(header.get("StudyInstanceUID", ""))})
        except ValueError:
            return self._refuse(STATUS["cannot_understand"],
                                f"{label}: SOP Instance UID {uid!r} is not a valid UID; expected digits and dots")
        except JournalError as err:
            log.error("%s", err)
            return _status(STATUS["out_of_resources"], "cannot journal the instance")
        self._count("received" if new else "duplicate")
        if new and self.pipeline is not None:
            self.pipeline.notify()
        what = ("journaled again (its first copy failed): classified again" if new and before == "failed"
                else "journaled" if new else f"already journaled ({before}), not reprocessed")
        log.info("%s: %s (%d frame(s))", label, what, admitted.frames)
        return STATUS["success"]

    def _refuse(self, code: int, reason: str) -> Dataset:
        self._count("refused")
        log.warning("refused (0x%04X): %s", code, reason)
        return _status(code, reason.split(": ", 1)[-1])
