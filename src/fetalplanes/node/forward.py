"""Sending results back: C-STORE to a DICOM AE (pynetdicom SCU) or STOW-RS to a DICOMweb server.

A target is parsed from the command line (``AET@host:port`` or an http(s) URL); ``send`` raises
:class:`DeliveryError` (one line naming the target and why) unless every file was stored, so
the pipeline can keep the results queued and retry with backoff. Sending the same result twice
is harmless: its SOP Instance UID is fixed (:func:`fetalplanes.node.sr.result_uids`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from fetalplanes.core.errors import UsageError

__all__ = ["CStoreTarget", "DeliveryError", "StowTarget", "Target", "parse_forward", "parse_stow"]

log = logging.getLogger(__name__)

_AE = re.compile(r"^(?P<aet>[^@\\]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>[0-9]{1,5})$")
TIMEOUT_S = 30.0


class DeliveryError(RuntimeError):
    """A result could not be stored at its target (the target is down, refuses, or answers an error)."""


class Target(Protocol):
    name: str

    def send(self, files: Sequence[Path]) -> None: ...


@dataclass(frozen=True)
class CStoreTarget:
    """A DICOM Storage SCP (a PACS, a viewer) reached by C-STORE; ``calling`` is our own AE title."""

    aet: str
    host: str
    port: int
    calling: str = "FETALPLANES"

    @property
    def name(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"

    def send(self, files: Sequence[Path]) -> None:
        """C-STORE every file in one association; DeliveryError unless all are stored (status 0x0000
        or a warning 0xB000-0xB007)."""
        from pydicom import dcmread
        from pynetdicom import AE

        datasets = [dcmread(f) for f in files]
        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        # One presentation context per (class, syntax): an SCP accepts one syntax per context.
        for uid, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
            ae.add_requested_context(uid, syntax)
        assoc = ae.associate(self.host.strip("[]"), self.port, ae_title=self.aet)
        if not assoc.is_established:
            raise DeliveryError(f"{self.name}: association refused or no answer")
        try:
            for f, ds in zip(files, datasets):
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None or not (code == 0 or 0xB000 <= code <= 0xB007):
                    shown = "no answer" if code is None else f"status 0x{code:04X}"
                    raise DeliveryError(f"{self.name}: C-STORE of {f.name} failed ({shown})")
        finally:
            assoc.release()


@dataclass(frozen=True)
class StowTarget:
    """A DICOMweb server's STOW-RS endpoint (the base URL, e.g. http://pacs:8042/dicom-web)."""

    url: str

    @property
    def name(self) -> str:
        return self.url

    def send(self, files: Sequence[Path]) -> None:
        from dicomweb_client.api import DICOMwebClient
        from pydicom import dcmread

        try:
            DICOMwebClient(self.url, timeout=TIMEOUT_S).store_instances([dcmread(f) for f in files])
        except Exception as exc:  # requests' ConnectionError, HTTPError, ... : all mean "not stored yet"
            raise DeliveryError(f"{self.url}: STOW-RS failed ({type(exc).__name__}: {_first_line(exc)})") from None


def parse_forward(text: str, calling: str = "FETALPLANES") -> CStoreTarget:
    """``AET@host:port`` -> CStoreTarget; UsageError naming the expected form otherwise."""
    m = _AE.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise UsageError(f"--forward {text!r}: expected AET@host:port, e.g. ORTHANC@127.0.0.1:4242 "
                         "(AE title up to 16 characters, port 1-65535)")
    return CStoreTarget(m["aet"], m["host"], int(m["port"]), calling)


def parse_stow(text: str, option: str = "--stow") -> StowTarget:
    """An http(s) DICOMweb base URL -> StowTarget; UsageError naming ``option`` otherwise."""
    if not re.match(r"^https?://[^\s/]+", text.strip()):
        raise UsageError(f"{option} {text!r}: expected an http:// or https:// DICOMweb base URL, "
                         "e.g. http://127.0.0.1:8042/dicom-web")
    return StowTarget(text.strip().rstrip("/"))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
