"""Lightning data module: split samples -> datasets -> loaders with the resume-exact sampler."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import lightning as L
from torch.utils.data import DataLoader

from fetalplanes.core.io import BadFilesError, ImageLoadError
from fetalplanes.core.spec import Preprocessing
from fetalplanes.data.records import Sample
from fetalplanes.data.torch_data import EpochSampler, ImageDataset, balanced_weights
from fetalplanes.runtime.threads import available_cores
from fetalplanes.training.config import TrainConfig

log = logging.getLogger(__name__)


def decode_threads() -> int:
    """Threads for decoding (PIL releases the GIL while decoding): 4, or one per core up to 16."""
    return max(4, min(16, available_cores()))


def warm_dataset(ds: ImageDataset, skip_bad: bool = False, threads: int | None = None) -> ImageDataset:
    """Decode every image once (filling the cache) and report ALL unreadable files at once.

    With ``skip_bad`` the bad files are dropped with a warning instead of stopping the run.
    ``threads``: default :func:`decode_threads` (the order of the results does not depend on it).
    """
    threads = threads or decode_threads()
    def probe(i: int) -> tuple[int, str | None]:
        try:
            ds.gray(i)
            return i, None
        except ImageLoadError as err:
            return i, str(err)

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(probe, range(len(ds))))
    bad = [(str(ds.samples[i].path), msg) for i, msg in results if msg]
    if bad and not skip_bad:
        raise BadFilesError(bad)
    if bad:
        log.warning("skipping %d unreadable image(s): %s", len(bad), "; ".join(m for _, m in bad[:5]))
        keep = [i for i, msg in results if not msg]
        cache = ds._cache
        ds.samples = [ds.samples[i] for i in keep]
        if cache is not None:
            ds._cache = {new: cache[old] for new, old in enumerate(keep) if old in cache}
    return ds


class PlaneDataModule(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig, pre: Preprocessing, train: list[Sample], val: list[Sample], num_classes: int):
        super().__init__()
        self.cfg, self.pre, self.num_classes = cfg, pre, num_classes
        d = cfg.data
        augment = d.augment if d.augment > 0 else None  # strength of the one augmentation (data.augment)
        seed = cfg.trainer.seed
        self.train_ds = ImageDataset(train, pre, augment, seed=seed, cache=d.cache_images)
        self.val_ds = ImageDataset(val, pre, None, seed=seed, cache=d.cache_images)

    def prepare(self) -> None:
        """Decode/validate all images up front (call once, before fit)."""
        if self.cfg.data.cache_images:
            warm_dataset(self.train_ds, self.cfg.data.skip_bad)
            warm_dataset(self.val_ds, self.cfg.data.skip_bad)

    def _loader(self, ds: ImageDataset, sampler: EpochSampler, batch_size: int) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            # Page-locked batches let Lightning's non_blocking copy overlap the GPU's work.
            pin_memory=self._to_cuda(),
        )

    def _to_cuda(self) -> bool:
        trainer = self.trainer
        return trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cuda"

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        labels = [s.label for s in self.train_ds.samples]
        weights = balanced_weights(labels, self.num_classes) if self.cfg.data.balance == "sampler" else None
        sampler = EpochSampler(len(self.train_ds), self.cfg.trainer.seed, True, weights, world, rank)
        return self._loader(self.train_ds, sampler, self.cfg.optim.batch_size)

    def val_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.val_ds), self.cfg.trainer.seed, shuffle=False)
        return self._loader(self.val_ds, sampler, self.cfg.optim.batch_size * 2)
