"""The pipeline that trains: train a model, then calibrate it. One sequence for ``fetalplanes
train``, the demo (``fetalplanes.demo``) and ``fetalplanes reproduce``.

Calibration (temperature scaling + abstain threshold, ``evaluation.calibration``) is its own
step after training, so ``training`` never imports ``evaluation``. This module sits above both:
the CLI, the demo and ``reproduce`` import it; nothing in the library below imports it.

After :func:`train_and_calibrate` the run folder holds what ``fit`` writes plus
``calibration.json``, ``reliability.png`` and ``ood.json`` (written by the one calibration entry,
``evaluation.calibration.calibrate_on_data``); the temperature, the abstain threshold and the
out-of-distribution gate (statistics of the training split's penultimate features, threshold at
95 % validation acceptance) are stored in ``checkpoints/best.ckpt`` and in
``train_summary.json``'s ``calibration`` and ``ood`` blocks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fetalplanes.core import atomic
from fetalplanes.evaluation.calibration import calibrate_on_data

if TYPE_CHECKING:
    from fetalplanes.training.config import TrainConfig
    from fetalplanes.training.fit import FitResult

log = logging.getLogger(__name__)


def train(data: str | Path, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, fast_path: bool = False,
          cache_dir: str | Path | None = None) -> FitResult:
    """``training.fit`` on images, or on cached backbone features when ``fast_path`` is set and
    the config freezes the backbone (``cache_dir`` defaults to ``OUT_DIR/../feature_cache``).
    Returns the ``FitResult``."""
    from fetalplanes.training.fit import fit, fit_frozen

    if fast_path and cfg.model.finetune == "frozen":
        return fit_frozen(data, cfg, out_dir, cache_dir, resume)
    return fit(data, cfg, out_dir, resume)


def calibrate(result: FitResult, data: str | Path, cfg: TrainConfig, *, report_test: bool = False,
              target_accuracy: float = 0.95) -> dict[str, Any]:
    """Calibrate ``result.best_checkpoint`` on the run's validation images through the one entry,
    ``evaluation.calibration.calibrate_on_data`` (the training run's own validation samples when
    it holds them, else the split re-derived from ``data``).

    Writes T, the abstain threshold and the OOD gate into the checkpoint, ``calibration.json``,
    ``reliability.png`` and ``ood.json`` into the run folder, and the ``calibration`` and ``ood``
    records into ``train_summary.json``. ``report_test`` adds the test split's ECE before/after
    (T is still fit on validation only). ``cfg`` is the run's config (kept for the pipeline's
    signature; calibration needs nothing from it).
    """
    cal = calibrate_on_data(result.best_checkpoint, data, result.run_dir, val_samples=result.val_samples,
                            report_test=report_test, target_accuracy=target_accuracy)
    result.summary["calibration"] = {k: v for k, v in cal.items() if k != "ood"}
    result.summary["ood"] = cal["ood"]
    atomic.write_json(Path(result.run_dir) / "train_summary.json", result.summary)
    return cal


def _finished(run_dir: Path) -> FitResult | None:
    """A FitResult for a run folder whose training already finished (train_summary.json), else None."""
    from fetalplanes.training.fit import FitResult

    summary = run_dir / "train_summary.json"
    if not summary.is_file():
        return None
    ckpts = run_dir / "checkpoints"
    return FitResult(run_dir, ckpts / "best.ckpt", ckpts / "last.ckpt", json.loads(summary.read_text()))


def train_and_calibrate(data: str | Path, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
                        fast_path: bool = False, cache_dir: str | Path | None = None, calibrate_after: bool | None = None,
                        report_test: bool = False, target_accuracy: float = 0.95, reuse_finished: bool = False) -> FitResult:
    """Train (:func:`train`), then calibrate the best checkpoint (:func:`calibrate`).

    ``calibrate_after``: None follows the config (``trainer.calibrate``, on by default).
    ``reuse_finished``: a run folder with ``train_summary.json`` is not trained again (only
    calibrated, if its summary has no calibration yet): ``reproduce``'s resume rule.
    On DDP ranks other than 0 nothing is calibrated. Returns the ``FitResult``.
    """
    run_dir = Path(out_dir)
    result = _finished(run_dir) if reuse_finished else None
    if result is not None and "calibration" in result.summary:
        log.info("%s: trained and calibrated already", run_dir)
        return result
    if result is None:
        result = train(data, cfg, run_dir, resume=resume, fast_path=fast_path, cache_dir=cache_dir)
    wanted = cfg.trainer.calibrate if calibrate_after is None else calibrate_after
    if not (wanted and result.is_global_zero):
        return result
    if not Path(result.best_checkpoint).is_file():
        log.warning("training finished without %s: not calibrated", result.best_checkpoint)
        return result
    calibrate(result, data, cfg, report_test=report_test, target_accuracy=target_accuracy)
    return result
