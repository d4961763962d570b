"""Frozen-backbone fast path: time to train attention + head over N cached feature maps, and
the one-off cost of extracting the features.

Target (issue 6): on this CPU, training the head over 7,000 cached images in under 2 minutes.

1. Head training: random float16 feature maps of the backbone's real shape (EfficientNet-B0
   at 224 px: 1280 x 7 x 7) go through the real cache format (written and loaded with
   ``cached_features``' .npy layout) and the training loop of every run (``training.fit.train_loop``:
   Lightning, ``PlaneModule`` fed cached features, validation macro-F1, checkpoints and logs
   every epoch) runs the configured number of epochs (no early stopping, so every epoch is
   timed) for each attention type; the wall time includes validation and checkpoint writes. Random features make accuracy meaningless; only time is measured. Blocks
   that commute with global pooling (none, SE) train on pooled features (exact, much faster);
   CBAM and MHSA need the full maps (``--probe-epochs`` times a few epochs and projects).
2. Extraction: ``cached_features`` on synthetic phantom images (decode + preprocess +
   backbone forward at 224 px, batch 32), per image; projected to the dataset's sizes.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_frozen.py [--n 7000] [--epochs 30]
        [--attention cbam,se,none,mhsa] [--json benchmarks/results/bench_frozen.json]
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_S = 120.0


def _features(n: int, shape: tuple[int, ...], seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    # Post-activation feature maps are non-negative-ish; the distribution does not change the timing.
    return torch.randn((n, *shape), generator=g).abs_().to(torch.float16)


def bench_head(attention: str, n: int, n_val: int, epochs: int, batch: int, backbone: str, shape: tuple[int, ...],
               cache_root: Path, probe_epochs: int = 0, threads: int | None = None) -> dict:
    """Time ``epochs`` epochs of the training loop on cached features (``PlaneModule`` fed by
    ``FeatureDataModule`` through ``training.fit.train_loop``: the same Lightning loop, metric,
    checkpoints and logs as a real run); with ``probe_epochs`` > 0, blocks that need the full map
    (CBAM, MHSA) run only that many epochs and the total for ``epochs`` is projected."""
    import numpy as np
    import torch

    from fetalplanes.core.classes import PLANES
    from fetalplanes.training.config import load_config
    from fetalplanes.training.feature_cache import POOL_COMMUTING, FeatureDataModule
    from fetalplanes.training.fit import _quiet_lightning, build_run_model, resolve_execution, train_loop
    from fetalplanes.training.module import PlaneModule

    run_epochs = probe_epochs if probe_epochs and attention not in POOL_COMMUTING else epochs
    cfg = resolve_execution(load_config("paper_b0", {"optim.max_epochs": run_epochs, "optim.batch_size": batch, "trainer.patience": epochs + 1,
                                   "model.attention": attention, "model.finetune": "frozen", "model.backbone": backbone,
                                   "model.pretrained": "none", "trainer.progress": False, "trainer.accelerator": "cpu"}))
    path = cache_root / "features.npy"
    if not path.is_file():  # one cache entry serves every attention type, as in a real grid
        np.save(path, _features(n + n_val, shape, 0).numpy())
    t0 = time.perf_counter()
    feats = torch.from_numpy(np.load(path))
    load_s = time.perf_counter() - t0
    y = torch.randint(0, 6, (n + n_val,), generator=torch.Generator().manual_seed(1))
    _quiet_lightning()
    model, spec = build_run_model(cfg, PLANES, {})
    module = PlaneModule(cfg, spec, model, inputs="features")
    pooled = attention in POOL_COMMUTING
    dm = FeatureDataModule(feats[:n], y[:n], feats[n:], y[n:], cfg, 6, pooled=pooled)
    if threads:  # pooled features train on 1 thread anyway (training.feature_cache.cpu_tuning)
        torch.set_num_threads(threads)
    print(f"... {attention}: {run_epochs} epochs", flush=True)
    cpu0 = time.process_time()  # CPU seconds of this process: what the run costs on an idle machine
    _, r = train_loop(cfg, cache_root / f"run-{attention}", module, dm)
    epochs_run = r["epochs_run"]
    cpu_s = (time.process_time() - cpu0) * epochs / epochs_run
    counts = module.model.param_counts()
    per_epoch = r["wall_s"] / epochs_run
    total = per_epoch * epochs
    return {"attention": attention, "n_train": n, "n_val": n_val, "epochs": epochs, "epochs_timed": epochs_run,
            "projected": epochs_run != epochs, "batch": batch, "train_s": total, "s_per_epoch": per_epoch,
            "cpu_s": cpu_s,
            "img_per_s": n / per_epoch, "pooled_shortcut": pooled, "cache_load_s": load_s,
            "trainable_params": counts["trainable"], "meets_target": total < TARGET_S,
            "threads": 1 if pooled else (threads or torch.get_num_threads())}


def bench_extract(backbone: str, size: int, n_images: int, tmp: Path) -> dict:
    from fetalplanes.data.sources import load_source
    from fetalplanes.data.synth import synthesize
    from fetalplanes.models.registry import ModelConfig, build_model, default_preprocessing
    from fetalplanes.training.feature_cache import cached_features

    per_class = max(1, -(-n_images // 6))
    data = synthesize(tmp / "synth", per_class=per_class, seed=0, image_size=(800, 600))  # about the archive's sizes
    samples = sorted(load_source(data).samples, key=lambda s: str(s.path))[:n_images]
    model = build_model(ModelConfig(backbone=backbone, finetune="frozen"), 6)
    pre = default_preprocessing(model, size)
    fs = cached_features(model, pre, samples, tmp / "cache", batch_size=32)
    t0 = time.perf_counter()
    hit = cached_features(model, pre, samples, tmp / "cache", batch_size=32)
    hit_s = time.perf_counter() - t0
    per = fs.extract_s / len(samples)
    return {"backbone": backbone, "image_size": size, "n_images": len(samples), "extract_s": fs.extract_s,
            "s_per_image": per, "projected_7000_min": per * 7000 / 60, "projected_12400_min": per * 12400 / 60,
            "cache_hit_s": hit_s, "feature_shape": list(hit.features.shape[1:]),
            "feature_mb_per_1000": hit.features[0].numel() * 2 * 1000 / 2**20}


def main() -> None:
    import torch

    from fetalplanes.core import atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=7000, help="cached training images")
    ap.add_argument("--val", type=int, default=1000, help="cached validation images (scored every epoch)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs (paper_b0's max_epochs)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--attention", default="cbam,se,none,mhsa")
    ap.add_argument("--backbone", default="efficientnet_b0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--extract-images", type=int, default=48)
    ap.add_argument("--probe-epochs", type=int, default=0,
                    help="time only this many epochs for full-map blocks (cbam, mhsa) and project")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for full-map heads (0: torch's default; pooled heads use 1)")
    ap.add_argument("--json", default="benchmarks/results/bench_frozen.json")
    args = ap.parse_args()

    from fetalplanes.models.registry import ModelConfig, build_model

    probe = build_model(ModelConfig(backbone=args.backbone, finetune="frozen"), 6).eval()
    with torch.no_grad():
        shape = tuple(probe.backbone.forward_features(torch.zeros(1, 3, args.size, args.size)).shape[1:])
    with tempfile.TemporaryDirectory(prefix="bench_frozen_") as tmp:
        tmp_path = Path(tmp)
        extract = bench_extract(args.backbone, args.size, args.extract_images, tmp_path) if args.extract_images else None
        heads = [bench_head(a.strip(), args.n, args.val, args.epochs, args.batch, args.backbone, shape, tmp_path,
                            args.probe_epochs, args.threads or None) for a in args.attention.split(",") if a.strip()]
    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": str(torch.__version__), "load_avg_1min": os.getloadavg()[0]}
    print(f"frozen fast path, {args.backbone} features {shape} float16, {args.n} train + {args.val} val cached images, "
          f"{args.epochs} epochs, batch {args.batch}; {env['cores']} cores, torch threads {env['torch_threads']}, "
          f"1-min load average {env['load_avg_1min']:.1f}")
    print("| attention | trained on | threads | trainable params | epochs (timed) | wall s | CPU s | s / epoch | img/s | "
          "< 2 min wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in heads:
        on = "pooled (exact)" if r["pooled_shortcut"] else "full maps"
        total = f"{r['train_s']:.1f}" + (" (projected)" if r["projected"] else "")
        print(f"| {r['attention']} | {on} | {r['threads']} | {r['trainable_params']:,} | {r['epochs']} ({r['epochs_timed']}) | {total} | {r['cpu_s']:.1f} | "
              f"{r['s_per_epoch']:.2f} | {r['img_per_s']:.0f} | {'yes' if r['meets_target'] else 'NO'} |")
    if extract:
        print(f"\nfeature extraction ({extract['backbone']}, {extract['image_size']} px, decode + preprocess + forward): "
              f"{extract['s_per_image'] * 1000:.1f} ms/image -> {extract['projected_7000_min']:.1f} min for 7,000 and "
              f"{extract['projected_12400_min']:.1f} min for 12,400 images (once per backbone/weights); "
              f"{extract['feature_mb_per_1000']:.0f} MB of cache per 1,000 images; cache hit {extract['cache_hit_s']:.2f} s")
    atomic.write_json(args.json, {"env": env, "args": vars(args), "feature_shape": list(shape), "head_training": heads,
                                  "extraction": extract, "target_s": TARGET_S})
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
