"""Fast on a box it shares (issue 23): training throughput and `predict` wall time, alone and
beside other CPU-bound work, under each thread policy (``fetalplanes.runtime.threads``).

For each policy (``WAIT[:THREADS]``: ``spin:2`` = two threads whatever the load and the
libraries' spin-waiting, what the product did before issue 23; ``passive`` = the product's
default now, threads from the cores not busy at start-up and passive waiting):

- demo training throughput: img/s of a fixed number of training steps of the demo's model
  (``configs/demo.yaml``: Lite0 + CBAM + MLP, 128 px, batch 16, AdamW; random tensors, so only
  the compute is timed) in a child process that applies the policy exactly as the CLI does,
  alone, beside one busy single-thread Python loop, and beside a second copy of itself
  (both copies timed; the slower is reported);
- ``fetalplanes predict`` wall time for one image, with a checkpoint and with ONNX, median of
  ``--repeats`` runs, alone and beside one busy loop (the whole command: start-up included).

Slowdown ratios are against the same policy alone, in the same run. Prints one markdown table
and writes JSON (``--out``). Not a timed test: the goals (<= 1.5x beside a busy loop, <= 2.3x
beside a second training; predict <= 4 s with a checkpoint and <= 1 s with ONNX on a quiet box)
are read from the table.

    python benchmarks/bench_contention.py --run runs/demo --model runs/demo/model.onnx

(``--run``: a `fetalplanes demo` folder: its best checkpoint and its first test image;
``make docs-numbers`` runs it on part demo's seed 0 and part formats' ONNX.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True:\n    pass\n"


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a `fetalplanes demo` folder (default checkpoint and image)")
    ap.add_argument("--checkpoint", help="a demo checkpoint (predict rows; default: RUN's best)")
    ap.add_argument("--model", help="the same model exported to ONNX (predict rows)")
    ap.add_argument("--image", help="one image to classify (predict rows; default: RUN's first image)")
    ap.add_argument("--policies", default="spin,passive", help="comma list of WAIT[:THREADS] (WAIT: spin|passive)")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="predict runs per cell (median)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: train, predict")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_contention.json"))
    ap.add_argument("--child", choices=["train"], help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _policy_env(policy: str) -> dict[str, str]:
    """The environment a user would set for ``policy`` (no other thread variable inherited)."""
    wait, _, threads = policy.partition(":")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "FETALPLANES_THREADS")}
    env.update({"FETALPLANES_WAIT": wait, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")})
    if threads:
        env["FETALPLANES_THREADS"] = threads
    return env


class Busy:
    """``n`` single-thread busy Python loops running while the block runs."""

    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []  # type: ignore[var-annotated]

    def __enter__(self) -> "Busy":
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(self.n)]
        time.sleep(1.0 if self.n else 0)  # already running when the measured command starts
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def train_child(steps: int, warmup: int) -> None:
    """The timed training steps, in a process that applies the thread policy as the CLI does."""
    from fetalplanes.runtime.threads import apply_process_policy, choose_policy

    policy = apply_process_policy(choose_policy())  # before torch loads, like `fetalplanes`' entry point
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    from bench_train_parts import _step_fn
    from fetalplanes.training.config import load_config

    cfg = load_config("demo")
    (step, _), sync, _ = _step_fn(cfg, cfg.optim.batch_size)
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    wall = time.perf_counter() - t0
    print(json.dumps({"img_per_s": steps * cfg.optim.batch_size / wall, "wall_s": wall, "policy": policy.as_dict(),
                      "torch_threads": torch.get_num_threads()}))


def _train(policy: str, copies: int, busy: int, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "train", "--steps", str(a.steps),
           "--warmup", str(a.warmup)]
    with Busy(busy):
        procs = [subprocess.Popen(cmd, env=_policy_env(policy), stdout=subprocess.PIPE, text=True) for _ in range(copies)]
        outs = [p.communicate()[0] for p in procs]
    runs = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    slowest = min(runs, key=lambda r: r["img_per_s"])
    return {**slowest, "copies": copies, "busy_loops": busy, "all_img_per_s": [r["img_per_s"] for r in runs]}


def _predict(policy: str, flag: str, path: str, image: str, busy: int, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "fetalplanes", "predict", flag, path, image]
    times = []
    with Busy(busy):
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=_policy_env(policy), check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times, "busy_loops": busy}


def _machine() -> dict[str, Any]:
    load = os.getloadavg()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown") if Path("/proc/cpuinfo").is_file() else "unknown"
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "load_before": load[0]}


def _defaults(a: argparse.Namespace) -> None:
    if a.run:
        run = Path(a.run)
        a.checkpoint = a.checkpoint or str(run / "run" / "checkpoints" / "best.ckpt")
        a.image = a.image or str(sorted((run / "data" / "Images").glob("*.png"))[0])


def run(a: argparse.Namespace) -> dict[str, Any]:
    _defaults(a)
    skip = set(filter(None, a.skip.split(",")))
    res: dict[str, Any] = {"machine": _machine(), "steps": a.steps, "repeats": a.repeats, "policies": {}}
    for policy in a.policies.split(","):
        row: dict[str, Any] = {}
        if "train" not in skip:
            row["train_alone"] = _train(policy, 1, 0, a)
            row["train_busy"] = _train(policy, 1, 1, a)
            row["train_second"] = _train(policy, 2, 0, a)
        if "predict" not in skip and a.image:
            for kind, flag, path in (("ckpt", "--checkpoint", a.checkpoint), ("onnx", "--model", a.model)):
                if path:
                    row[f"predict_{kind}_alone"] = _predict(policy, flag, path, a.image, 0, a.repeats)
                    row[f"predict_{kind}_busy"] = _predict(policy, flag, path, a.image, 1, a.repeats)
        res["policies"][policy] = row
    res["machine"]["load_after"] = os.getloadavg()[0]
    return res


def table(res: dict[str, Any]) -> str:
    lines = ["| policy | measure | alone | beside a busy loop | slowdown | beside a 2nd training | slowdown |",
             "|---|---|---|---|---|---|---|"]
    for policy, row in res["policies"].items():
        if "train_alone" in row:
            alone, busy, second = (row[k]["img_per_s"] for k in ("train_alone", "train_busy", "train_second"))
            lines.append(f"| {policy} | demo training, img/s | {alone:.1f} | {busy:.1f} | {alone / busy:.2f}x | "
                         f"{second:.1f} | {alone / second:.2f}x |")
        for kind in ("ckpt", "onnx"):
            if f"predict_{kind}_alone" in row:
                alone, busy = row[f"predict_{kind}_alone"]["median_s"], row[f"predict_{kind}_busy"]["median_s"]
                name = "checkpoint" if kind == "ckpt" else "ONNX"
                lines.append(f"| {policy} | `predict` one image, {name}, s | {alone:.2f} | {busy:.2f} | "
                             f"{busy / alone:.2f}x | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    a = _args(argv)
    if a.child == "train":
        train_child(a.steps, a.warmup)
        return
    res = run(a)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _provenance import stamp

    res["command"] = "python benchmarks/bench_contention.py " + " ".join(
        x for x in (argv if argv is not None else sys.argv[1:]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(stamp(res, ["benchmarks/bench_contention.py", "benchmarks/bench_train_parts.py"]),
                                      indent=2) + "\n")
    print(table(res))
    m = res["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores; load average {m['load_before']:.2f} before, {m['load_after']:.2f} after")


if __name__ == "__main__":
    main()
