"""``fetalplanes stream``: standard-plane detection on every frame of an ultrasound cine.

Input is a video file (mp4/avi/..., decoded with PyAV, i.e. FFmpeg), a folder of frame
images (sorted by name) or a multi-frame DICOM cine loop, read frame by frame by
``core.frames.open_frames`` (bad frames skipped and reported by index). Every
frame goes through the one preprocessing (``core.preprocess``) and the exported ONNX model
(``runtime.onnx_backend.OnnxPredictor``); class probabilities are smoothed over time (EMA or a
causal sliding-window mean) so that the label does not flicker between frames; the frame
with the highest smoothed confidence for each plane is saved as a PNG — the frame a
sonographer would freeze, as in SonoNet-style standard-plane detection.

Outputs in OUT: ``frames.csv`` (one row per frame), ``best/<plane>.png``, ``stream.json``
(frames per second end to end and for the model alone, per-frame latency p50/p95, ...).
Decoding and preprocessing run in a background thread so they overlap with inference.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from fetalplanes.core.atomic import atomic_path, write_json, write_text
from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.frames import Frame
from fetalplanes.core.frames import open_frames as open_frames_core
from fetalplanes.core.postprocess import softmax, top1
from fetalplanes.core.preprocess import preprocess
from fetalplanes.data.synth import PLANE_CODES, render
from fetalplanes.runtime import load_predictor

log = logging.getLogger(__name__)

CSV_FIELDS = ("frame", "time_s", "raw_label", "raw_confidence", "smoothed_label", "smoothed_confidence", "abstain",
              "state", "ood_score", "latency_ms")


# ------------------------------------------------------------------------------ readers
def open_frames(path: str | os.PathLike[str], fps: float | None = None) -> tuple[Iterator[Frame], dict[str, Any]]:
    """(frame iterator, info) for a video file, a folder of frames or a multi-frame image.

    Reading is :func:`fetalplanes.core.frames.open_frames`: a bad frame is skipped and
    reported by index, a short read is reported, invalid DICOM timing falls back with a
    warning. ``info`` is filled in while the frames are read (decoded/skipped counts).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video, frame folder or DICOM file")
    reader = open_frames_core(path, fps=fps)
    return iter(reader), reader.info


def write_phantom_video(
    path: str | os.PathLike[str], n_frames: int = 30, size: tuple[int, int] = (320, 256), fps: int = 30, seed: int = 0
) -> Path:
    """An H.264 mp4 of SYNTHETIC phantom frames (runs of each plane), for tests and benchmarks.

    ``size`` is (width, height), both even (yuv420p). Written with PyAV: OpenCV's bundled
    FFmpeg cannot encode H.264 here.
    """
    import av

    planes, rng, path = list(PLANE_CODES), np.random.default_rng(seed), Path(path)
    run = max(1, n_frames // len(planes))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = int(size[0]), int(size[1])
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            gray = render(planes[(i // run) % len(planes)], rng, size)[0]
            frame = av.VideoFrame.from_ndarray(gray, format="gray").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# ------------------------------------------------------------------------------ smoothing
class Smoother:
    """Temporal smoothing of per-frame probabilities: ``none``, ``ema:ALPHA`` or ``window:N``.

    ``ema:ALPHA``: s_t = ALPHA * p_t + (1 - ALPHA) * s_{t-1} (ALPHA = weight of the new frame).
    ``window:N``: mean of the last N frames (causal, so it works live).
    """

    def __init__(self, spec: str = "ema:0.5") -> None:
        m = re.fullmatch(r"\s*(none|ema|window)\s*(?::\s*([\d.]+))?\s*", spec or "none")
        if not m:
            raise UsageError(f"unknown --smooth {spec!r}; use 'none', 'ema:ALPHA' (0 < ALPHA <= 1) or 'window:N' (N >= 1)")
        self.kind, arg = m.group(1), m.group(2)
        self.alpha = float(arg) if self.kind == "ema" and arg else 0.5
        self.window = int(float(arg)) if self.kind == "window" and arg else 5
        if self.kind == "ema" and not 0 < self.alpha <= 1:
            raise UsageError(f"--smooth ema:ALPHA needs 0 < ALPHA <= 1, got {self.alpha}")
        if self.kind == "window" and self.window < 1:
            raise UsageError(f"--smooth window:N needs N >= 1, got {self.window}")
        self._state: np.ndarray | None = None
        self._recent: deque[np.ndarray] = deque(maxlen=self.window)

    def describe(self) -> str:
        return {"none": "none", "ema": f"ema:{self.alpha:g}", "window": f"window:{self.window}"}[self.kind]

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return probs
        if self.kind == "ema":
            self._state = probs if self._state is None else self.alpha * probs + (1 - self.alpha) * self._state
            return self._state
        self._recent.append(probs)
        return np.mean(self._recent, axis=0)


# ------------------------------------------------------------------------------ pipeline
@dataclass
class StreamConfig:
    input: Path
    model: Path
    out_dir: Path
    smooth: str = "ema:0.5"
    batch: int = 4
    threads: int | None = None
    fps: float | None = None  # frame rate for folders / DICOM without FrameTime
    max_frames: int | None = None
    save_best: bool = True


def _prefetch(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate ``items`` in a background thread (decode overlaps inference); errors re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        # A bounded wait, so the thread ends when the consumer stops early.
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)

    thread = threading.Thread(target=produce, name="stream-decode", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _prepared(frames: Iterator[Frame], pre, max_frames: int | None) -> Iterator[tuple[Frame, np.ndarray, float]]:
    for frame in frames:
        if max_frames is not None and frame.index >= max_frames:
            return
        t_decoded = time.perf_counter()  # latency counts from here: preprocess, queue, batch, model
        yield frame, preprocess(frame.image, pre), t_decoded


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "class"


class _Tracker:
    """Per-frame rows plus the most confident (smoothed) frame of each plane.

    A frame the OOD gate rejects (``ood_threshold`` set and its own score above it: "not a fetal
    plane") or that abstains is never a best frame, however confident its smoothed label is; the
    gate judges each frame alone (no smoothing across frames).
    """

    def __init__(self, class_names: tuple[str, ...], abstain_threshold: float, ood_threshold: float | None = None) -> None:
        self.class_names, self.threshold, self.ood_threshold = class_names, abstain_threshold, ood_threshold
        self.rows: list[dict[str, Any]] = []
        self.best: dict[str, tuple[float, Frame]] = {}
        self.rejected = 0

    def add(self, frame: Frame, raw: np.ndarray, smooth: np.ndarray, latency_s: float,
            ood_score: float | None = None) -> None:
        r, s = int(top1(raw)[0]), int(top1(smooth)[0])
        label, conf = self.class_names[s], float(smooth[s])
        abstain = conf < self.threshold
        ood = self.ood_threshold is not None and not (ood_score is not None and ood_score <= self.ood_threshold)
        self.rejected += ood
        self.rows.append({
            "frame": frame.index, "time_s": round(frame.time_s, 4), "raw_label": self.class_names[r],
            "raw_confidence": round(float(raw[r]), 5), "smoothed_label": label, "smoothed_confidence": round(conf, 5),
            "abstain": abstain, "state": "out_of_distribution" if ood else "abstain" if abstain else "plane",
            "ood_score": "" if ood_score is None else round(float(ood_score), 5), "latency_ms": round(latency_s * 1e3, 3),
        })
        if not abstain and not ood and conf > self.best.get(label, (-1.0, frame))[0]:
            self.best[label] = (conf, frame)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _save_best(best: dict[str, tuple[float, Frame]], out_dir: Path) -> dict[str, Any]:
    saved = {}
    for label, (conf, frame) in sorted(best.items()):
        path = out_dir / "best" / f"{slug(label)}.png"
        with atomic_path(path) as tmp:
            frame.image.save(tmp, format="PNG")
        saved[label] = {"frame": frame.index, "time_s": round(frame.time_s, 4), "confidence": conf, "path": str(path)}
    return saved


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if values else None


def run_stream(cfg: StreamConfig) -> dict[str, Any]:
    """Classify every frame; write frames.csv, best/<plane>.png and stream.json to ``cfg.out_dir``."""
    if cfg.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {cfg.batch}")
    smoother = Smoother(cfg.smooth)
    predictor = load_predictor(cfg.model, threads=cfg.threads)
    spec = predictor.spec
    frames, info = open_frames(cfg.input, cfg.fps)
    gate = spec.ood.get("threshold") if predictor.has_ood_gate else None
    tracker = _Tracker(tuple(spec.class_names), float(spec.abstain_threshold), gate)
    infer_s, latencies = 0.0, []
    t_start = time.perf_counter()
    for batch in _batches(_prefetch(_prepared(frames, spec.preprocessing, cfg.max_frames), 2 * cfg.batch), cfg.batch):
        t0 = time.perf_counter()
        logits, scores = predictor.logits_and_ood(np.stack([x for _, x, _ in batch]))
        t_done = time.perf_counter()
        infer_s += t_done - t0
        probs = softmax(logits, spec.temperature)
        for i, ((frame, _, t_ready), p) in enumerate(zip(batch, probs)):
            latencies.append(t_done - t_ready)
            tracker.add(frame, p, smoother(p), t_done - t_ready, None if scores is None else float(scores[i]))
    wall = time.perf_counter() - t_start
    n = len(tracker.rows)
    if n == 0:
        raise DataError(f"{cfg.input}: no frames decoded")
    out = Path(cfg.out_dir)
    write_text(out / "frames.csv", _csv_text(tracker.rows))
    best = _save_best(tracker.best, out) if cfg.save_best else {}
    counts = {c: sum(r["smoothed_label"] == c for r in tracker.rows) for c in spec.class_names}
    summary = {
        "input": str(cfg.input), "model": str(cfg.model), "source": info, "frames": n,
        "wall_s": wall, "fps": n / wall, "model_fps": n / infer_s if infer_s else None,
        "latency_ms_p50": _pct(latencies, 50), "latency_ms_p95": _pct(latencies, 95),
        "batch": cfg.batch, "threads": cfg.threads, "smoothing": smoother.describe(),
        "image_size": spec.preprocessing.image_size, "smoothed_label_counts": counts, "best_frames": best,
        "ood_gate": gate is not None, "ood_threshold": gate, "frames_out_of_distribution": tracker.rejected,
        "load_avg": os.getloadavg(), "csv": str(out / "frames.csv"),
    }
    write_json(out / "stream.json", summary)
    return summary
