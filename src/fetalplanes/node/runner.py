"""Running the node in the foreground: model + journal + pipeline + SCP, until SIGTERM or Ctrl+C.

Stopping is graceful (the SCP stops accepting, the workers finish their current step); a SIGKILL
or power cut is survived by the journal: the next start resumes from it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from fetalplanes.node.forward import Target
from fetalplanes.node.journal import Journal
from fetalplanes.node.pipeline import Pipeline
from fetalplanes.node.scp import StorageSCP

__all__ = ["NodeSettings", "run_node", "start_node"]

log = logging.getLogger(__name__)


@dataclass
class NodeSettings:
    """What ``fetalplanes dicom-node`` is given (see docs/pacs.md)."""

    model: Path
    journal: Path
    aet: str = "FETALPLANES"
    host: str = "127.0.0.1"
    port: int = 11112
    targets: Sequence[Target] = field(default_factory=list)
    allowed_callers: Sequence[str] = ()
    k: int = 2
    threads: int | None = None
    retry_s: float = 1.0
    # Predictor -> overlay function, a sentence saying why there is none, or None: how the CLI
    # wires heat maps in (fetalplanes.explain.service_explainer) without the node importing explain.
    overlay_factory: Callable[[Any], Any] | None = None


def start_node(settings: NodeSettings) -> tuple[StorageSCP, Pipeline]:
    """Load the model, open the journal, start the workers (resuming the journal), then listen."""
    from fetalplanes.runtime import load_predictor

    # pynetdicom logs every PDU and highdicom every copied module at INFO: the node's own lines
    # (received, refused, classified, delivered) must stay readable.
    for noisy in ("pynetdicom", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Imported here, in one thread, before the workers start: two threads importing pydicom at
    # once (a worker resuming the journal, the SCP starting) can meet its import cycle half-done.
    import highdicom  # noqa: F401
    import pydicom  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import pynetdicom  # noqa: F401

    predictor = load_predictor(settings.model, threads=settings.threads)
    # Held (the writer lock) until the process ends: a worker still finishing when stop() gives
    # up waiting must not find its journal closed under it.
    journal = Journal(settings.journal)
    try:
        overlay = settings.overlay_factory(predictor) if settings.overlay_factory else None
        if settings.overlay_factory and not callable(overlay):
            log.warning("no heat-map Secondary Capture: %s", overlay or "heat maps need a training checkpoint (.ckpt)")
            overlay = None
        pipeline = Pipeline(predictor, journal, settings.targets, k=settings.k, backoff_s=settings.retry_s,
                            overlay=overlay)
        scp = StorageSCP(journal, pipeline, settings.aet, settings.host, settings.port, settings.allowed_callers)
        scp.start()  # first: a port in use stops the node before any worker runs
    except BaseException:
        journal.close()  # a node that did not start holds nothing
        raise
    pipeline.start()
    return scp, pipeline


def run_node(settings: NodeSettings, ready_file: Path | None = None) -> None:
    """Run until SIGTERM/SIGINT. ``ready_file``, when given, is written once the port is bound
    (for scripts and tests that start the node as a process)."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    scp, pipeline = start_node(settings)
    if ready_file is not None:
        ready_file.write_text(str(os.getpid()))
    try:
        done.wait()
    finally:
        log.info("stopping: %s", scp.counts)
        scp.stop()
        pipeline.stop()
