"""Frozen-backbone fast path: backbone features computed once, cached on disk, then only the
attention block and the head are trained on them.

With ``model.finetune: frozen`` the backbone runs in eval mode and never changes, so its last
feature map (B, C, h, w) for an image is a constant: computing it once instead of every epoch
makes training the attention + head a matter of seconds to minutes on a CPU.

Cache: ``CACHE_DIR/<key>/features.npy`` (float16, N x C x h x w, to halve the disk/RAM use)
and ``meta.json`` (written last, so it marks a complete entry). The key hashes the backbone
name, the weights themselves (a digest of the backbone's tensors, so 'random init with seed 1'
and 'ImageNet weights' never share an entry), the preprocessing and the image list (path,
size and modification time of each file).

Limits: augmentation cannot be applied to cached features (``data.augment`` is ignored here
and the run records ``augment_applied: false``); the run trains in one go (no mid-run resume:
it is short) and is skipped by ``reproduce`` once finished.

The checkpoint is written by the same writer as ``fit``'s (``models.checkpoint``), so every
command reads it unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from fetalplanes.core import atomic
from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.records import Sample
from fetalplanes.models.checkpoint import write_checkpoint

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class FeatureSet:
    """Cached backbone features of a list of images, in the order of ``paths``."""

    features: torch.Tensor  # (N, C, h, w) float16
    paths: list[str]
    key: str
    cached: bool  # True when read from disk, False when computed in this call
    extract_s: float

    def rows(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Row indices of ``samples`` in this set (every sample must be present)."""
        where = {p: i for i, p in enumerate(self.paths)}
        missing = [str(s.path) for s in samples if str(s.path) not in where]
        if missing:
            raise KeyError(f"{len(missing)} image(s) not in feature cache {self.key}, e.g. {missing[:3]}")
        return torch.tensor([where[str(s.path)] for s in samples], dtype=torch.long)


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(backbone_name: str, weights: str, pre: Preprocessing, paths: Sequence[str]) -> str:
    """Digest of what determines the features: backbone, weights, preprocessing and images."""
    h = hashlib.sha256()
    head = {"format": CACHE_FORMAT, "backbone": backbone_name, "weights": weights, "preprocessing": pre.__dict__}
    h.update(json.dumps(head, sort_keys=True, default=list).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


@torch.inference_mode()
def _extract(backbone: nn.Module, pre: Preprocessing, samples: Sequence[Sample], out: np.ndarray | None,
             batch_size: int, device: torch.device, num_workers: int = 0) -> np.ndarray:
    from torch.utils.data import DataLoader

    from fetalplanes.data.torch_data import EpochSampler, ImageDataset

    ds = ImageDataset(samples, pre)
    loader = DataLoader(ds, batch_size=batch_size, sampler=EpochSampler(len(ds), shuffle=False), num_workers=num_workers)
    backbone = backbone.eval().to(device, memory_format=torch.channels_last)
    start = 0
    for x, _ in loader:
        f = backbone.forward_features(x.to(device).contiguous(memory_format=torch.channels_last))
        f = f.to("cpu", torch.float16).contiguous().numpy()
        if out is None:
            out = np.empty((len(samples), *f.shape[1:]), dtype=np.float16)
        out[start : start + len(f)] = f
        start += len(f)
    assert out is not None
    return out


def cached_features(model: nn.Module, pre: Preprocessing, samples: Sequence[Sample], cache_dir: str | Path,
                    batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0) -> FeatureSet:
    """Backbone features of ``samples`` from the cache, computing and storing them on a miss."""
    paths = [str(s.path) for s in samples]
    backbone = model.backbone
    name = str(getattr(model, "config", {}).get("backbone", type(backbone).__name__))
    key = cache_key(name, weights_digest(backbone), pre, paths)
    entry = Path(cache_dir) / key
    meta_path, feat_path = entry / "meta.json", entry / "features.npy"
    if meta_path.is_file() and feat_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("paths") == paths:
            t0 = time.perf_counter()
            feats = torch.from_numpy(np.load(feat_path))
            log.info("feature cache hit %s (%d images, %.1f s to load)", key, len(paths), time.perf_counter() - t0)
            return FeatureSet(feats, paths, key, True, float(meta.get("extract_s", 0.0)))
    t0 = time.perf_counter()
    log.info("feature cache miss %s: extracting %s features of %d images", key, name, len(paths))
    arr = _extract(backbone, pre, samples, None, batch_size, torch.device(device), num_workers)
    extract_s = time.perf_counter() - t0
    with atomic.atomic_path(feat_path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    meta = {"format": CACHE_FORMAT, "backbone": name, "preprocessing": pre.__dict__, "shape": list(arr.shape),
            "dtype": "float16", "extract_s": extract_s, "s_per_image": extract_s / max(1, len(paths)), "paths": paths}
    atomic.write_json(meta_path, meta)
    return FeatureSet(torch.from_numpy(arr), paths, key, False, extract_s)


# Attention blocks whose spatial mean equals the block applied to the spatially averaged map
# (a 1x1 map): identity, and squeeze-excitation (its gate only sees the spatial mean, and the gate
# is constant over space). Their head can train on (N, C, 1, 1) pooled features: exact, and
# h*w times less work. CBAM (max pooling, spatial gate) and MHSA need the full map.
POOL_COMMUTING = ("none", "se")


def pool_features(feats: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N, C, h, w) float16 -> (N, C, 1, 1) float32 spatial means (in chunks, to bound memory)."""
    return torch.cat([feats[i : i + chunk].float().mean(dim=(2, 3), keepdim=True) for i in range(0, len(feats), chunk)])


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Same rule as the Lightning module: no weight decay on biases and norm scales.
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    # The fused kernel is the same AdamW update in one op per tensor group: the head's steps are
    # so small that the optimizer's per-tensor overhead was half of each step on CPU.
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # device or torch build without the fused kernel
        return torch.optim.AdamW(groups, lr=lr)


def _macro_f1(y: torch.Tensor, pred: torch.Tensor, n: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y.numpy(), pred.numpy(), labels=list(range(n)), average="macro", zero_division=0))


@torch.inference_mode()
def _predict(model: nn.Module, feats: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    out = [model.forward_head(model.attention(feats[i : i + batch_size].to(device).float())).float().cpu()
           for i in range(0, len(feats), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, 0))


@dataclass
class HeadTraining:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_f1_macro: float
    epochs_run: int
    train_s: float
    history: list[dict[str, float]]


def train_head(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
               val_y: torch.Tensor, cfg: Any, num_classes: int, class_weights: Sequence[float] | None = None,
               device: str | torch.device = "cpu", cpu_threads: int | None = None) -> HeadTraining:
    """Train ``model.attention`` + ``model.head`` on cached feature maps (AdamW, warm-up + cosine,
    label smoothing, class-weighted loss, early stopping on validation macro-F1 like ``fit``).

    For attention types in ``POOL_COMMUTING`` the maps are averaged once up front (exact).
    ``cpu_threads`` (CPU only; None = 1 for pooled features, else torch's setting): the ops on
    pooled features are tiny, and intra-op threads then only add synchronisation, which on a
    shared, oversubscribed CPU made a step 15x slower than one thread. Restored afterwards.
    """
    device = torch.device(device)
    pooled = cfg.model.attention in POOL_COMMUTING
    if pooled and train_x.shape[-1] * train_x.shape[-2] > 1:
        train_x, val_x = pool_features(train_x), pool_features(val_x)
    threads = cpu_threads if cpu_threads is not None else (1 if pooled else None)
    before = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    # Weight decay and AdamW's second moments drive many values into the denormal range, where
    # x86 arithmetic is many times slower: later epochs ran 2x slower than the first ones. Values
    # below ~1e-38 are flushed to zero for the head's training only (torch's default is off).
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _train_head(model, train_x, train_y, val_x, val_y, cfg, num_classes, class_weights, device)
    finally:
        torch.set_num_threads(before)
        if flush:
            torch.set_flush_denormal(False)


def _train_head(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
                val_y: torch.Tensor, cfg: Any, num_classes: int, class_weights: Sequence[float] | None,
                device: torch.device) -> HeadTraining:
    from fetalplanes.training.module import warmup_cosine

    o, t = cfg.optim, cfg.trainer
    trainable = nn.ModuleDict({"attention": model.attention, "head": model.head}).to(device)
    weight = torch.tensor(list(class_weights), dtype=torch.float32, device=device) if class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=o.label_smoothing)
    opt = _adamw(_param_groups(trainable, o.weight_decay), o.lr)
    steps_per_epoch = max(1, -(-len(train_x) // o.batch_size))
    total = steps_per_epoch * o.max_epochs
    warmup = min(total - 1, int(round(o.warmup_epochs * steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total))
    gen = torch.Generator().manual_seed(int(t.seed))
    sample_w = None
    if cfg.data.balance == "sampler":
        counts = torch.bincount(train_y, minlength=num_classes).double()
        sample_w = 1.0 / counts[train_y]
    best = HeadTraining(copy.deepcopy(trainable.state_dict()), -1, -1.0, 0, 0.0, [])
    t0, stale = time.perf_counter(), 0
    for epoch in range(o.max_epochs):
        trainable.train()
        order = (torch.multinomial(sample_w, len(train_y), True, generator=gen) if sample_w is not None
                 else torch.randperm(len(train_y), generator=gen))
        loss_sum = 0.0
        for i in range(0, len(order), o.batch_size):
            idx = order[i : i + o.batch_size]
            x, y = train_x[idx].to(device).float(), train_y[idx].to(device)
            loss = criterion(model.forward_head(model.attention(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        pred = _predict(model, val_x, 256, device).argmax(1)
        f1 = _macro_f1(val_y, pred, num_classes)
        best.history.append({"epoch": epoch, "train_loss": loss_sum / len(order), "val_f1_macro": f1,
                             "val_acc": float((pred == val_y).float().mean())})
        best.epochs_run = epoch + 1
        if f1 > best.best_val_f1_macro:
            best.best_state, best.best_epoch, best.best_val_f1_macro, stale = (
                copy.deepcopy(trainable.state_dict()), epoch, f1, 0)
        else:
            stale += 1
            if stale > t.patience:
                break
    best.train_s = time.perf_counter() - t0
    trainable.load_state_dict(best.best_state)
    return best


def _device(cfg: Any) -> torch.device:
    gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if gpu else "cpu")


def fit_frozen(data: str | Path, cfg: Any, out_dir: str | Path, cache_dir: str | Path | None = None):
    """``fit`` for a frozen backbone: same run directory layout and checkpoint format, trained on
    cached features. ``cache_dir`` defaults to ``OUT_DIR/../feature_cache``."""
    import lightning as L

    from fetalplanes.data.torch_data import class_weights
    from fetalplanes.models.registry import build_model
    from fetalplanes.training.fit import FitResult, prepare_run

    if cfg.model.finetune != "frozen":
        raise ValueError(f"fit_frozen needs model.finetune 'frozen', got {cfg.model.finetune!r}")
    run_dir = Path(out_dir)
    ckpt_dir = run_dir / "checkpoints"
    cache_dir = Path(cache_dir) if cache_dir is not None else run_dir.parent / "feature_cache"
    index, splits, spec, summary = prepare_run(data, cfg, run_dir)
    if cfg.data.augment > 0:
        log.warning("frozen fast path: data.augment=%s is not applied to cached features", cfg.data.augment)

    n = len(index.class_names)
    model = build_model(cfg.model, n)
    device = _device(cfg)
    every = sorted(index.samples, key=lambda s: str(s.path))  # one cache entry serves every split and seed
    fs = cached_features(model, spec.preprocessing, every, cache_dir, batch_size=max(32, cfg.optim.batch_size),
                         device=device, num_workers=cfg.data.num_workers)
    tr, va = fs.rows(splits.train), fs.rows(splits.val)
    train_y = torch.tensor([s.label for s in splits.train])
    val_y = torch.tensor([s.label for s in splits.val])
    weights = class_weights(train_y.tolist(), n).tolist() if cfg.data.balance == "loss" else None
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # head init independent of extraction
    result = train_head(model, fs.features[tr], train_y, fs.features[va], val_y, cfg, n, weights, device)
    model = model.cpu()
    counts = model.param_counts()
    info = {"path": "feature-cache", "key": fs.key, "cache_dir": str(cache_dir), "cached": fs.cached,
            "extract_s": fs.extract_s, "feature_shape": list(fs.features.shape[1:]), "augment_applied": False}
    for name in ("best.ckpt", "last.ckpt"):  # last == best: the whole run is one short call
        write_checkpoint(ckpt_dir / name, model, spec, cfg.model_dump(mode="json"), epoch=result.best_epoch,
                         feature_cache=info)
    out = {
        "name": cfg.name,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_f1_macro": result.best_val_f1_macro,
        "train_img_per_s": len(tr) * result.epochs_run / max(result.train_s, 1e-9),
        "wall_s": result.train_s,
        "params": counts,
        "feature_cache": info,
        "history": result.history,
        **summary,
    }
    if cfg.trainer.calibrate:
        from fetalplanes.evaluation.calibration import calibrate_checkpoint

        out["calibration"] = calibrate_checkpoint(ckpt_dir / "best.ckpt", splits.val, run_dir,
                                                  num_workers=cfg.data.num_workers)
    atomic.write_json(run_dir / "train_summary.json", out)
    log.info("frozen fast path %s: %d epochs in %.1f s, best val macro-F1 %.4f", cfg.name, result.epochs_run,
             result.train_s, result.best_val_f1_macro)
    return FitResult(run_dir, ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt", out)
