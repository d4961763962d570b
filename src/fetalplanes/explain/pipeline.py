"""``fetalplanes explain``: a checkpoint + images (or a labelled dataset) -> overlays, CAMs, report.

Writes into ``DIR``:
- ``overlays/<name>.png``: the image with its heat map, prediction and top-2 (image's own size);
- ``cams/<name>.npy``: the raw CAM, float32 (H, W) in [0, 1] at the image's size;
- ``overlays/<name>_occlusion.png`` and ``cams/<name>_occlusion.npy`` for the first
  ``occlusion`` images (model-agnostic cross-check);
- ``explanations.json``: one record per image (prediction, top-2, files, localization);
- ``localization.json``: pointing game and energy share against masks, with chance levels
  and the model-vs-prior comparison with 95 % intervals (``explain.priors``), only when
  masks were found;
- ``sanity.json`` (with ``sanity=True``, also inside ``localization.json``): the
  randomization sanity checks (``explain.sanity``);
- ``index.html``: the self-contained gallery (see ``explain.report``).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core import atomic
from fetalplanes.core.cam_methods import ATTRIBUTION, INPUT_LAYER, HeatMapSettings, check_method, method_family
from fetalplanes.core.encode import png_bytes
from fetalplanes.core.io import ImageLoadError, bad_entry, load_image, screen_files
from fetalplanes.data.records import Sample
from fetalplanes.data.sources import load_source
from fetalplanes.data.splits import choose_split
from fetalplanes.explain import localization as loc
from fetalplanes.explain import priors
from fetalplanes.explain.maps import check_options, compute_map
from fetalplanes.explain.overlay import METHOD_TITLES, overlay
from fetalplanes.explain.report import ReportItem, render_report, thumbnail
from fetalplanes.explain.sanity import check_explanations
from fetalplanes.runtime import load_predictor

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")
ProgressFn = Callable[[int, int], None]


@dataclass
class Inputs:
    """What to explain: samples, the class names their labels use (None: unlabelled), mask dirs."""

    samples: list[Sample]
    label_names: tuple[str, ...] | None
    mask_dirs: list[Path]
    mask_root: Path | None = None
    selection: dict[str, Any] | None = None  # with --data: which images, seen in training or not


def gather_inputs(spec, inputs: Sequence[str | Path] = (), data: str | Path | None = None, split: str = "test",
                  masks: Sequence[str | Path] = ()) -> Inputs:
    """Samples from plain files/folders or from a labelled dataset (``load_source`` + split)."""
    mask_dirs = [Path(m) for m in masks]
    for m in mask_dirs:
        if not m.is_dir():
            raise FileNotFoundError(f"--masks {m}: no such folder")
    if data is not None and inputs:
        raise UsageError("give either INPUT files/folders or --data, not both")
    if data is None:
        from fetalplanes.data.sources import samples_from_paths

        if not inputs:
            raise UsageError("nothing to explain: give INPUT files/folders or --data DIR")
        return Inputs(_drop_masks(samples_from_paths(inputs), mask_dirs), None, mask_dirs)
    if split not in SPLITS:
        raise UsageError(f"unknown --split {split!r}; choose one of {list(SPLITS)}")

    index = load_source(data, spec.task)
    if (index.root / "Masks").is_dir() and index.root / "Masks" not in mask_dirs:
        log.info("using structure masks from %s", index.root / "Masks")
        mask_dirs.append(index.root / "Masks")
    selection = choose_split(index, spec, split)
    return Inputs(_drop_masks(selection.samples, mask_dirs), tuple(index.class_names), mask_dirs, index.root,
                  selection.summary())


def _drop_masks(samples: list[Sample], mask_dirs: Sequence[Path]) -> list[Sample]:
    """Mask files listed among the inputs (e.g. HC18's NNN_HC_Mask.png next to NNN_HC.png)."""
    if not mask_dirs:
        return samples
    mask_files = {m.resolve() for s in samples if (m := loc.find_mask(s.path.stem, mask_dirs, s.path)) is not None}
    kept = [s for s in samples if s.path.resolve() not in mask_files]
    if len(kept) < len(samples):
        log.info("skipping %d input file(s) that are masks of other inputs", len(samples) - len(kept))
    return kept


def mask_for(sample: Sample, inputs: Inputs) -> Path | None:
    """The sample's mask: a 'mask' column of the source, else ``<stem>[_Mask].png`` in the mask dirs."""
    column = sample.meta.get("mask") if sample.meta else None
    if column and inputs.mask_root is not None and (inputs.mask_root / column).is_file():
        return inputs.mask_root / column
    return loc.find_mask(sample.path.stem, inputs.mask_dirs, sample.path)


def _unique_names(samples: Sequence[Sample]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for s in samples:
        n = seen.get(s.path.stem, 0)
        seen[s.path.stem] = n + 1
        names.append(s.path.stem if n == 0 else f"{s.path.stem}_{n + 1}")
    return names


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, dtype=np.float32))
    return buf.getvalue()


def _explain_one(model, spec, image, name: str, out: Path, method: str, target, with_occlusion: bool,
                 layer: str | None = None, aug_smooth: bool = False) -> dict[str, Any]:
    from fetalplanes.explain.occlusion import compute_occlusion

    t0 = time.perf_counter()
    res = compute_map(model, spec, image, method, target, layer=layer, aug_smooth=aug_smooth)
    seconds = time.perf_counter() - t0
    ov = overlay(image, res, spec)
    atomic.write_bytes(out / "overlays" / f"{name}.png", png_bytes(ov))
    atomic.write_bytes(out / "cams" / f"{name}.npy", _npy_bytes(res.cam))
    rec: dict[str, Any] = {"result": res, "seconds": seconds, "thumb": thumbnail(ov)}
    if with_occlusion:
        t0 = time.perf_counter()
        occ = compute_occlusion(model, spec, image, target)
        rec["occlusion_seconds"] = time.perf_counter() - t0
        ov = overlay(image, occ, spec)
        atomic.write_bytes(out / "overlays" / f"{name}_occlusion.png", png_bytes(ov))
        atomic.write_bytes(out / "cams" / f"{name}_occlusion.npy", _npy_bytes(occ.cam))
        rec.update(occlusion=occ, occlusion_thumb=thumbnail(ov))
    return rec


def explain(
    checkpoint: str | Path,
    out_dir: str | Path,
    inputs: Sequence[str | Path] = (),
    data: str | Path | None = None,
    split: str = "test",
    method: str | None = None,
    target: str | int | None = None,
    masks: Sequence[str | Path] = (),
    occlusion: int = 0,
    limit: int | None = None,
    on_progress: ProgressFn | None = None,
    layer: str | None = None,
    aug_smooth: bool | None = None,
    skip_bad: bool = False,
    sanity: bool = False,
    frame: int = 0,
) -> dict[str, Any]:
    """Explain every input; write overlays, CAMs, JSON and index.html; return a summary.

    ``frame``: the 0-based frame explained of each multi-frame input (DICOM cine, multi-page
    image, video; ``core.frames.read_frame``); each record says which frame (``frame``, ``frames``)
    and the summary lists them (``frames``). An input without that frame is a bad input, named
    with its frame count ("frame 9 does not exist: the file has 6 frame(s)").

    Every input is checked before the first heat map (a decode costs far less than a CAM):
    unreadable files are all listed at once (``core.io.BadFilesError``), or with ``skip_bad``
    left out and named in explanations.json (``skipped``) and the page.

    ``method``, ``layer``, ``aug_smooth``: None takes the checkpoint's ``explain`` settings
    (``core.cam_methods.HeatMapSettings``); ``method`` is any name of ``core.cam_methods`` (CAMs and the captum
    input attributions). ``layer``: the feature map(s) a CAM explains ('cam_layer' is the
    model's declared layer; see ``explain.cam.cam_target_layer`` for 'stage:N', dotted names
    and 'a,b' lists; attribution methods explain the input and refuse it); ``aug_smooth``:
    average over pytorch-grad-cam's test-time augmentations (CAMs only).
    ``sanity``: also run the randomization sanity checks (``explain.sanity``, ~4x the map time).
    """
    from fetalplanes.explain.cam import cam_target_layers, resolve_target

    if method is not None:
        check_options(method, layer, aug_smooth)  # fail on a bad name or option before loading anything
    out = Path(out_dir)
    predictor = load_predictor(checkpoint)
    if not hasattr(predictor, "model"):
        raise UsageError(f"{checkpoint}: heat maps need the PyTorch checkpoint (.ckpt): Grad-CAM reads the "
                         "model's gradients, which an ONNX model does not expose")
    model, spec = predictor.model, predictor.spec
    defaults = HeatMapSettings.from_spec(spec)
    method = check_method(method or defaults.method)
    if method_family(method) == ATTRIBUTION:  # the input is explained: no layer, no CAM smoothing
        check_options(method, layer, aug_smooth)
        layer, aug_smooth = INPUT_LAYER, False
    else:
        layer = defaults.cam_layer if layer is None else layer
        aug_smooth = defaults.aug_smooth if aug_smooth is None else aug_smooth
        cam_target_layers(model, layer)  # ... and on a bad layer or target before any image
    if occlusion and method == "occlusion":
        log.info("--occlusion ignored: occlusion is already the explained method")
        occlusion = 0
    if target is not None and str(target).lower() != "predicted":
        resolve_target(target, spec.class_names, 0)
    ins = gather_inputs(spec, inputs, data, split, masks)
    samples = ins.samples[:limit] if limit else ins.samples
    if not samples:
        raise DataError(f"no images to explain in {data if data is not None else [str(i) for i in inputs]}")
    readable, bad = _screen(samples, frame, skip_bad)
    skipped: list[dict[str, str]] = [{"image": name, "error": reason} for name, reason in bad]
    if bad:
        keep = set(readable)
        samples = [s for s in samples if s.path in keep]
    records = []
    for i, (sample, name) in enumerate(zip(samples, _unique_names(samples))):
        try:
            image, count = _frame_image(sample.path, frame)
        except ImageLoadError as err:  # changed on disk since the check: it must not stop the run
            log.warning("skipping %s", err)
            skipped.append({"image": str(sample.path), "error": bad_entry(err)[1]})
        else:
            rec = _explain_one(model, spec, image, name, out, method, target, i < occlusion, layer, aug_smooth)
            # The product's answer for this image (OOD gate, abstain threshold), which the map alone does not carry.
            answer = predictor.predict([image], k=2)[0].prediction
            rec.update(sample=sample, name=name, image_size=image.size, answer=answer,
                       frame=frame if count > 1 else None, frames=count)
            _score(rec, sample, ins, image.size)
            records.append(rec)
        if on_progress:
            on_progress(i + 1, len(samples))
    if not records:
        raise DataError(f"none of the {len(skipped)} input image(s) could be read, e.g. {skipped[0]['image']}: {skipped[0]['error']}")
    settings = {"layer": layer, "aug_smooth": aug_smooth}
    sanity_report = _sanity(model, spec, records, ins, method, layer, aug_smooth) if sanity else None
    return _write_outputs(out, records, skipped, ins, spec, checkpoint, method, target, data, split, settings,
                          sanity_report)


def _screen(samples: Sequence[Sample], frame: int, skip_bad: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """``core.io.screen_files``'s rule (all bad inputs listed at once, or skipped with ``skip_bad``)
    applied to the frame that will be explained, so a missing frame is caught before any map."""
    return screen_files([s.path for s in samples], skip_bad=skip_bad, decode=lambda p: _frame_image(p, frame))


def _frame_image(path: Path, frame: int):  # noqa: ANN202 - (PIL image, the file's frame count)
    from fetalplanes.core.frames import read_frame

    got, count = read_frame(path, frame)
    return got.image, count


def _sanity(model, spec, records, ins: Inputs, method: str, layer: str, aug_smooth: bool) -> dict[str, Any]:
    images = [_frame_image(r["sample"].path, r["frame"] or 0)[0] for r in records]
    names = list(spec.class_names)
    labels = [names.index(t) if (t := _true_label(r, ins)) in names else None for r in records]
    return check_explanations(model, spec, images, [r["result"] for r in records], method, layer, aug_smooth, labels)


def _score(rec: dict[str, Any], sample: Sample, ins: Inputs, size: tuple[int, int]) -> None:
    path = mask_for(sample, ins)
    if path is None:
        return
    mask = loc.load_mask(path, size)
    rec["mask"] = str(path)
    rec["loc"] = loc.score_one(rec["result"].cam, mask)
    rec["prior"] = priors.score_row(rec["result"].cam, mask)
    if "occlusion" in rec:
        rec["occlusion_loc"] = loc.score_one(rec["occlusion"].cam, mask)


def _true_label(rec: dict[str, Any], ins: Inputs) -> str | None:
    label = rec["sample"].label
    return ins.label_names[label] if ins.label_names is not None and label >= 0 else None


def _record_json(rec: dict[str, Any], ins: Inputs, class_names) -> dict[str, Any]:
    res = rec["result"]
    out = {
        "image": str(rec["sample"].path), "name": rec["name"], "size": list(rec["image_size"]),
        "true": _true_label(rec, ins), "frame": rec.get("frame"), "frames": rec.get("frames"),
        **res.summary(class_names),
        "overlay": f"overlays/{rec['name']}.png", "cam": f"cams/{rec['name']}.npy", "seconds": rec["seconds"],
    }
    answer = rec.get("answer")
    if answer is not None:  # read `state` before `label`: the map explains the top class whatever the answer
        out.update(state=answer.state, abstain=answer.abstain, ood=answer.to_dict()["ood"])
        if answer.state == "out_of_distribution":  # as `predict`: no plane for a rejected input
            out["nearest_plane"], out["label"] = out.get("label"), None
    if "loc" in rec:
        out["localization"] = {"mask": rec["mask"], **rec["loc"]}
    if "occlusion" in rec:
        out["occlusion"] = {
            "overlay": f"overlays/{rec['name']}_occlusion.png", "cam": f"cams/{rec['name']}_occlusion.npy",
            "seconds": rec["occlusion_seconds"], **rec["occlusion"].extra,
            **({"localization": rec["occlusion_loc"]} if "occlusion_loc" in rec else {}),
        }
    return out


def localization_summary(records: Sequence[dict[str, Any]], ins: Inputs, method: str) -> dict[str, Any] | None:
    """Pointing game / energy share of the CAMs (and of occlusion on its subset) with chance levels."""
    scored = [r for r in records if "loc" in r]
    if not scored:
        return None
    occ = [r for r in scored if "occlusion_loc" in r]
    maps = {method: loc.summarize([r["loc"] for r in scored])}
    if occ:
        maps[f"{method} (occlusion subset)"] = loc.summarize([r["loc"] for r in occ])
        maps["occlusion"] = loc.summarize([r["occlusion_loc"] for r in occ])
    per_class: dict[str, list] = {}
    for r in scored:
        per_class.setdefault(_true_label(r, ins) or r["result"].label, []).append(r["loc"])
    by_correct: dict[str, list] = {}
    for r in scored:
        truth = _true_label(r, ins)
        if truth is not None:
            by_correct.setdefault("correct" if truth == r["result"].label else "incorrect", []).append(r["loc"])
    return {
        "method": method,
        "target": scored[0]["result"].target if len({r["result"].target for r in scored}) == 1 else "per image",
        "mask_dirs": [str(d) for d in ins.mask_dirs],
        "n_images": len(records),
        "n_with_mask": len(scored),
        "maps": maps,
        "priors": priors.compare([r["prior"] for r in scored]),
        "per_class": {k: loc.summarize(v) for k, v in sorted(per_class.items())},
        "by_correctness": {k: loc.summarize(v) for k, v in sorted(by_correct.items())},
        "chance_levels": (
            "chance_uniform: a flat CAM (energy share = mask area fraction) whose peak is a uniformly random "
            "pixel (hit probability = mask area fraction); chance_center: a centred Gaussian prior "
            "(sigma = 1/4 side), i.e. a map that always points at the middle of the image"
        ),
    }


def _synthetic_notes(spec, ins: Inputs) -> list[str]:
    """Warnings for the page when the model or the inputs are synthetic phantoms."""
    notes = []
    root = (spec.training or {}).get("data", {}).get("root")
    if root and (Path(root) / "SYNTHETIC.md").is_file():
        notes.append("This model was trained on SYNTHETIC phantom data: its maps say nothing about clinical behaviour.")
    if ins.mask_root is not None and (ins.mask_root / "SYNTHETIC.md").is_file():
        notes.append("These inputs are SYNTHETIC phantoms (tests and demos only), not ultrasound scans.")
    return notes


def _write_outputs(out: Path, records, skipped, ins: Inputs, spec, checkpoint, method, target, data, split,
                   settings: dict[str, Any], sanity: dict[str, Any] | None = None) -> dict[str, Any]:
    class_names = spec.class_names
    loc_summary = localization_summary(records, ins, method)
    if loc_summary is not None:
        loc_summary.update(checkpoint=str(checkpoint), **settings, selection=ins.selection,
                           **({"sanity": sanity} if sanity else {}))
        atomic.write_json(out / "localization.json", loc_summary)
    if sanity is not None:
        atomic.write_json(out / "sanity.json", {"checkpoint": str(checkpoint), **sanity})
    atomic.write_json(out / "explanations.json", {
        "checkpoint": str(checkpoint), "model": spec.name, "method": method, **settings,
        "target": target or "predicted",
        "data": None if data is None else str(data), "split": None if data is None else split,
        "selection": ins.selection,
        "images": [_record_json(r, ins, class_names) for r in records], "skipped": skipped,
    })
    items = [
        ReportItem(
            name=r["name"], predicted=r["result"].label, confidence=r["result"].confidence,
            topk=r["result"].topk(class_names), overlay_file=f"overlays/{r['name']}.png", thumb=r["thumb"],
            true_label=_true_label(r, ins), occlusion_file=f"overlays/{r['name']}_occlusion.png" if "occlusion" in r else None,
            occlusion_thumb=r.get("occlusion_thumb"), localization=r.get("loc"),
            state=r["answer"].state if r.get("answer") is not None else "plane",
        )
        for r in records
    ]
    notes = _synthetic_notes(spec, ins)
    if skipped:
        notes.append(f"{len(skipped)} file(s) could not be read and were skipped (see explanations.json).")
    method_title = METHOD_TITLES.get(method, method)
    if settings["layer"] not in ("cam_layer", "input"):
        method_title += f" @ {settings['layer']}"
    if settings["aug_smooth"]:
        method_title += " (smoothed)"
    title = f"Where {spec.name} looks: {method_title} explanations"
    page = render_report(items, class_names, title, method_title, notes, loc_summary, sanity)
    atomic.write_text(out / "index.html", page)
    seconds = [r["seconds"] for r in records]
    return {
        "out": str(out), "n": len(records), "skipped": len(skipped), "method": method, **settings,
        "seconds_per_cam_median": float(np.median(seconds)) if seconds else None,
        "n_occlusion": sum("occlusion" in r for r in records), "localization": loc_summary, "sanity": sanity,
        "frames": [{"image": str(r["sample"].path), "frame": r["frame"], "frames": r["frames"]}
                   for r in records if r.get("frame") is not None],
    }
