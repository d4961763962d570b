"""Training at the device's pace (issue 12): compute-only step vs the CLI's end-to-end training.

On any device (CUDA GPU or CPU) it measures, for one training config (default ``paper_v2b0``):

- compute-only img/s: the training step alone on random tensors already on the device, with
  the settings the CLI resolves for this machine (``training.fit.resolve_execution``: precision,
  channels_last, the module's loss, parameter groups and AdamW rule incl. fused on CUDA), at
  the preset batch and at a large batch; plus inference img/s (for the frozen rows);
- end-to-end img/s: ``fetalplanes.training.fit.fit`` (what ``fetalplanes train`` runs) on a
  synthetic FETAL_PLANES_DB-format set, per data loader (``workers``: PIL in loader processes;
  ``device``: uint8 images on the device, batch augmentation there) and batch: training images
  per second of the last epoch (the ``Throughput`` callback's definition), the share of the
  epoch the host waited for input, validation and checkpoint seconds, the best validation
  macro-F1 (synthetic phantoms: a software check, not a clinical number);
- their ratio, GPU utilisation sampled every 0.1 s during each fit (pynvml or nvidia-smi;
  "n/a" on CPU), and the projected time of the planes table (13 variants x 3 seeds x 2 splits;
  ``projection`` in the JSON says how it is computed).

Prints ONE markdown table (then the projection in two lines) and writes JSON (``--out``).

    python benchmarks/bench_train.py --quick --out /tmp/bench_train.json      # CPU, seconds-minutes
    bash benchmarks/gpu_bench_train.sh                                        # the GPU run (docs/reproduce.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The siblings bench_train_data / bench_train_parts are imported inside the functions: the
# processes this script spawns re-import it, and should not pay for torch and Lightning.

log = logging.getLogger("bench_train")

QUICK = {"image_size": 32, "per_class": 10, "sets": 2, "synth_size": (64, 48), "batches": "4,8", "epochs": 2,
         "steps": 3, "warmup": 1, "threads": 1}


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes on CPU (CI: correctness only)")
    ap.add_argument("--out", default="bench_train.json")
    ap.add_argument("--config", default="paper_v2b0", help="preset or YAML whose training is measured")
    ap.add_argument("--data", default=None, help="dataset to train on (default: build a synthetic one)")
    ap.add_argument("--work", default=None, help="folder for the synthetic data and runs (default: a temp folder)")
    ap.add_argument("--per-class", type=int, default=1400, help="synthetic images per class, all sets together")
    ap.add_argument("--sets", type=int, default=14, help="synthetic sets built in parallel processes")
    ap.add_argument("--synth-size", default="512x384", help="synthetic image width x height")
    ap.add_argument("--image-size", type=int, default=None, help="model input size (default: the config's)")
    ap.add_argument("--batches", default=None, help="comma list; default: the config's batch and 256")
    ap.add_argument("--loaders", default="workers,device", help="end-to-end loaders: workers, device")
    ap.add_argument("--large-loaders", default="device", help="loaders also run at the large batch(es)")
    ap.add_argument("--workers", type=int, default=None, help="loader processes for 'workers' (default: cores - 2)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per end-to-end run (the last one is reported)")
    ap.add_argument("--steps", type=int, default=30, help="timed compute-only steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's; quick: 1, "
                    "since on a shared 2-core machine 2 threads made a step ~27x slower)")
    ap.add_argument("--project-variants", action="store_true", help="also time every variant's model (compute only)")
    ap.add_argument("--jobs-probe", default="", help="e.g. 1,2,4: compute-only throughput of K concurrent processes")
    ap.add_argument("--eval", action="store_true", help="time calibration + evaluation of one run (projection)")
    args = ap.parse_args(argv)
    if args.quick:
        args.image_size = args.image_size or QUICK["image_size"]
        args.per_class, args.sets = QUICK["per_class"], QUICK["sets"]
        args.synth_size = "x".join(map(str, QUICK["synth_size"]))
        args.batches = args.batches or QUICK["batches"]
        args.epochs, args.steps, args.warmup = QUICK["epochs"], QUICK["steps"], QUICK["warmup"]
        args.workers = 0 if args.workers is None else args.workers
        args.threads = args.threads or QUICK["threads"]
    return args


def _cfg(args: argparse.Namespace, batch: int, loader: str, epochs: int) -> Any:
    from fetalplanes.training.config import load_config
    from fetalplanes.training.fit import resolve_execution

    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 4) - 2)
    overrides = {"optim.batch_size": batch, "optim.max_epochs": epochs, "data.loader": loader,
                 "data.num_workers": workers if loader == "workers" else 0, "data.image_size": args.image_size,
                 "model.pretrained": "none", "trainer.progress": False, "trainer.patience": 10**6,
                 "trainer.calibrate": False, "trainer.accelerator": args.accelerator}
    return resolve_execution(load_config(args.config, overrides))


def _device_name(cfg: Any) -> str:
    import torch

    from fetalplanes.training.fit import on_cuda

    if on_cuda(cfg):
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads)"


def end_to_end(args: argparse.Namespace, data: Path, work: Path, batch: int, loader: str) -> dict[str, Any]:
    """One ``fit`` run; the last epoch's numbers (the first carries warm-up and autotuning)."""
    from bench_train_parts import EpochTimer, UtilSampler

    from fetalplanes.training.fit import fit

    cfg = _cfg(args, batch, loader, args.epochs)
    timer, util = EpochTimer(), UtilSampler()
    run = work / f"run_{loader}_b{batch}"
    t0 = time.perf_counter()
    with util:
        result = fit(data, cfg, run, extra_callbacks=[timer])
    wall = time.perf_counter() - t0
    last = timer.epochs[-1]
    return {
        "path": "end_to_end", "loader": loader, "batch": batch, "epochs": len(timer.epochs),
        "train_images": last["images"], "val_images": last["val_images"],
        "train_img_per_s": last["images"] / last["train_s"], "epoch_s": last["epoch_s"], "train_s": last["train_s"],
        "val_s": last["val_s"], "other_s": last["epoch_s"] - last["train_s"] - last["val_s"],
        "input_wait_share": last["wait_s"] / last["train_s"], "fit_wall_s": wall,
        "setup_s": wall - sum(e["epoch_s"] for e in timer.epochs),
        "best_val_f1_macro": result.summary["best_val_f1_macro"], "gpu_util": util.summary(),
        "precision": cfg.trainer.precision, "workers": cfg.data.num_workers, "run_dir": str(run),
    }


def _eval_cost(data: Path, run: Path) -> dict[str, Any]:
    """Seconds of calibration + evaluation of one trained run (what ``reproduce`` does after training)."""
    from fetalplanes.evaluation.report import evaluate
    from fetalplanes.training.config import load_config
    from fetalplanes.training.fit import FitResult, load_summary
    from fetalplanes.workflow import calibrate

    summary = load_summary(run)
    ckpts = run / "checkpoints"
    result = FitResult(run, ckpts / "best.ckpt", ckpts / "last.ckpt", summary)
    cfg = load_config(run / "config.yaml")
    t0 = time.perf_counter()
    cal = calibrate(result, data, cfg, report_test=True)
    metrics = evaluate(result.best_checkpoint, data, run / "eval", "test", n_boot=1000)
    return {"seconds": time.perf_counter() - t0, "n_val": cal["val"]["n"], "n_test": metrics["n"]}


def _ratios(compute: list[dict[str, Any]], e2e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_batch = {r["batch"]: r["img_per_s"] for r in compute}
    return [{"loader": r["loader"], "batch": r["batch"], "ratio": r["train_img_per_s"] / by_batch[r["batch"]]}
            for r in e2e if by_batch.get(r["batch"])]


def _fmt_util(u: dict[str, Any] | None) -> str:
    if not u or u.get("median") is None:
        return "n/a"
    return f"{u['median']:.0f} % (max {u['max']:.0f})"


def table(res: dict[str, Any]) -> str:
    """The one markdown table (then the projection in two lines)."""
    lines = [f"device: {res['device']}  config {res['config']}  {res['image_size']} px  precision {res['precision']}"
             f"  train/val images {res['data']['n_train']}/{res['data']['n_val']}",
             "| path | loader | batch | train img/s | e2e / compute | input wait | val s / epoch | GPU busy | best val macro-F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["compute_only"]:
        lines.append(f"| compute-only step | random tensors on device | {r['batch']} | {r['img_per_s']:.1f} | 1 | - | - | "
                     f"{_fmt_util(r.get('gpu_util'))} | - |")
    ratio = {(q["loader"], q["batch"]): q["ratio"] for q in res["ratios"]}
    for r in res["end_to_end"]:
        lines.append(f"| CLI end to end (fit) | {r['loader']} | {r['batch']} | {r['train_img_per_s']:.1f} | "
                     f"{ratio.get((r['loader'], r['batch']), float('nan')):.2f} | {100 * r['input_wait_share']:.0f} % | "
                     f"{r['val_s']:.2f} | {_fmt_util(r['gpu_util'])} | {r['best_val_f1_macro']:.3f} |")
    p = res["projection"]
    lines.append(f"projected planes table ({p['runs']} runs, {p['epochs']} epochs each, evaluation "
                 f"{'included' if res.get('eval_cost') else 'NOT measured'}): "
                 f"{p['serial_minutes']:.1f} min one run at a time"
                 + (f", {p['best_jobs_minutes']:.1f} min with --jobs {p['best_jobs']}" if p.get("best_jobs") else ""))
    lines.append(f"  ({p['how']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    from bench_train_data import build_synthetic
    from bench_train_parts import compute_only, concurrent_compute, project_table

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from fetalplanes.training.fit import _quiet_lightning

    _quiet_lightning()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, info = (Path(args.data), {"source": args.data, "synthetic": None}) if args.data else build_synthetic(
        work / "data", args.per_class, args.sets, tuple(int(v) for v in args.synth_size.split("x")))
    info["build_s"] = time.perf_counter() - t0
    base = _cfg(args, 32, "auto", 1)
    args.image_size = args.image_size or base.data.image_size
    from fetalplanes.training.config import load_config

    own_batch = load_config(args.config).optim.batch_size
    batches = [int(b) for b in (args.batches or f"{own_batch},256").split(",")]
    import torch

    res: dict[str, Any] = {"device": _device_name(base), "torch": torch.__version__, "config": args.config,
                           "image_size": args.image_size, "quick": args.quick, "threads": args.threads,
                           "precision": base.trainer.precision, "data": info, "variants": {}, "jobs_probe": {},
                           "eval_cost": None}
    # Stages in order of importance; the JSON is rewritten after each, so a run stopped by its
    # time limit still leaves what it measured.
    res["compute_only"] = [compute_only(_cfg(args, b, "auto", 1), b, args.steps, args.warmup) for b in batches]
    _save(args.out, res)
    e2e = [end_to_end(args, data, work, batches[0], loader) for loader in args.loaders.split(",") if loader]
    for b in batches[1:]:
        e2e += [end_to_end(args, data, work, b, loader) for loader in args.large_loaders.split(",") if loader]
    info.update({"n_train": e2e[0]["train_images"], "n_val": e2e[0]["val_images"]})
    res.update(end_to_end=e2e, ratios=_ratios(res["compute_only"], e2e))
    _save(args.out, res)
    if args.eval:
        res["eval_cost"] = _eval_cost(data, Path(e2e[-1]["run_dir"]))
        _save(args.out, res)
    if args.project_variants:
        from fetalplanes.reproduce.variants import load_variants

        for name, v in load_variants(None).items():
            res["variants"][name] = {**compute_only(_variant_cfg(args, v, batches[-1]), batches[-1], args.steps,
                                                    args.warmup), "frozen": v.frozen}
        _save(args.out, res)
    ks = [int(k) for k in args.jobs_probe.split(",") if k]
    if ks:
        res["jobs_probe"] = concurrent_compute(_cfg(args, batches[0], "auto", 1), batches[0], args.warmup, ks)
    res["projection"] = project_table(res)
    _save(args.out, res)
    print(table(res))
    return res


def _save(out: str, res: dict[str, Any]) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2, default=str))
    log.warning("bench_train: %s written (%s)", out, ", ".join(k for k in res if res[k]))


def _variant_cfg(args: argparse.Namespace, variant: Any, batch: int) -> Any:
    """A reproduce variant's config with this benchmark's execution settings."""
    from fetalplanes.training.config import load_config
    from fetalplanes.training.fit import resolve_execution

    overrides = {**variant.overrides, "model.pretrained": "none", "optim.batch_size": batch,
                 "data.image_size": args.image_size, "trainer.accelerator": args.accelerator}
    return resolve_execution(load_config(variant.base, overrides))


if __name__ == "__main__":
    main()
