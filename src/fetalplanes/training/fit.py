"""``fit``: data folder + config -> a trained, self-describing run directory.

RUN/ holds ``config.yaml`` (resolved), ``splits.json`` (which image is in which split),
``checkpoints/best.ckpt`` (best validation macro-F1) and ``last.ckpt``, ``logs/`` (CSV and
TensorBoard) and ``train_summary.json``.

One loop (:func:`train_loop`: ``PlaneModule`` + Lightning) for both data sources: images
(``PlaneDataModule``) or, for a frozen backbone, cached backbone features
(``training.feature_cache``, :func:`fit_frozen`). Calibration is not part of training: the
pipelines that train call it afterwards (``fetalplanes.workflow``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO

import fetalplanes
from fetalplanes.core import atomic
from fetalplanes.core.errors import UsageError
from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.provenance import RECORD_KEY, build_record
from fetalplanes.data.records import Sample
from fetalplanes.data.sources import load_source
from fetalplanes.data.splits import Splits, make_splits
from fetalplanes.data.torch_data import class_weights
from fetalplanes.models.classifier import PlaneClassifier
from fetalplanes.models.registry import build
from fetalplanes.training.callbacks import AtomicCheckpointIO, BatchSeed, Throughput
from fetalplanes.training.config import TrainConfig, dump_config
from fetalplanes.training.datamodule import PlaneDataModule
from fetalplanes.training.module import VAL_METRIC, PlaneModule

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    summary: dict[str, Any]
    # The validation images the run selected its best checkpoint on (unreadable ones dropped
    # with data.skip_bad): the calibration step fits the temperature on the same images.
    val_samples: list[Sample] = field(default_factory=list)
    is_global_zero: bool = True  # False on the other DDP ranks: they write nothing after training


def splits_record(splits: Splits) -> dict[str, Any]:
    return {
        **splits.summary(),
        **{name: sorted(s.path.name for s in splits.by_name(name)) for name in ("train", "val", "test")},
    }


def build_run_model(cfg: TrainConfig, class_names: tuple[str, ...],
                    data_summary: dict[str, Any]) -> tuple[PlaneClassifier, ModelSpec]:
    """The run's model, built once (``models.build``), and the spec every checkpoint records."""
    model, pre = build(cfg.model, class_names, cfg.data.image_size)
    return model, ModelSpec(
        name=cfg.name,
        task=cfg.data.task,
        class_names=class_names,
        architecture=cfg.model.model_dump(mode="json"),
        preprocessing=pre,
        version=fetalplanes.__version__,
        training=data_summary,
        # The explain section rides along so `fetalplanes explain` and the web page use the
        # heat-map settings chosen for this model (core.cam_methods.HeatMapSettings).
        explain=cfg.explain.to_dict(),
    )


def prepare_run(data: str | Path, cfg: TrainConfig,
                run_dir: Path) -> tuple[Any, Splits, PlaneClassifier, ModelSpec, dict[str, Any]]:
    """Seed, read the data, split it by patient, build the model and its spec (with the record of
    the images of each split, ``data.provenance``); write config.yaml and splits.json.

    Returns (index, splits, model, spec, summary of data + splits + seed for train_summary.json).
    """
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    index = load_source(data, cfg.data.task)
    splits = make_splits(index, cfg.data.split, cfg.data.val_fraction, cfg.trainer.seed, cfg.data.fold, cfg.data.n_folds)
    summary = {"data": index.summary(), "splits": splits.summary(), "seed": cfg.trainer.seed}
    # Which images (content hash + path) and patients each split holds travels in the model
    # file, so evaluate/calibrate/explain never test on an image the model saw (data.splits).
    record = build_record({name: splits.by_name(name) for name in ("train", "val", "test")}, index.root)
    model, spec = build_run_model(cfg, index.class_names, {**summary, RECORD_KEY: record})
    atomic.write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic.write_json(run_dir / "splits.json", splits_record(splits))
    return index, splits, model, spec, summary


def _log_version(run_dir: Path, resume: bool) -> str:
    # Lightning's CSV logger deletes an existing metrics.csv: a resumed run logs beside it.
    if not resume:
        return ""
    return f"resume{len(list((run_dir / 'logs').glob('resume*'))) + 1}"


def on_cuda(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` trains on a CUDA GPU here (the accelerator asks for one, or 'auto' finds one)."""
    return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")


def resolve_execution(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its 'auto' execution settings made concrete for this machine.

    - ``trainer.precision``: bf16-mixed on a CUDA GPU with bf16 (no loss scaler: fp16's scaler
      reads an overflow flag back to the host every step), 16-mixed on other CUDA GPUs,
      32-true on CPU.
    - ``data.loader``: ``device`` on a CUDA GPU (``training.device_data``), ``workers`` on CPU.

    The result is what ``RUN/config.yaml`` records, so a run says how it was executed. Called
    once per run (``fit``); :func:`train_loop` takes the resolved config.
    """
    cuda = on_cuda(cfg)
    precision, loader = cfg.trainer.precision, cfg.data.loader
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if cuda else "32-true"
    if loader == "auto":
        loader = "device" if cuda else "workers"
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"precision": precision}),
                                  "data": cfg.data.model_copy(update={"loader": loader})})


def _trainer(cfg: TrainConfig, run_dir: Path, callbacks: list[L.Callback], resume: bool = False) -> L.Trainer:
    t = cfg.trainer
    if t.precision == "auto":
        raise ValueError("trainer.precision is 'auto': pass the config through resolve_execution first")
    version = _log_version(run_dir, resume)
    return L.Trainer(
        # cuDNN picks the fastest kernels for the fixed input shape (GPU only; not with deterministic).
        benchmark=on_cuda(cfg) and not t.deterministic,
        max_epochs=cfg.optim.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=[CSVLogger(run_dir, name="logs", version=version), TensorBoardLogger(run_dir, name="logs", version=f"tb{version}")],
        default_root_dir=run_dir,
        # On a GPU an epoch can take about as long as writing last.ckpt: write it from a thread
        # (Lightning clones the tensors first; the write is still temp file + rename).
        plugins=[AsyncCheckpointIO(AtomicCheckpointIO()) if on_cuda(cfg) else AtomicCheckpointIO()],
        use_distributed_sampler=False,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress,
        enable_model_summary=t.progress,
        limit_train_batches=t.limit_train_batches,
        num_sanity_val_steps=0,
    )


def _quiet_lightning() -> None:
    # Lightning logs tips and device banners at INFO through its own handlers; keep the
    # console for our messages and the progress bar.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # A frozen backbone stays in eval mode on purpose (its BatchNorm statistics must not move).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def _image_source(cfg: TrainConfig, model: PlaneClassifier, spec: ModelSpec, splits: Splits,
                  n: int) -> tuple[PlaneModule, L.LightningDataModule]:
    if cfg.data.loader == "device":
        from fetalplanes.training.device_data import DeviceDataModule

        dm: PlaneDataModule | DeviceDataModule = DeviceDataModule(cfg, spec.preprocessing, splits.train, splits.val, n)
    else:
        dm = PlaneDataModule(cfg, spec.preprocessing, splits.train, splits.val, n)
    dm.prepare()
    weights = class_weights([s.label for s in dm.train_ds.samples], n).tolist() if cfg.data.balance == "loss" else None
    return PlaneModule(cfg, spec, model, weights), dm


def _feature_source(cfg: TrainConfig, model: PlaneClassifier, spec: ModelSpec, index: Any, splits: Splits, n: int,
                    cache_dir: Path) -> tuple[PlaneModule, L.LightningDataModule, dict[str, Any]]:
    from fetalplanes.training.feature_cache import feature_data

    if cfg.data.augment > 0:
        log.warning("frozen fast path: data.augment=%s is not applied to cached features", cfg.data.augment)
    weights = class_weights([s.label for s in splits.train], n).tolist() if cfg.data.balance == "loss" else None
    # The model (and its random head init) was built right after seeding, as on the image path;
    # its frozen backbone then computes the features that are not cached yet.
    module = PlaneModule(cfg, spec, model, weights, inputs="features")
    gpu = on_cuda(cfg)
    every = sorted(index.samples, key=lambda s: str(s.path))  # one cache entry serves every split and seed
    dm, info = feature_data(module.model, spec.preprocessing, every, splits.train, splits.val, cfg, n, cache_dir,
                            "cuda" if gpu else "cpu")
    module.record = {"feature_cache": info}
    return module, dm, info


def train_loop(cfg: TrainConfig, run_dir: Path, module: PlaneModule, dm: L.LightningDataModule,
               resume: bool = False, extra_callbacks: Sequence[L.Callback] = ()) -> tuple[L.Trainer, dict[str, Any]]:
    """Run Lightning over ``module`` and ``dm`` (images or cached features) into ``run_dir``:
    best.ckpt on validation macro-F1, last.ckpt every epoch, early stopping, CSV/TensorBoard logs.
    ``extra_callbacks`` (e.g. a benchmark's timers) run after the loop's own.

    Returns the trainer and the run's numbers (epochs run, best validation macro-F1, training
    images per second, wall seconds, parameter counts).
    """
    ckpt_dir = run_dir / "checkpoints"
    ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=VAL_METRIC, mode="max",
                              enable_version_counter=False)
    # A second, unmonitored checkpoint written after EVERY epoch: Lightning 2.6's save_last only
    # refreshes last.ckpt when a new best was saved, which would make --resume lose epochs.
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    throughput = Throughput()
    callbacks = [
        ckpt_cb,
        last_cb,
        EarlyStopping(monitor=VAL_METRIC, mode="max", patience=cfg.trainer.patience),
        LearningRateMonitor(logging_interval="epoch"),
        BatchSeed(cfg.trainer.seed),
        throughput,
        *extra_callbacks,
    ]
    trainer = _trainer(cfg, run_dir, callbacks, resume)
    counts = module.model.param_counts()
    log.info("model %s: %d parameters, %d trainable", cfg.name, counts["total"], counts["trainable"])
    tuning = contextlib.nullcontext()
    if module.inputs == "features" and isinstance(trainer.accelerator, CPUAccelerator):
        from fetalplanes.training.feature_cache import cpu_tuning

        tuning = cpu_tuning(pooled=getattr(dm, "pooled", False))
    t0 = time.perf_counter()
    with tuning:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_dir / "last.ckpt") if resume else None)
    score = ckpt_cb.best_model_score
    return trainer, {
        "name": cfg.name,
        "epochs_run": trainer.current_epoch,
        "best_val_f1_macro": float(score) if score is not None else None,
        "train_img_per_s": throughput.img_per_s,
        "wall_s": time.perf_counter() - t0,
        "params": counts,
    }


def check_resumable(last: Path, cfg: TrainConfig) -> None:
    """Raise UsageError when ``cfg`` builds another model than the one ``last`` (a run's
    last.ckpt) was trained as, naming the differing fields and the run's values.

    The run's side is its checkpoint's spec, migrated (``core.spec``): a run started before a
    default changed (e.g. CBAM's spatial_norm, spec format 1.3) reads with its old value, while
    a config read now gets the new default. Without this check the weights fail to load deep in
    Lightning (a BatchNorm missing), or, for an option without weights (the padding), the run
    silently continues with other maths. ``pretrained`` may differ: the weights come from ``last``.
    """
    from fetalplanes.models.checkpoint import read_spec

    had = {k: v for k, v in read_spec(last).architecture.items() if k != "pretrained"}
    now = {k: v for k, v in cfg.model.model_dump(mode="json").items() if k != "pretrained"}
    diff = sorted(k for k in set(had) | set(now) if had.get(k) != now.get(k))
    if diff:
        parts = "; ".join(f"model.{k}: the run has {had.get(k)!r}, the config gives {now.get(k)!r}" for k in diff)
        raise UsageError(f"--resume: {last} was trained as another model ({parts}); resume with the run's "
                         "settings, or start a new run in another --out")


def fit(data: str | Path, cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
        feature_cache: str | Path | None = None, extra_callbacks: Sequence[L.Callback] = ()) -> FitResult:
    """Train ``cfg`` on the dataset at ``data``; writes the run into ``out_dir``.

    ``feature_cache``: a folder for cached backbone features. With it (and ``model.finetune:
    frozen``) the same loop trains on cached features instead of images: the frozen fast path
    (``training.feature_cache``). Calibration is a separate step (``fetalplanes.workflow``).
    """
    _quiet_lightning()
    run_dir = Path(out_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no {last} to resume from")
    if resume:
        check_resumable(last, cfg)
    if not resume and last.exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    if feature_cache is not None and cfg.model.finetune != "frozen":
        raise UsageError(f"the feature-cache fast path needs model.finetune 'frozen', got {cfg.model.finetune!r}")
    cfg = resolve_execution(cfg)
    index, splits, model, spec, summary = prepare_run(data, cfg, run_dir)
    n = len(index.class_names)
    extra: dict[str, Any] = {}
    if feature_cache is None:
        module, dm = _image_source(cfg, model, spec, splits, n)
        val_samples = list(dm.val_ds.samples)
    else:
        module, dm, extra["feature_cache"] = _feature_source(cfg, model, spec, index, splits, n, Path(feature_cache))
        val_samples = list(splits.val)
    trainer, result = train_loop(cfg, run_dir, module, dm, resume, extra_callbacks)
    extra["execution"] = {"precision": cfg.trainer.precision, "loader": cfg.data.loader if feature_cache is None
                          else "feature_cache", "device": str(module.device), "batch_size": cfg.optim.batch_size}
    result = {**result, **extra, **summary}
    if trainer.is_global_zero:
        atomic.write_json(run_dir / "train_summary.json", result)
        log.info("best checkpoint %s (val macro-F1 %s)", run_dir / "checkpoints" / "best.ckpt", result["best_val_f1_macro"])
    return FitResult(run_dir, run_dir / "checkpoints" / "best.ckpt", last, result, val_samples, trainer.is_global_zero)


def fit_frozen(data: str | Path, cfg: TrainConfig, out_dir: str | Path, cache_dir: str | Path | None = None,
               resume: bool = False) -> FitResult:
    """``fit`` on cached backbone features (``model.finetune: frozen`` only, else ValueError).
    ``cache_dir`` defaults to ``OUT_DIR/../feature_cache``, so the runs of a grid share one cache."""
    cache = Path(cache_dir) if cache_dir is not None else Path(out_dir).parent / "feature_cache"
    return fit(data, cfg, out_dir, resume, feature_cache=cache)


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "train_summary.json").read_text())
