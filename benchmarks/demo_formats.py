"""Test top-1 of one trained model as a .ckpt, an fp32 ONNX and an int8 ONNX, from the same command.

Runs the CLI exactly as a user would, on the run that ``fetalplanes demo`` (``make demo``) wrote:

    fetalplanes export   --checkpoint RUN/run/checkpoints/best.ckpt --out OUT/model.onnx \
                         --int8 --calibration RUN/data
    fetalplanes evaluate --model M --data RUN/data --out OUT/eval_<format>    # for each M

and prints one table (and writes ``OUT/demo_formats.json``). Synthetic phantom data: the numbers
show that the three formats answer alike, nothing about clinical accuracy.

    python benchmarks/demo_formats.py --run runs/demo --out runs/demo_formats [--json FILE]

``--json`` also writes the rows, the int8 gate's numbers and a provenance stamp
(``benchmarks/_provenance.py``) to FILE (``make docs-numbers`` quotes it in docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fetalplanes", *args]
    print("$ fetalplanes " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, check=False, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stderr=proc.stderr)
    return proc


def _refusal(stderr: str) -> str | None:
    """The gate's own one-line refusal from `export --int8`'s stderr (None: not a gate refusal)."""
    line = next((ln for ln in stderr.splitlines() if "int8 model refused:" in ln), None)
    return line.split("int8 model refused:", 1)[1].split("; nothing written")[0].strip() if line else None


def int8_gate(report: dict) -> dict | None:
    """The int8 gate's numbers from ``export --report``'s JSON (the dict that holds ``agreement``)."""
    stack = [report]
    while stack:
        d = stack.pop()
        if "agreement" in d:
            # export exits non-zero when the gate fails, so a report that exists is a passed gate
            return {"passed": True, "n": d.get("n_labelled", d.get("n_holdout")), "agreement": d["agreement"],
                    "fp32_top1": d.get("acc_fp32"), "int8_top1": d.get("acc_int8"), "drop": d.get("drop")}
        stack += [v for v in d.values() if isinstance(v, dict)]
    return None


def write_stamped(args: argparse.Namespace, rows: list[dict]) -> None:
    """The result with the int8 gate and a provenance stamp, written atomically to ``args.json``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _provenance import stamp

    from fetalplanes.core.atomic import write_json

    gate = args.refused or int8_gate(json.loads((args.out / "export.json").read_text()))
    command = "python benchmarks/demo_formats.py " + " ".join(sys.argv[1:])
    result = {"command": command, "synthetic": True, "max_drop": args.max_drop, "rows": rows, "int8_gate": gate}
    from fetalplanes.runtime.threads import available_cores

    # `evaluate --model x.onnx` runs ORT with its default: one intra-op thread per available core.
    write_json(args.json, stamp(result, ["benchmarks/demo_formats.py"], ort_threads=available_cores()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="Output folder of `fetalplanes demo`.")
    ap.add_argument("--out", type=Path, default=Path("runs/demo_formats"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--max-drop", type=float, default=0.01, help="int8 accuracy gate (export --max-drop)")
    ap.add_argument("--json", type=Path, default=None, help="also write the stamped result here")
    args = ap.parse_args(argv)
    ckpt, data = args.run / "run" / "checkpoints" / "best.ckpt", args.run / "data"
    if not ckpt.is_file() or not data.is_dir():
        ap.error(f"{args.run}: no demo run there (expected {ckpt} and {data}); run `make demo` first")
    fp32, int8 = args.out / "model.onnx", args.out / "model.int8.onnx"
    proc = cli("export", "--checkpoint", str(ckpt), "--out", str(fp32), "--int8", "--calibration", str(data),
               "--int8-out", str(int8), "--max-drop", str(args.max_drop), "--report", str(args.out / "export.json"),
               check=False)
    # The int8 gate may refuse this model (that is its job): then the table has the fp32 rows and
    # says why there is no int8 row.
    reason = _refusal(proc.stderr) if proc.returncode else None
    if proc.returncode and reason is None:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, stderr=proc.stderr)
    args.refused = {"passed": False, "refusal": reason} if reason else None
    if reason:
        cli("export", "--checkpoint", str(ckpt), "--out", str(fp32), "--report", str(args.out / "export.json"))
    formats = [("checkpoint (.ckpt)", ckpt), ("ONNX fp32", fp32)] + ([] if reason else [("ONNX int8 (QDQ)", int8)])
    rows = []
    for name, model in formats:
        out = args.out / f"eval_{model.name.replace('.', '_')}"
        t0 = time.perf_counter()
        cli("evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--n-boot", str(args.n_boot))
        m = json.loads((out / "metrics.json").read_text())
        ci = (m.get("ci95") or {}).get("top1") or {"low": float("nan"), "high": float("nan")}
        rows.append({"format": name, "file": str(model), "size_mb": model.stat().st_size / 1e6, "n": m["n"],
                     "top1": m["top1"], "top1_low": ci["low"], "top1_high": ci["high"], "top2": m["top2"],
                     "f1_macro": m["f1_macro"], "evaluate_s": time.perf_counter() - t0})
    print("\n| format | file MB | n | test top-1 (95 % CI) | top-2 | macro-F1 | evaluate s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['size_mb']:.1f} | {r['n']} | {r['top1']:.4f} ({r['top1_low']:.3f}-{r['top1_high']:.3f}) "
              f"| {r['top2']:.4f} | {r['f1_macro']:.4f} | {r['evaluate_s']:.1f} |")
    (args.out / "demo_formats.json").write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=2))
    if args.json:
        write_stamped(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
