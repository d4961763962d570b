"""Pieces of ``bench_train.py``: the compute-only step, concurrent-process throughput, epoch
timers, GPU-utilisation sampling and the projection of the planes table. Not a library module:
the benchmark's own helpers (the synthetic data: ``bench_train_data.py``)."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L

# Sizes of the real FETAL_PLANES_DB runs (docs/reproduce.md, "GPU time"): train, validation, test.
REAL_SPLITS = {"official": (6060, 1070, 5271), "image-8020": (8432, 1488, 2480)}
REAL_IMAGES = 12400
EPOCHS = 30  # every base preset's max_epochs; early stopping only shortens runs (upper bound)
SEEDS = 3


def _plane_names() -> tuple[str, ...]:
    from fetalplanes.core.classes import PLANES

    return tuple(PLANES)


PLANE_NAMES = _plane_names()


# ---------------------------------------------------------------- compute-only step

def _step_fn(cfg: Any, batch: int) -> tuple[Any, Any, int]:
    """A training step on random tensors with the CLI's settings; (step, sync, device)."""
    import torch

    from fetalplanes.training.fit import build_run_model, on_cuda
    from fetalplanes.training.module import PlaneModule
    from fetalplanes.training.optim import adamw, param_groups, use_fused

    device = torch.device("cuda" if on_cuda(cfg) else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.trainer.deterministic  # as fit's Trainer
    model, spec = build_run_model(cfg, PLANE_NAMES, {})
    module = PlaneModule(cfg, spec, model, [1.0] * len(PLANE_NAMES)).to(device).train()
    o = cfg.optim
    opt = adamw(param_groups(module.model, o.lr, o.weight_decay, o.backbone_lr_mult), o.lr,
                fused=use_fused("images", device))
    precision = cfg.trainer.precision
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    size = cfg.data.image_size
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, len(PLANE_NAMES), (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = module.criterion(module(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    def infer() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            module(x)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    return (step, infer), sync, device


def _timed(fn: Any, sync: Any, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def compute_only(cfg: Any, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    """Training and inference img/s of ``cfg``'s model on random tensors already on the device."""
    (step, infer), sync, device = _step_fn(cfg, batch)
    with UtilSampler() as util:
        t_step = _timed(step, sync, steps, warmup)
    t_inf = _timed(infer, sync, steps, warmup)
    return {"path": "compute_only", "batch": batch, "img_per_s": batch / t_step, "infer_img_per_s": batch / t_inf,
            "backbone": cfg.model.backbone, "attention": cfg.model.attention, "finetune": cfg.model.finetune,
            "device": str(device), "gpu_util": util.summary()}


def _child(cfg: Any, batch: int, warmup: int, seconds: float, barrier: Any, results: Any) -> None:
    (step, _), sync, _ = _step_fn(cfg, batch)
    _timed(step, sync, 1, warmup)
    barrier.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(5):
            step()
        sync()
        n += 5
    results.put(n * batch / (time.perf_counter() - t0))


def concurrent_compute(cfg: Any, batch: int, warmup: int, ks: list[int], seconds: float = 8.0) -> dict[str, Any]:
    """Summed compute-only img/s of K processes training at once on the device (``--jobs K``)."""
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {}
    for k in ks:
        barrier, results = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_child, args=(cfg, batch, warmup, seconds, barrier, results)) for _ in range(k)]
        for p in procs:
            p.start()
        rates = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        out[str(k)] = {"img_per_s_total": sum(rates), "per_process": rates}
    single = out.get("1", {}).get("img_per_s_total")
    for v in out.values():
        v["speedup"] = v["img_per_s_total"] / single if single else None
    return out


# ---------------------------------------------------------------- timers and utilisation

class EpochTimer(L.Callback):
    """Per epoch: training seconds, seconds the host waited for input (loader + transfer +
    device-side batch preparation as seen by the host), validation seconds, whole-epoch
    seconds (checkpoints included), images."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._cur: dict[str, float] | None = None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        import torch

        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _close(self, now: float) -> None:
        if self._cur is not None:
            self._cur["epoch_s"] = now - self._cur.pop("t0")
            self._cur.setdefault("train_s", self._cur["epoch_s"])
            self._cur.pop("last", None)
            self._cur.pop("v0", None)
            self.epochs.append(self._cur)
            self._cur = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self._now(pl_module)
        self._close(now)
        self._cur = {"t0": now, "last": now, "wait_s": 0.0, "images": 0, "val_s": 0.0, "val_images": 0}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._cur["wait_s"] += time.perf_counter() - self._cur["last"]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._cur["images"] += len(batch[1])
        self._cur["last"] = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cur is not None:
            now = self._now(pl_module)
            self._cur["train_s"] = now - self._cur["t0"]
            self._cur["v0"] = now

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._cur is not None:
            self._cur["val_images"] += len(batch[1])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cur is not None and "v0" in self._cur:
            self._cur["val_s"] = self._now(pl_module) - self._cur["v0"]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(self._now(pl_module))


class UtilSampler:
    """GPU busy % (NVML's utilization.gpu: share of time a kernel ran) sampled every 0.1 s in a
    thread, through pynvml or ``nvidia-smi``; an empty summary where neither is there (CPU)."""

    def __init__(self, period: float = 0.1) -> None:
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "UtilSampler":
        import torch

        if not torch.cuda.is_available():
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            read = lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu  # noqa: E731
        except Exception:  # no pynvml: fall back to nvidia-smi's loop
            read = None
        if read is None and shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                           f"-lms={int(self.period * 1000)}"], stdout=subprocess.PIPE, text=True)
            read = lambda: float(self._proc.stdout.readline().split(",")[0])  # noqa: E731
        if read is not None:
            self._thread = threading.Thread(target=self._loop, args=(read,), daemon=True)
            self._thread.start()
        return self

    def _loop(self, read: Any) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(float(read()))
            except Exception:
                return
            if self._proc is None:
                time.sleep(self.period)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {"median": statistics.median(self.samples), "max": max(self.samples), "n": len(self.samples)}


# ---------------------------------------------------------------- projection

def _variant_rows() -> list[tuple[str, bool]]:
    from fetalplanes.reproduce.variants import load_variants

    return [(name, v.frozen) for name, v in load_variants(None).items()]


def project_table(res: dict[str, Any]) -> dict[str, Any]:
    """Projected minutes of ``reproduce --variants all --seeds 3 --split official,image-8020
    --task planes`` from this benchmark's measurements (see ``how``)."""
    e2e = max(res["end_to_end"], key=lambda r: r["train_img_per_s"])
    compute = {r["batch"]: r for r in res["compute_only"]}
    ref = compute[e2e["batch"]]
    reach = e2e["train_img_per_s"] / ref["img_per_s"]
    val_rate = e2e["val_images"] / e2e["val_s"] if e2e["val_s"] > 0 else float("inf")
    n_meas = e2e["train_images"] + e2e["val_images"]
    ev = res.get("eval_cost")
    rows, total = _variant_rows(), 0.0
    per_run = []
    for name, frozen in rows:
        v = res.get("variants", {}).get(name)
        speed = v["img_per_s"] / ref["img_per_s"] if v else 1.0  # this model's step rate vs the measured one
        for split, (n_train, n_val, n_test) in REAL_SPLITS.items():
            epoch = n_train / (e2e["train_img_per_s"] * speed) + n_val / (val_rate * speed) + e2e["other_s"]
            setup = e2e["setup_s"] * (n_train + n_val) / n_meas  # decoding dominates: scaled by images
            evaluation = ev["seconds"] * (n_val + 2 * n_test) / (ev["n_val"] + 2 * ev["n_test"]) if ev else 0.0
            seconds = EPOCHS * epoch + setup + evaluation
            per_run.append({"variant": name, "split": split, "seconds": seconds, "frozen": frozen})
            total += SEEDS * seconds
    jobs = res.get("jobs_probe") or {}
    best = max(jobs.items(), key=lambda kv: kv[1]["speedup"] or 0, default=(None, None))
    how = (f"per run: {EPOCHS} epochs x (train images / ({e2e['train_img_per_s']:.0f} img/s measured end to end at batch "
           f"{e2e['batch']}, {e2e['loader']} loader, scaled by each variant's compute-only rate"
           f"{'' if res.get('variants') else ' [not measured: all variants at the measured rate]'}) + validation at the "
           f"measured rate + measured per-epoch checkpoint time) + setup scaled by images + "
           + ("calibration/evaluation scaled by images predicted" if ev else "evaluation NOT measured (--eval)")
           + f"; real split sizes {REAL_SPLITS}; frozen rows counted as image-path runs (upper bound: the feature "
           f"cache is faster); {EPOCHS} epochs is the maximum (early stopping shortens runs)"
           + (f"; --jobs K divides by the measured K-process compute-only speedup" if jobs else ""))
    out = {"runs": len(rows) * len(REAL_SPLITS) * SEEDS, "epochs": EPOCHS, "serial_minutes": total / 60,
           "reach_of_compute": reach, "per_run": per_run, "how": how}
    if best[0] is not None and best[1]["speedup"]:
        out.update({"best_jobs": int(best[0]), "best_jobs_minutes": total / 60 / best[1]["speedup"]})
    return out
