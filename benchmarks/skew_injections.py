"""Do the tests see train/serve skew? Inject 15 realistic skews one at a time and count the catches
(issue 22 item 4).

Each row of :data:`INJECTIONS` is one small bug a developer could write: a file under
``src/fetalplanes``, an exact ``old`` text (it must occur exactly once, so a row made stale by a
refactor fails loudly instead of silently injecting nothing) and its ``new`` replacement, plus
the pytest selection a developer would expect to guard that path (``tests/test_skew.py`` and the
tests mirroring the touched module). For each row the harness

1. copies the working tree (tracked and untracked, not ignored files) into a temporary folder,
   with ``../shared`` linked beside it so the real-data tests see what they see here;
2. replaces ``old`` by ``new`` in the copy (never in this checkout) and byte-compiles the file;
3. runs ``python -m pytest -x -q -p no:cacheprovider -m "not slow" SELECTION`` in the copy with
   ``PYTHONPATH`` at the copy's ``src``;
4. records the outcome: ``caught`` (a test failed, or errored in its set-up), ``missed`` (all
   passed), ``collection error`` (an import or collection error: not a catch), ``broken`` (the
   injected file does not compile), ``timeout``; the first failing test's node id; the seconds.

First the un-injected copy runs the union of the selections: it must pass, else the harness
says so and stops (a failing baseline would count every injection as caught).

    PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/skew_injections.py
    python benchmarks/skew_injections.py --list
    python benchmarks/skew_injections.py --only stream_drops_temperature

A full run prints one markdown table and writes ``benchmarks/results/skew_injections.json``
(stamped by ``_provenance``); ``--only`` runs print the table and write JSON only with ``--out``.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "src/fetalplanes"
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-m", "not slow")
SKEW = "tests/test_skew.py"


@dataclass(frozen=True)
class Injection:
    """One skew: ``old`` -> ``new`` in ``file`` (relative to ``src/fetalplanes``); ``selection``:
    the pytest paths that should catch it; ``skew``: what goes wrong, in one line."""

    name: str
    file: str
    old: str
    new: str
    selection: tuple[str, ...]
    skew: str


INJECTIONS: tuple[Injection, ...] = (
    Injection(
        "stream_drops_temperature", "deploy/stream.py",
        "        probs = softmax(logits, spec.temperature)\n",
        "        probs = softmax(logits)\n",
        (SKEW, "tests/deploy/test_stream.py"),
        "`stream` scores frames with T = 1 instead of the model's calibrated T"),
    Injection(
        "evaluate_drops_temperature", "evaluation/report.py",
        "    probs = softmax(logits, spec.temperature)\n",
        "    probs = softmax(logits)\n",
        (SKEW, "tests/evaluation/test_report_render.py", "tests/evaluation/test_test_split.py"),
        "`evaluate` writes confidences (predictions.csv, ECE) with T = 1"),
    Injection(
        "stream_nearest_resize", "deploy/stream.py",
        "        yield frame, preprocess(frame.image, pre), t_decoded\n",
        "        from PIL import Image\n"
        "        small = frame.image.resize((pre.image_size, pre.image_size), Image.NEAREST)\n"
        "        yield frame, preprocess(small, pre), t_decoded\n",
        (SKEW, "tests/deploy/test_stream.py"),
        "`stream` shrinks each frame with NEAREST before the shared preprocessing (training: antialiased bilinear)"),
    Injection(
        "grey_from_green_channel", "core/preprocess.py",
        '    return image.convert("L")\n',
        '    return image.getchannel("G") if image.mode == "RGB" else image.convert("L")\n',
        (SKEW, "tests/core/test_spec_preprocess.py"),
        "RGB input becomes grey by its green channel instead of the BT.601 luma"),
    Injection(
        "bicubic_resize_at_inference_only", "core/preprocess.py",
        "    return np.ascontiguousarray(normalize(resize_gray(image, pre.image_size), pre), dtype=np.float32)\n",
        "    gray = np.asarray(to_gray(image).resize((pre.image_size, pre.image_size), Image.BICUBIC), dtype=np.uint8)\n"
        "    return np.ascontiguousarray(normalize(gray, pre), dtype=np.float32)\n",
        (SKEW, "tests/core/test_spec_preprocess.py"),
        "`preprocess` (every inference path) resizes bicubic; training's `resize_gray` stays bilinear"),
    Injection(
        "temperature_fit_on_test_split", "evaluation/calibration.py",
        "    result = calibrate_logits(val_logits, val_y, test[0], test[1], target_accuracy, coverage, min_coverage)\n",
        "    fit = test if test_samples else (val_logits, val_y)\n"
        "    result = calibrate_logits(fit[0], fit[1], test[0], test[1], target_accuracy, coverage, min_coverage)\n",
        (SKEW, "tests/evaluation/test_calibration.py"),
        "T and the abstain threshold are fit on the test split when one exists (the selection still says val)"),
    Injection(
        "onnx_preprocessing_from_flat_keys", "runtime/onnx_backend.py",
        "        super().__init__(model_path, spec_from_metadata(meta, str(model_path)), meta.get(OOD_KEY))\n",
        "        from fetalplanes.core.spec import Preprocessing\n"
        "        spec = spec_from_metadata(meta, str(model_path))\n"
        "        spec = spec.replace(preprocessing=Preprocessing(image_size=int(meta[\"image_size\"])))\n"
        "        super().__init__(model_path, spec, meta.get(OOD_KEY))\n",
        (SKEW, "tests/runtime/test_runtime.py"),
        "the ONNX backend rebuilds its preprocessing from the flat image_size key: default (ImageNet) mean/std"),
    Injection(
        "export_flat_std_is_the_mean", "runtime/artifact.py",
        '        "std": json.dumps(list(pre.std)),\n',
        '        "std": json.dumps(list(pre.mean)),\n',
        (SKEW, "tests/runtime/test_runtime.py", "tests/deploy/test_export.py"),
        "the exported ONNX flat `std` key holds the mean (what other tools normalise with)"),
    Injection(
        "torch_predictor_not_in_eval_mode", "models/torch_backend.py",
        "        self.model = model.eval().to(self.device, memory_format=self.memory_format)\n",
        "        self.model = model.to(self.device, memory_format=self.memory_format)\n",
        (SKEW, "tests/models/test_checkpoint.py", "tests/runtime/test_predictor.py"),
        "`TorchPredictor.from_model` keeps a model in training mode (dropout, batch statistics) as it came"),
    Injection(
        "dicom_cine_keeps_frame0_window", "core/intensity.py",
        '        key = tuple(str(view.get(name, "")) for name in _FUNCTIONAL_KEYS)\n',
        '        key = tuple(str(self.ds.get(name, "")) for name in _FUNCTIONAL_KEYS)\n',
        (SKEW, "tests/core/test_intensity.py", "tests/core/test_viewer_semantics.py"),
        "Enhanced DICOM cine: the window cache is keyed on the top level, so every frame gets frame 0's VOI"),
    Injection(
        "device_loader_skips_255_scaling", "training/device_data.py",
        "    return (x.float() / 255.0 - mean) / std\n",
        "    return (x.float() - mean) / std\n",
        (SKEW, "tests/training/test_device_data.py"),
        "the GPU (device) training loader normalises 0..255 values without /255 (the image path and inference do)"),
    Injection(
        "letterbox_files_at_inference", "runtime/predictor.py",
        "            yield stub, preprocess(frame.image, pre)\n",
        "            from PIL import ImageOps\n"
        "            square = ImageOps.pad(frame.image, (max(frame.image.size),) * 2)\n"
        "            yield stub, preprocess(square, pre)\n",
        (SKEW, "tests/runtime/test_predictor.py"),
        "the Predictor letterboxes files to a square (black bars) before the resize; training squashes"),
    Injection(
        "opencv_resize_for_in_memory_images", "runtime/predictor.py",
        "        yield FileResult(index), preprocess(source, pre)\n",
        "        import cv2\n"
        "        from fetalplanes.core.preprocess import to_gray\n"
        "        size = (pre.image_size, pre.image_size)\n"
        "        gray = cv2.resize(np.asarray(to_gray(source)), size, interpolation=cv2.INTER_LINEAR)\n"
        "        yield FileResult(index), preprocess(Image.fromarray(gray), pre)\n",
        (SKEW, "tests/runtime/test_predictor.py"),
        "in-memory images are resized by OpenCV INTER_LINEAR (no antialiasing when shrinking); training: Pillow"),
    Injection(
        "service_converts_uploads_to_L", "serve/service.py",
        "            result = self.predictor.predict([image], top_k)[0]\n",
        '            result = self.predictor.predict([image.convert("L")], top_k)[0]\n',
        (SKEW, "tests/serve/test_api.py"),
        "the web service converts each upload with Pillow's convert('L') (16-bit clipped, alpha dropped)"),
    Injection(
        "stream_ignores_ood_threshold", "deploy/stream.py",
        "    tracker = _Tracker(tuple(spec.class_names), float(spec.abstain_threshold), gate)\n",
        "    tracker = _Tracker(tuple(spec.class_names), float(spec.abstain_threshold))\n",
        (SKEW, "tests/deploy/test_stream_ood.py"),
        "`stream` drops the OOD gate's threshold: rejected frames are reported as planes and can be best frames"),
)


# ------------------------------------------------------------------------------ checks and copies
def source_path(inj: Injection, root: Path = ROOT) -> Path:
    return root / PACKAGE / inj.file


def problems(injections: tuple[Injection, ...] = INJECTIONS, root: Path = ROOT) -> list[str]:
    """Stale or malformed rows: ``old`` must occur exactly once, names be unique, paths exist."""
    out = []
    names = [i.name for i in injections]
    out += [f"duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    for inj in injections:
        path = source_path(inj, root)
        if not path.is_file():
            out.append(f"{inj.name}: {path} does not exist")
            continue
        count = path.read_text().count(inj.old)
        if count != 1:
            out.append(f"{inj.name}: the old text occurs {count} times in {inj.file} (expected exactly once)")
        if inj.old == inj.new:
            out.append(f"{inj.name}: old and new are the same")
        out += [f"{inj.name}: selection {s} does not exist" for s in inj.selection if not (root / s).exists()]
    return out


def copy_tree(dest: Path, root: Path = ROOT) -> Path:
    """The working tree's files (tracked and untracked, not ignored) copied under ``dest/repo``;
    ``dest/shared`` links to ``root``'s ``../shared`` so the real-data fixtures find it."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                           capture_output=True).stdout.decode().split("\0")
    repo = dest / "repo"
    for rel in filter(None, files):
        src = root / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    if (root.parent / "shared").exists():
        (dest / "shared").symlink_to((root.parent / "shared").resolve())
    return repo


def inject(repo: Path, inj: Injection) -> None:
    """``old`` -> ``new`` in the copy; ValueError unless ``old`` occurs exactly once."""
    path = source_path(inj, repo)
    text = path.read_text()
    if text.count(inj.old) != 1:
        raise ValueError(f"{inj.name}: the old text occurs {text.count(inj.old)} times in {inj.file}")
    path.write_text(text.replace(inj.old, inj.new))


# ------------------------------------------------------------------------------ running pytest
# A node id may hold spaces (parametrize ids), so it ends at the first " - " (pytest's separator).
_SUMMARY = re.compile(r"^(FAILED|ERROR) (.+?)(?: - (.*))?$", re.M)


def classify(rc: int | None, output: str) -> tuple[str, str | None, str | None]:
    """(outcome, first failing node id, its message) from pytest's exit code and ``-ra`` summary.

    An ERROR line without ``::`` is a collection error (an import failed): not a catch."""
    hits = _SUMMARY.findall(output)
    if rc is None:
        return "timeout", None, None
    if any("::" not in node for _, node, _ in hits) or rc == 2:
        node = next((n for _, n, _ in hits if "::" not in n), None)
        return "collection error", node, next((m for _, n, m in hits if n == node), None)
    if rc == 0:
        return "missed", None, None
    if rc == 1 and hits:
        kind, node, message = hits[0]
        return ("caught" if kind == "FAILED" else "caught (set-up error)"), node, (message or "")[:300]
    if rc == 1:  # pytest's exit code 1: tests ran and some failed, whatever the summary looked like
        return "caught", None, "no FAILED/ERROR summary line found"
    return f"pytest exit {rc}", None, None


def run_pytest(repo: Path, selection: tuple[str, ...], timeout: float) -> dict[str, Any]:
    # COLUMNS: pytest cuts its summary lines (the failing assertion) to the terminal's width.
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "HF_HUB_OFFLINE": "1", "COLUMNS": "400",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--basetemp={repo.parent / 'pytest'}", *selection]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = None, (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    seconds = time.perf_counter() - t0
    outcome, node, message = classify(rc, output)
    tail = output.strip().splitlines()[-1:] if output.strip() else []
    return {"outcome": outcome, "first_failure": node, "message": message, "seconds": round(seconds, 1),
            "exit_code": rc, "last_line": tail[0] if tail else ""}


def run_one(inj: Injection, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"skew-{inj.name}-") as tmp:
        repo = copy_tree(Path(tmp))
        inject(repo, inj)
        try:
            py_compile.compile(str(source_path(inj, repo)), doraise=True)
        except py_compile.PyCompileError as err:
            return {"outcome": "broken", "first_failure": None, "message": str(err)[:300], "seconds": 0.0,
                    "exit_code": None, "last_line": ""}
        return run_pytest(repo, inj.selection, timeout)


def run_baseline(selection: tuple[str, ...], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="skew-baseline-") as tmp:
        return run_pytest(copy_tree(Path(tmp)), selection, timeout)


def union(injections: list[Injection]) -> tuple[str, ...]:
    out: list[str] = []
    for inj in injections:
        out += [s for s in inj.selection if s not in out]
    return tuple(out)


def is_caught(outcome: str) -> bool:
    return outcome.startswith("caught")


# ------------------------------------------------------------------------------ output
def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | injection | file | selection | outcome | first failing test | s |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        sel = ", ".join(f"`{s}`" for s in r["selection"])
        first = f"`{r['first_failure']}`" if r["first_failure"] else ""
        lines.append(f"| {i} | {r['name']} | `{r['file']}` | {sel} | {r['outcome']} | {first} | {r['seconds']:.0f} |")
    caught = sum(is_caught(r["outcome"]) for r in rows)
    lines.append(f"\n{caught} of {len(rows)} caught")
    return "\n".join(lines)


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the injections and their selections, run nothing")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this injection (repeatable)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the un-injected run of the selections")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    ap.add_argument("--out", help="JSON path (default for a full run: benchmarks/results/skew_injections.json)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    found = problems()
    if found:
        print("stale or malformed injection rows:\n  " + "\n  ".join(found), file=sys.stderr)
        return 2
    if a.list:
        for inj in INJECTIONS:
            print(f"{inj.name}\n  {PACKAGE}/{inj.file}: {inj.skew}\n  selection: {' '.join(inj.selection)}")
        return 0
    known = {i.name for i in INJECTIONS}
    unknown = [n for n in a.only if n not in known]
    if unknown:
        print(f"unknown injection(s) {unknown}; choose from {sorted(known)}", file=sys.stderr)
        return 2
    chosen = [i for i in INJECTIONS if not a.only or i.name in a.only]
    t_start = time.perf_counter()
    baseline = None
    if not a.no_baseline:
        selection = union(chosen)
        baseline = {"selection": list(selection), **run_baseline(selection, a.timeout)}
        baseline["passed"] = baseline["outcome"] == "missed"  # nothing to miss: every test passed
        print(f"baseline ({' '.join(baseline['selection'])}): {'passed' if baseline['passed'] else baseline['outcome']}"
              f" in {baseline['seconds']:.0f} s ({baseline['last_line']})", flush=True)
        if not baseline["passed"]:
            print(f"the un-injected baseline does not pass ({baseline['first_failure']}: {baseline['message']}); "
                  "fix it before counting catches", file=sys.stderr)
            return 1
    rows = []
    for inj in chosen:
        r = {**asdict(inj), "selection": list(inj.selection), **run_one(inj, a.timeout)}
        rows.append(r)
        print(f"{inj.name}: {r['outcome']} {r['first_failure'] or ''} ({r['seconds']:.0f} s) {(r['message'] or '')[:160]}",
              flush=True)
    wall = time.perf_counter() - t_start
    print()
    print(table(rows))
    print(f"total wall time {wall:.0f} s")
    out = a.out or (None if a.only else str(ROOT / "benchmarks" / "results" / "skew_injections.json"))
    if out:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _provenance import stamp

        from fetalplanes.core.atomic import write_json

        res = {"command": "python benchmarks/skew_injections.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "pytest_args": list(PYTEST_ARGS), "baseline": baseline, "injections": rows,
               "caught": sum(is_caught(r["outcome"]) for r in rows), "n": len(rows), "wall_s": round(wall, 1)}
        write_json(out, stamp(res, ["benchmarks/skew_injections.py"]))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
