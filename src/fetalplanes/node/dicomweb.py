"""The pull path: QIDO-RS a study, WADO-RS its images, classify, STOW-RS the SRs back (dicomweb-client).

For servers that do not push: ``fetalplanes dicomweb --url URL --study UID``. Each retrieved
instance goes through exactly the node's pipeline (admission gate, journal, classification, SR,
delivery), so results are identical and idempotent: a second run over the same study finds every
instance already journaled and re-sends only what is still undelivered.
"""

from __future__ import annotations

import logging
import os
from io import BytesIO
from pathlib import Path
from typing import Any

from fetalplanes.core.errors import ImageLoadError, UserError
from fetalplanes.node.classify import admit
from fetalplanes.node.forward import StowTarget, _first_line
from fetalplanes.node.journal import Journal
from fetalplanes.node.pipeline import Pipeline
from fetalplanes.node.scp import STORAGE_CLASSES

__all__ = ["DicomWebError", "pull_study"]

log = logging.getLogger(__name__)


class DicomWebError(UserError):
    """The DICOMweb server cannot be queried (down, wrong URL, unknown study): one line."""


def pull_study(model: str | os.PathLike[str], url: str, study: str, journal_dir: str | os.PathLike[str],
               stow: StowTarget, threads: int | None = None) -> dict[str, Any]:
    """Classify every image instance of ``study`` on ``url`` and STOW the results to ``stow``.

    Returns a summary: instances found, journaled, refused (one line each), failed, delivered,
    undelivered, and the SR SOP Instance UIDs. Raises :class:`DicomWebError` when the study
    cannot be searched, and :class:`~fetalplanes.node.journal.JournalError` when another process
    (a running node) holds ``journal_dir``.
    """
    from dicomweb_client.api import DICOMwebClient

    from fetalplanes.runtime import load_predictor

    client = DICOMwebClient(url)
    try:
        found = client.search_for_instances(study_instance_uid=study)
    except Exception as exc:  # requests errors, HTTP 4xx/5xx
        raise DicomWebError(f"{url}: QIDO-RS for study {study} failed ({type(exc).__name__}: {_first_line(exc)})") from None
    with Journal(journal_dir) as journal:  # JournalError when a running node holds the folder
        return _pull(client, study, found, journal, Pipeline(load_predictor(model, threads=threads), journal, [stow]))


def _pull(client: Any, study: str, found: list[dict[str, Any]], journal: Journal,
          pipeline: Pipeline) -> dict[str, Any]:
    uids, refused = [], []
    for item in found:
        sop_class = _tag(item, "00080016")
        series, sop = _tag(item, "0020000E"), _tag(item, "00080018")
        if sop_class not in STORAGE_CLASSES:
            log.info("%s: SOP class %s is not an image the node classifies; skipped", sop, sop_class)
            continue
        try:
            uids.append(_fetch(client, journal, study, series, sop))
        except (ImageLoadError, DicomWebError) as err:
            refused.append(str(err))
            log.warning("%s", err)
    pipeline.classify_pending()
    pipeline.deliver_pending()
    states = {uid: journal.state(uid) for uid in uids}
    return {
        "study": study, "instances": len(found), "journaled": len(uids), "refused": refused,
        "failed": [journal.failure(u) for u, s in states.items() if s == "failed"],
        "delivered": sum(s == "delivered" for s in states.values()),
        "undelivered": [u for u, s in states.items() if s == "processed"],
        "sr": [journal.outcome(u).get("sr") for u, s in states.items() if s in ("processed", "delivered")],
    }


def _fetch(client: Any, journal: Journal, study: str, series: str, sop: str) -> str:
    label = f"WADO-RS instance {sop}"
    if journal.state(sop) not in (None, "failed"):
        return sop  # idempotent: journaled by an earlier run (a failed one is fetched and tried again)
    try:
        ds = client.retrieve_instance(study, series, sop)
    except Exception as exc:
        raise DicomWebError(f"{label}: retrieve failed ({type(exc).__name__}: {_first_line(exc)})") from None
    buf = BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except Exception as exc:  # a data set pydicom cannot write back is one we cannot journal
        raise ImageLoadError(label, f"cannot encode the retrieved data set ({type(exc).__name__}: {exc})") from None
    data = buf.getvalue()
    admit(data, label)
    journal.receive(sop, data, {"source": "wado-rs", "study": study, "series": series})
    return sop


def _tag(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])
