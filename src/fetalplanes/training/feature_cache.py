"""Frozen-backbone fast path: a data source for the training loop, not a second loop.

With ``model.finetune: frozen`` the backbone runs in eval mode and never changes, so its last
feature map (B, C, h, w) for an image is a constant: computing it once instead of every epoch
makes training the attention + head a matter of seconds to minutes on a CPU. This module
computes and caches those maps (:func:`cached_features`) and serves them to the SAME Lightning
module and trainer as images (:class:`FeatureDataModule`; ``PlaneModule(inputs="features")``
skips the frozen backbone), so the optimizer rule, the schedule, the validation macro-F1, early
stopping and the checkpoint writer are those of ``training.fit``.

Cache: ``CACHE_DIR/<key>/features.npy`` (float16, N x C x h x w, to halve the disk/RAM use)
and ``meta.json`` (written last, so it marks a complete entry). The key hashes the backbone
name, the weights themselves (a digest of the backbone's tensors, so 'random init with seed 1'
and 'ImageNet weights' never share an entry), the preprocessing and the image list (path,
size and modification time of each file).

Speed-ups kept from the measurements in docs/reproduce.md: for attention blocks that commute
with global pooling the maps are averaged once (exact); on CPU, training on pooled features
uses one intra-op thread, and denormals are flushed to zero while training (:func:`cpu_tuning`).

Limits: augmentation cannot be applied to cached features (``data.augment`` is ignored here
and the run records ``augment_applied: false``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fetalplanes.core import atomic
from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.records import Sample
from fetalplanes.data.torch_data import EpochSampler, balanced_weights
from fetalplanes.training.config import TrainConfig

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


class _Batches(Sampler[list[int]]):
    """Batches of ``EpochSampler`` keys (``epoch * N + index``), so one indexing op per batch.

    ``set_epoch`` is forwarded: Lightning calls it on the loader's sampler every epoch.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        keys = list(self.sampler)
        return iter([keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)])


class _FeatureBatches(Dataset):
    """(features, labels) of a list of sampler keys: one gather per batch instead of per row."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor(keys, dtype=torch.long) % len(self.y)
        return self.x[idx], self.y[idx]


class FeatureDataModule(L.LightningDataModule):
    """Cached feature maps as the training loop's data: batches of (B, C, h, w) and labels (B,).

    Same order rules as ``PlaneDataModule``: the seeded, resume-exact ``EpochSampler``
    (class-balanced draws with ``data.balance: sampler``, sharded for DDP). With ``pooled``
    (attention in :data:`POOL_COMMUTING`) the maps are averaged once up front: exact, and
    h*w times less work per step.
    """

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 cfg: TrainConfig, num_classes: int, pooled: bool = False, val_batch_size: int = 256) -> None:
        super().__init__()
        if pooled and train_x.shape[-1] * train_x.shape[-2] > 1:
            train_x, val_x = pool_features(train_x), pool_features(val_x)
        self.train_x, self.val_x = train_x, val_x
        self.train_y, self.val_y = train_y.long(), val_y.long()
        self.cfg, self.num_classes, self.pooled, self.val_batch_size = cfg, num_classes, pooled, val_batch_size

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        labels = self.train_y.tolist()
        weights = balanced_weights(labels, self.num_classes) if self.cfg.data.balance == "sampler" else None
        sampler = EpochSampler(len(labels), self.cfg.trainer.seed, True, weights, world, rank)
        return self._loader(self.train_x, self.train_y, _Batches(sampler, self.cfg.optim.batch_size))

    def val_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.val_y), self.cfg.trainer.seed, shuffle=False)
        return self._loader(self.val_x, self.val_y, _Batches(sampler, self.val_batch_size))

    @staticmethod
    def _loader(x: torch.Tensor, y: torch.Tensor, batches: _Batches) -> DataLoader:
        # batch_size=None: the sampler yields whole batches and the dataset gathers them at once.
        return DataLoader(_FeatureBatches(x, y), sampler=batches, batch_size=None, num_workers=0)


@contextmanager
def cpu_tuning(pooled: bool, threads: int | None = None) -> Iterator[None]:
    """Process-wide CPU settings for training on cached features; restored on exit.

    - Intra-op threads: ``threads``, or 1 for pooled features (None keeps torch's setting for
      full maps). The ops on pooled features are tiny, and extra threads then only add
      synchronisation: on a shared, oversubscribed CPU a step was 15x slower with two threads.
    - Denormals flushed to zero: weight decay and AdamW's second moments drive many values into
      the denormal range, where x86 arithmetic is many times slower (later epochs ran 2x slower
      than the first ones). Values below ~1e-38 become 0 during training only.
    """
    threads = threads if threads is not None else (1 if pooled else None)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    flush = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if flush:
            torch.set_flush_denormal(False)


def feature_data(model: nn.Module, pre: Preprocessing, every: Sequence[Sample], train: Sequence[Sample],
                 val: Sequence[Sample], cfg: TrainConfig, num_classes: int, cache_dir: str | Path,
                 device: str | torch.device = "cpu") -> tuple[FeatureDataModule, dict[str, Any]]:
    """The fast path's data module for ``train``/``val`` (features of ``every`` image are cached,
    so one cache entry serves every split and seed), and its description for the run record."""
    fs = cached_features(model, pre, every, cache_dir, batch_size=max(32, cfg.optim.batch_size),
                         device=device, num_workers=cfg.data.num_workers)
    tr, va = fs.rows(train), fs.rows(val)
    y_tr = torch.tensor([s.label for s in train], dtype=torch.long)
    y_va = torch.tensor([s.label for s in val], dtype=torch.long)
    pooled = cfg.model.attention in POOL_COMMUTING
    dm = FeatureDataModule(fs.features[tr], y_tr, fs.features[va], y_va, cfg, num_classes, pooled)
    info = {"path": "feature-cache", "key": fs.key, "cache_dir": str(cache_dir), "cached": fs.cached,
            "extract_s": fs.extract_s, "feature_shape": list(fs.features.shape[1:]), "pooled": pooled,
            "augment_applied": False}
    return dm, info
