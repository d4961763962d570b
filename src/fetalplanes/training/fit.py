"""``fit``: data folder + config -> a trained, self-describing run directory.

RUN/ holds ``config.yaml`` (resolved), ``splits.json`` (which image is in which split),
``checkpoints/best.ckpt`` (best validation macro-F1) and ``last.ckpt``, ``logs/`` (CSV and
TensorBoard) and ``train_summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import fetalplanes
from fetalplanes.core import atomic
from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.sources import load_source
from fetalplanes.data.splits import Splits, make_splits
from fetalplanes.data.torch_data import class_weights
from fetalplanes.models.registry import build_model, default_preprocessing
from fetalplanes.training.callbacks import AtomicCheckpointIO, BatchSeed, Throughput
from fetalplanes.training.config import TrainConfig, dump_config
from fetalplanes.training.datamodule import PlaneDataModule
from fetalplanes.training.module import PlaneModule

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    summary: dict[str, Any]


def splits_record(splits: Splits) -> dict[str, Any]:
    return {
        **splits.summary(),
        **{name: sorted(s.path.name for s in splits.by_name(name)) for name in ("train", "val", "test")},
    }


def build_spec(cfg: TrainConfig, class_names: tuple[str, ...], data_summary: dict[str, Any]) -> ModelSpec:
    probe = build_model(cfg.model.model_copy(update={"pretrained": "none"}), len(class_names))
    pre = default_preprocessing(probe, cfg.data.image_size)
    return ModelSpec(
        name=cfg.name,
        task=cfg.data.task,
        class_names=class_names,
        architecture=cfg.model.model_dump(mode="json"),
        preprocessing=pre,
        version=fetalplanes.__version__,
        training=data_summary,
        # The explain section rides along so `fetalplanes explain` and the web page use the
        # heat-map settings chosen for this model (fetalplanes.explain.settings).
        explain=cfg.explain.model_dump(mode="json"),
    )


def prepare_run(data: str | Path, cfg: TrainConfig, run_dir: Path) -> tuple[Any, Splits, ModelSpec, dict[str, Any]]:
    """Seed, read the data, split it by patient, build the spec; write config.yaml and splits.json.

    Returns (index, splits, spec, summary of data + splits + seed for train_summary.json).
    """
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    index = load_source(data, cfg.data.task)
    splits = make_splits(index, cfg.data.split, cfg.data.val_fraction, cfg.trainer.seed, cfg.data.fold, cfg.data.n_folds)
    summary = {"data": index.summary(), "splits": splits.summary(), "seed": cfg.trainer.seed}
    spec = build_spec(cfg, index.class_names, summary)
    atomic.write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic.write_json(run_dir / "splits.json", splits_record(splits))
    return index, splits, spec, summary


def _log_version(run_dir: Path, resume: bool) -> str:
    # Lightning's CSV logger deletes an existing metrics.csv: a resumed run logs beside it.
    if not resume:
        return ""
    return f"resume{len(list((run_dir / 'logs').glob('resume*'))) + 1}"


def _trainer(cfg: TrainConfig, run_dir: Path, callbacks: list[L.Callback], resume: bool = False) -> L.Trainer:
    t = cfg.trainer
    version = _log_version(run_dir, resume)
    precision = t.precision
    if precision == "auto":
        precision = "16-mixed" if torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda") else "32-true"
    return L.Trainer(
        max_epochs=cfg.optim.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=[CSVLogger(run_dir, name="logs", version=version), TensorBoardLogger(run_dir, name="logs", version=f"tb{version}")],
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],
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


def fit(data: str | Path, cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> FitResult:
    """Train ``cfg`` on the dataset at ``data``; writes the run into ``out_dir``."""
    _quiet_lightning()
    run_dir = Path(out_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no {last} to resume from")
    if not resume and last.exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    index, splits, spec, summary = prepare_run(data, cfg, run_dir)

    n = len(index.class_names)
    dm = PlaneDataModule(cfg, spec.preprocessing, splits.train, splits.val, n)
    dm.prepare()
    weights = class_weights([s.label for s in dm.train_ds.samples], n).tolist() if cfg.data.balance == "loss" else None
    module = PlaneModule(cfg.model_dump(mode="json"), spec.to_dict(), weights)
    counts = module.model.param_counts()
    log.info("model %s: %d parameters, %d trainable", cfg.name, counts["total"], counts["trainable"])

    ckpt_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/f1_macro", mode="max", enable_version_counter=False
    )
    # A second, unmonitored checkpoint written after EVERY epoch: Lightning 2.6's save_last only
    # refreshes last.ckpt when a new best was saved, which would make --resume lose epochs.
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    throughput = Throughput()
    callbacks = [
        ckpt_cb,
        last_cb,
        EarlyStopping(monitor="val/f1_macro", mode="max", patience=cfg.trainer.patience),
        LearningRateMonitor(logging_interval="epoch"),
        BatchSeed(cfg.trainer.seed),
        throughput,
    ]
    trainer = _trainer(cfg, run_dir, callbacks, resume)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    result = {
        "name": cfg.name,
        "epochs_run": trainer.current_epoch,
        "best_val_f1_macro": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
        "train_img_per_s": throughput.img_per_s,
        "wall_s": time.perf_counter() - t0,
        "params": counts,
        **summary,
    }
    if trainer.is_global_zero:
        if cfg.trainer.calibrate and (ckpt_dir / "best.ckpt").is_file():
            from fetalplanes.evaluation.calibration import calibrate_checkpoint

            result["calibration"] = calibrate_checkpoint(ckpt_dir / "best.ckpt", dm.val_ds.samples, run_dir)
        atomic.write_json(run_dir / "train_summary.json", result)
        log.info("best checkpoint %s (val macro-F1 %s)", ckpt_cb.best_model_path, result["best_val_f1_macro"])
    return FitResult(run_dir, ckpt_dir / "best.ckpt", last, result)


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "train_summary.json").read_text())
