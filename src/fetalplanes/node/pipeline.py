"""The node's worker: journaled instances -> classified -> SR written -> delivered, with retries.

Two threads share the :class:`~fetalplanes.node.journal.Journal`: one classifies ``received``
instances and writes their SR (``processed``), one delivers ``processed`` results to every target
(``delivered``). A delivery that fails stays queued and is retried with exponential backoff
(:data:`BACKOFF_S`, capped at :data:`MAX_BACKOFF_S`); everything in flight lives in the journal,
so a restart simply resumes. An instance no result can be made for (no frame decodes, a header
highdicom cannot turn into an SR) is marked ``failed`` with a one-line reason; the node goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from io import BytesIO
from typing import Any, Callable, Sequence

from fetalplanes.node.classify import classify_file
from fetalplanes.node.forward import DeliveryError, Target
from fetalplanes.node.journal import Journal
from fetalplanes.node.sr import AlgorithmInfo, build_sr

__all__ = ["BACKOFF_S", "MAX_BACKOFF_S", "Pipeline", "make_results"]

log = logging.getLogger(__name__)

BACKOFF_S = 1.0
"""Wait before the first retry of a failed delivery (seconds); doubled per attempt."""
MAX_BACKOFF_S = 300.0
BATCH = 32
"""Most results sent in one association."""


Overlay = Callable[[Any], bytes]
"""A PIL image -> PNG bytes of its heat-map overlay (``serve.backends.Explainer``'s shape)."""


def make_results(predictor: Any, journal: Journal, uid: str, algorithm: AlgorithmInfo, k: int = 2,
                 overlay: Overlay | None = None) -> dict[str, Any]:
    """Classify one journaled instance and store its SR; returns the outcome recorded.

    Marks the instance ``failed`` (and returns ``{'failed': reason}``) when no result can be made.
    """
    from pydicom import dcmread

    path = journal.instance_file(uid)
    results = classify_file(predictor, path, k=k)
    for r in results:
        if r.error:
            log.warning("%s: %s", uid, r.error)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # highdicom warns about legal-but-odd names of real scanners
            header = dcmread(path, stop_before_pixels=True)
            sr = build_sr(header, results, algorithm)
            buf = BytesIO()
            sr.save_as(buf, enforce_file_format=True)
    except Exception as exc:  # highdicom/pydicom refuse a header (missing Type 1 attribute, bad UID...)
        reason = f"instance {uid}: no result made ({type(exc).__name__}: {_one_line(exc)})"
        log.error("%s", reason)
        journal.mark_failed(uid, reason)
        return {"failed": reason}
    answered = [r for r in results if r.prediction is not None]
    files = {"sr.dcm": buf.getvalue()}
    if overlay is not None:
        sc = _overlay_sc(path, header, answered, algorithm, overlay, uid)
        if sc is not None:
            files["sc.dcm"] = sc
    outcome = {"frames": len(results), "answered": len(answered), "sr": str(sr.SOPInstanceUID),
               "series": str(sr.SeriesInstanceUID), "study": str(sr.StudyInstanceUID),
               # planes reported (an out-of-distribution frame reports none: docs/ood.md)
               "labels": sorted({r.prediction.plane for r in answered if r.prediction.plane}),  # type: ignore[union-attr]
               "errors": [r.error for r in results if r.error][:20]}
    journal.save_results(uid, files, outcome)
    log.info("%s: %d/%d frame(s) classified, SR %s", uid, len(answered), len(results), sr.SOPInstanceUID)
    return outcome


def _overlay_sc(path: Any, header: Any, answered: list[Any], algorithm: AlgorithmInfo, overlay: Overlay,
                uid: str) -> bytes | None:
    """The heat-map SC of the most confident frame, or None (logged) when it cannot be made: the SR
    is the result, the SC an optional extra that must never hold it back."""
    from fetalplanes.core.dicom import DicomFrames
    from fetalplanes.core.formats import DEFAULT_MAX_PIXELS
    from fetalplanes.core.postprocess import NOT_A_PLANE
    from fetalplanes.node.sc import build_overlay_sc

    if not answered:
        return None
    best = max(answered, key=lambda r: r.prediction.confidence)
    frame = best.frame or 0
    try:
        image = DicomFrames(path.read_bytes(), str(path), DEFAULT_MAX_PIXELS).frame(frame)
        shown = best.prediction.plane or NOT_A_PLANE  # never a plane name for a rejected frame
        caption = f"{algorithm.name}: {shown} {best.prediction.confidence:.0%}" + (
            f", frame {frame + 1}" if best.frame is not None else "")
        sc = build_overlay_sc(header, overlay(image), caption, algorithm)
        buf = BytesIO()
        sc.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - explainer, highdicom: any failure costs only the SC
        log.warning("%s: no heat-map SC (%s: %s); the SR is sent", uid, type(exc).__name__, _one_line(exc))
        return None


class Pipeline:
    """Background classification and delivery over a journal (see module docstring)."""

    def __init__(self, predictor: Any, journal: Journal, targets: Sequence[Target], k: int = 2,
                 backoff_s: float = BACKOFF_S, clock: Callable[[], float] = time.time,
                 overlay: Overlay | None = None) -> None:
        self.predictor, self.journal, self.targets, self.k = predictor, journal, list(targets), k
        self.overlay = overlay
        self.algorithm = AlgorithmInfo.from_predictor(predictor)
        self.backoff_s, self.clock = backoff_s, clock
        self._work = threading.Event()
        self._stop = threading.Event()
        self._deliver_wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start both workers; whatever the journal holds from a previous run is resumed."""
        left = self.journal.counts()
        if left["received"] or left["processed"]:
            log.info("resuming: %d instance(s) to classify, %d result(s) to deliver", left["received"], left["processed"])
        for name, loop in (("classify", self._classify_loop), ("deliver", self._deliver_loop)):
            t = threading.Thread(target=loop, name=f"fetalplanes-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.notify()

    def notify(self) -> None:
        """Wake the workers (a new instance was journaled)."""
        self._work.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._work.set()
        self._deliver_wake.set()
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------------ one step each
    def classify_pending(self) -> int:
        done = 0
        for uid in self.journal.uids("received"):
            if self._stop.is_set():
                break
            try:
                make_results(self.predictor, self.journal, uid, self.algorithm, self.k, self.overlay)
            except Exception as exc:  # a bug must not stop the node: the instance is marked, the rest go on
                reason = f"instance {uid}: classification failed ({type(exc).__name__}: {_one_line(exc)})"
                log.error("%s", reason)
                self.journal.mark_failed(uid, reason)
            done += 1
            self._deliver_wake.set()  # deliver each result as soon as it exists, not after the whole queue
        return done

    def deliver_pending(self) -> float:
        """Try every due result once; returns seconds until the next retry is due (inf if none)."""
        if not self.targets:
            return float("inf")
        wait, due = float("inf"), []
        for uid in self.journal.uids("processed"):
            state = self.journal.delivery(uid)
            now = self.clock()
            if state["next_try"] > now:
                wait = min(wait, state["next_try"] - now)
            else:
                due.append((uid, state))
        if len(due) > 1 and self._deliver_together(due[:BATCH]):
            due = due[BATCH:]
        for uid, state in due:
            if self._stop.is_set():
                break
            wait = min(wait, self._deliver(uid, state))
        return wait

    def _deliver_together(self, due: list[tuple[str, dict[str, Any]]]) -> bool:
        """Several results in one association per target (a burst from a scanner costs one
        association, not one each); False, nothing marked, when any target fails: then each
        result is tried on its own, with its own backoff."""
        files = [f for uid, _ in due for f in self.journal.results(uid)]
        for target in self.targets:
            if all(target.name in state["reached"] for _, state in due):
                continue
            try:
                target.send(files)
            except Exception as exc:  # noqa: BLE001 - any failure: fall back to one by one
                log.debug("batch delivery to %s failed (%s); trying one by one", target.name, exc)
                return False
        for uid, _ in due:
            self.journal.mark_delivered(uid, [t.name for t in self.targets])
        log.info("%d result(s) delivered to %s", len(due), ", ".join(t.name for t in self.targets))
        return True

    def _deliver(self, uid: str, state: dict[str, Any]) -> float:
        reached, error = list(state["reached"]), None
        files = self.journal.results(uid)
        for target in self.targets:
            if target.name in reached:
                continue
            try:
                target.send(files)
                reached.append(target.name)
            except DeliveryError as exc:
                error = str(exc)
            except Exception as exc:  # pynetdicom/requests internals: still "not delivered yet"
                error = f"{target.name}: {type(exc).__name__}: {_one_line(exc)}"
        if error is None:
            self.journal.mark_delivered(uid, reached)
            log.info("%s: result delivered to %s", uid, ", ".join(reached))
            return float("inf")
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** state["attempts"])
        self.journal.record_attempt(uid, reached, error, self.clock() + delay)
        log.warning("%s: delivery failed, retry in %.0f s (attempt %d): %s", uid, delay, state["attempts"] + 1, error)
        return delay

    # ------------------------------------------------------------------ loops
    def _classify_loop(self) -> None:
        while not self._stop.is_set():
            self._work.clear()
            if self.classify_pending():
                continue
            self._work.wait(1.0)

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            self._deliver_wake.clear()
            try:
                wait = self.deliver_pending()
            except Exception as exc:  # never let the delivery thread die: log and try again later
                log.error("delivery loop: %s: %s", type(exc).__name__, _one_line(exc))
                wait = self.backoff_s
            self._deliver_wake.wait(min(wait, 1.0))


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines)[:300] if lines else type(exc).__name__
