"""How well the "not a fetal plane" gate separates in-distribution images from others.

Scores a model's held-out test split (in-distribution) against out-of-distribution sets that no
one on the project made, through the torch-free runtime (ONNX Runtime, CPU):

- far / photos: real photographs bundled with scikit-image (``skimage.data``);
- far / ct_mr: pydicom's bundled CT and MR test files (every frame, network only: the metadata
  gate of ``core.us_regions`` refuses them all before the network; that rate is reported too);
- far / blank_noise_text: blank, noise, gradient and text-screen frames (generated here, seeded);
- near / dicom_us: the real non-fetal ultrasound DICOMs of ``../shared/data/dicom_us`` (every
  frame, with the metadata gate switched off, so the network part alone is scored);
- optionally ``--ood-data FOLDER``: your own images (any format ``predict`` reads).

Per set and per score (max-softmax, energy, Mahalanobis, kNN, combined): AUROC and FPR@95 with 95 %
bootstrap intervals, and the rejection rate at the threshold the model ships (combined: the spec's
OOD threshold; max-softmax: the abstain threshold; the others: their own 95 %-validation-acceptance
threshold, computed here). The ``verdict`` row is what the product answers: out_of_distribution or
abstain. Also the added latency per image at batch 1: the ``features`` output plus the numpy scores.

A model trained on synthetic phantoms measures the MECHANISM, not clinical OOD performance. On a
real model with your own OOD images:

    python benchmarks/bench_ood.py --model model.onnx --data FETAL_PLANES_DB --ood-data MY_OOD_IMAGES

Prints a Markdown table and writes JSON (``--json``, default benchmarks/results/bench_ood.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fetalplanes.core import ood  # noqa: E402
from fetalplanes.core.dicom import DicomFrames  # noqa: E402
from fetalplanes.core.errors import ImageLoadError  # noqa: E402
from fetalplanes.core.io import list_images, load_image  # noqa: E402
from fetalplanes.core.preprocess import preprocess_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DICOM_US = REPO.parent / "shared" / "data" / "dicom_us"
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "clock",
          "hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass", "gravel", "cell", "microaneurysms")
SCORES = ("msp", "energy", "mahalanobis", "knn", "combined")
MAX_PIXELS = 10**8


# ----------------------------------------------------------------------------- OOD sets


def photos() -> list[Image.Image]:
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception as err:  # an image that needs a download: left out, and said so
            print(f"  skimage.data.{name} unavailable ({type(err).__name__})", file=sys.stderr)
            continue
        out.append(Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr))
    return out


def dicom_frames(paths: list[Path], gate: bool = False, per_file: int = 20) -> tuple[list[Image.Image], dict]:
    """Frames of DICOM files (metadata gate off), and how many files the gate would refuse."""
    images, refused = [], 0
    for p in paths:
        data = p.read_bytes()
        try:
            DicomFrames(data, p.name, MAX_PIXELS, gate=True)
        except ImageLoadError:
            refused += 1
        frames = DicomFrames(data, p.name, MAX_PIXELS, gate=gate)
        images += [frames.frame(i) for i in range(min(len(frames), per_file))]
    return images, {"files": len(paths), "refused_by_metadata_gate": refused}


def ct_mr_files() -> list[Path]:
    """pydicom's bundled CT and MR test files, one per distinct pixel content."""
    import pydicom
    from pydicom.data import get_testdata_files

    seen, out = set(), []
    for f in sorted(get_testdata_files("*.dcm")):
        try:
            ds = pydicom.dcmread(f)
            if ds.get("Modality") not in ("CT", "MR"):
                continue
            digest = hashlib.md5(ds.pixel_array.tobytes()).hexdigest()
            DicomFrames(Path(f).read_bytes(), Path(f).name, MAX_PIXELS, gate=False).frame(0)
        except Exception:  # a file pydicom ships to test its own error paths
            continue
        if digest not in seen:
            seen.add(digest)
            out.append(Path(f))
    return out


def blank_noise_text(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    out = [Image.fromarray(np.full((h, w), v, np.uint8)) for v in (0, 128, 255)]
    out += [Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)) for _ in range(3)]
    out += [Image.fromarray(np.clip(rng.normal(100, 40, (h, w)), 0, 255).astype(np.uint8)) for _ in range(3)]
    out += [Image.fromarray(np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))),
            Image.fromarray(np.tile(np.linspace(0, 255, h, dtype=np.uint8)[:, None], (1, w)))]
    for n in range(4):
        img = Image.new("L", (w, h), 0 if n % 2 == 0 else 230)
        draw = ImageDraw.Draw(img)
        for line in range(20):
            text = f"PATIENT {n:03d}  STUDY 2026-12-07  SERIES {line}  ACC 00{n}{line}  ...................."
            draw.text((10, 10 + 23 * line), text, fill=255 if n % 2 == 0 else 20)
        out.append(img)
    return out


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """Logits + features through ONNX Runtime, and every score of ``core.ood``."""

    def __init__(self, model: Path, threads: int = 1) -> None:
        from fetalplanes.runtime.artifact import OOD_KEY, ood_stats, spec_from_metadata
        from fetalplanes.runtime.session import load_session

        self.session = load_session(model, threads)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec = spec_from_metadata(meta, str(model))
        self.stats = ood_stats(self.spec, meta.get(OOD_KEY), str(model))
        if self.stats is None:
            sys.exit(f"{model}: no OOD gate in this model file; calibrate the checkpoint (fetalplanes train / "
                     "calibrate) and export it again")

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self.session.run(["logits", "features"], {"image": x})
        return logits, feats

    def scores(self, images: list[Image.Image], batch: int = 16) -> dict[str, np.ndarray]:
        logits, feats = [], []
        for i in range(0, len(images), batch):
            lg, ft = self.run(preprocess_batch(images[i : i + batch], self.spec.preprocessing))
            logits.append(lg)
            feats.append(ft)
        lg, ft = np.concatenate(logits), np.concatenate(feats)
        t = self.spec.temperature
        return {"msp": ood.msp_score(lg, t), "energy": ood.energy_score(lg, t), **ood.feature_scores(ft, self.stats)}


def thresholds(spec: Any, val: dict[str, np.ndarray]) -> dict[str, float]:
    """The threshold each score is judged at: the shipped ones where the model has them."""
    out = {name: ood.threshold_at_acceptance(val[name], spec.ood.get("acceptance", 0.95)) for name in SCORES}
    out["msp"] = 1.0 - spec.abstain_threshold  # abstain when confidence < threshold <=> msp score > 1 - t
    out[spec.ood["score"]] = spec.ood["threshold"]
    return out


def verdict_flags(s: dict[str, np.ndarray], spec: Any) -> np.ndarray:
    """What the product answers: out_of_distribution (gate score above threshold) or abstain."""
    gate = ood.verdicts(s[spec.ood["score"]], spec.ood["threshold"])
    return gate | (1.0 - s["msp"] < spec.abstain_threshold)


def latency(scorer: Scorer, image: Image.Image, repeats: int = 200) -> dict[str, float]:
    """Median ms per image at batch 1: logits only, logits + features, and the numpy scores."""
    x = preprocess_batch([image], scorer.spec.preprocessing)
    for _ in range(10):
        scorer.run(x)

    def timed(fn: Callable[[], Any]) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return 1000 * statistics.median(ts)

    _, ft = scorer.run(x)
    logits_only = timed(lambda: scorer.session.run(["logits"], {"image": x}))
    both = timed(lambda: scorer.run(x))
    numpy_scores = timed(lambda: ood.feature_scores(ft, scorer.stats))
    return {"logits_only_ms": logits_only, "logits_and_features_ms": both, "scores_ms": numpy_scores,
            "added_ms": max(0.0, both - logits_only) + numpy_scores}


# ----------------------------------------------------------------------------- main


def in_distribution(model_spec: Any, data: Path, split: str) -> list[Image.Image]:
    from fetalplanes.data.sources import load_source
    from fetalplanes.data.splits import choose_split

    index = load_source(data, model_spec.task, model_spec.class_names)
    return [load_image(s.path) for s in choose_split(index, model_spec, split).samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an ONNX export with an OOD gate")
    ap.add_argument("--data", type=Path, required=True, help="the model's dataset (its test split is the ID set)")
    ap.add_argument("--ood-data", type=Path, default=None, help="a folder of your own OOD images")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "bench_ood.json")
    args = ap.parse_args()

    scorer = Scorer(args.model, args.threads)
    spec = scorer.spec
    id_test = in_distribution(spec, args.data, "test")
    val = scorer.scores(in_distribution(spec, args.data, "val"))
    test = scorer.scores(id_test)
    cut = thresholds(spec, val)
    sets: dict[str, tuple[str, list[Image.Image], dict]] = {
        "photos": ("far", photos(), {"source": "skimage.data"}),
        "blank_noise_text": ("far", blank_noise_text(), {"source": "generated, seed 0"})}
    frames, info = dicom_frames(ct_mr_files())
    sets["ct_mr"] = ("far", frames, {"source": "pydicom test files (CT, MR)", **info})
    if DICOM_US.is_dir():
        paths = sorted(p for p in DICOM_US.iterdir() if p.suffix.lower() == ".dcm")
        frames, info = dicom_frames(paths)
        sets["dicom_us"] = ("near", frames, {"source": "../shared/data/dicom_us (metadata gate off)", **info})
    if args.ood_data:
        sets["user"] = ("user", [load_image(p) for p in list_images(args.ood_data)], {"source": str(args.ood_data)})

    id_verdict = verdict_flags(test, spec)
    results: dict[str, Any] = {
        "model": str(args.model), "data": str(args.data), "n_id_test": len(id_test), "n_val": int(len(val["msp"])),
        "spec_ood": {k: v for k, v in spec.ood.items() if k != "stats_sha256"},
        "abstain_threshold": spec.abstain_threshold, "thresholds": cut,
        "id_rejected": {name: float((test[name] > cut[name]).mean()) for name in SCORES}
        | {"verdict": float(id_verdict.mean())},
        "id_rejected_ci95": {"verdict": ood.rate_interval(id_verdict, args.n_boot)},
        "sets": {}, "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    for name, (kind, images, info) in sets.items():
        s = scorer.scores(images)
        row: dict[str, Any] = {"kind": kind, "n": len(images), **info, "scores": {}}
        for score in SCORES:
            row["scores"][score] = ood.ood_metrics(test[score], s[score], cut[score], args.n_boot)
        flags = verdict_flags(s, spec)
        row["verdict_rejected"] = float(flags.mean())
        row["verdict_rejected_ci95"] = ood.rate_interval(flags, args.n_boot)
        results["sets"][name] = row
    results["latency_batch1"] = latency(scorer, id_test[0])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"\nwrote {args.json}")


def _ci(x: list[float] | None) -> str:
    return f" [{x[0]:.3f}, {x[1]:.3f}]" if x else ""


def table(r: dict[str, Any]) -> str:
    lines = [f"ID: {r['n_id_test']} test images; in-distribution rejected by the verdict (OOD or abstain): "
             f"{r['id_rejected']['verdict']:.3f}{_ci(r['id_rejected_ci95']['verdict'])}; by each score at its "
             "threshold: " + ", ".join(f"{k} {v:.3f}" for k, v in r["id_rejected"].items() if k != "verdict"), "",
             "| set | kind | n | score | AUROC [95% CI] | FPR@95 [95% CI] | rejected at threshold [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for name, row in r["sets"].items():
        for score, m in row["scores"].items():
            lines.append(f"| {name} | {row['kind']} | {row['n']} | {score} | {m['auroc']:.3f}{_ci(m['auroc_ci95'])} | "
                         f"{m['fpr95']:.3f}{_ci(m['fpr95_ci95'])} | {m['ood_rejected']:.3f}{_ci(m['ood_rejected_ci95'])} |")
        lines.append(f"| {name} | {row['kind']} | {row['n']} | **verdict** (OOD or abstain) | | | "
                     f"{row['verdict_rejected']:.3f}{_ci(row['verdict_rejected_ci95'])} |")
    lat = r["latency_batch1"]
    lines += ["", f"latency at batch 1 (ONNX Runtime, CPU, median): logits only {lat['logits_only_ms']:.2f} ms, "
              f"logits + features {lat['logits_and_features_ms']:.2f} ms, numpy scores {lat['scores_ms']:.3f} ms; "
              f"added {lat['added_ms']:.3f} ms per image"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
