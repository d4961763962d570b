"""Which models ``fetalplanes bench`` measures, how each is built, and its static facts.

The paper model (a preset or a trained checkpoint) is benchmarked next to peers from the
literature in the same run: a plain EfficientNet-B0, DenseNet-169 (best model of the
FETAL_PLANES_DB paper), MobileNetV3-Large and a plain Lite0. Weights do not change speed,
so every preset is built with ``pretrained=False`` except the Lite0 rows, whose ImageNet
weights ship offline (the paper model is then exactly what a user would fine-tune).

Static facts per model (measured by ``models.cost``): parameters (total / trainable), FLOPs
of one image (conv and matmul only, 2 FLOPs per multiply-accumulate, counted by
``torch.utils.flop_counter``) and the size of the serialized torch weights.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fetalplanes.core.classes import PLANES
from fetalplanes.core.errors import UsageError
from fetalplanes.core.spec import ModelSpec
from fetalplanes.models import cost, create_model, default_preprocessing, list_presets

log = logging.getLogger(__name__)

# The paper's three backbone variants (arXiv 2410.17396): Lite0 is the deployable one.
PAPER_PRESETS: tuple[str, ...] = ("paper_lite0", "paper_v2b0", "paper_b0")
PEER_PRESETS: tuple[str, ...] = ("baseline_b0_linear", "densenet169", "mobilenetv3", "baseline_lite0_linear")
# Presets whose pretrained source works offline; the others are built with random weights.
OFFLINE_PRETRAINED: frozenset[str] = frozenset({"paper_lite0", "baseline_lite0_linear"})
PEER_NOTES: dict[str, str] = {
    "paper_lite0": "paper model: EfficientNet-Lite0 + CBAM + MLP",
    "paper_v2b0": "paper architecture: EfficientNetV2-B0 + CBAM + MLP",
    "paper_b0": "paper architecture: EfficientNet-B0 + CBAM + MLP",
    "baseline_b0_linear": "peer: plain EfficientNet-B0, linear head",
    "densenet169": "peer: DenseNet-169 (best model of the FETAL_PLANES_DB paper)",
    "mobilenetv3": "peer: MobileNetV3-Large, linear head",
    "baseline_lite0_linear": "peer: plain EfficientNet-Lite0, linear head",
}


@dataclass(frozen=True)
class BenchModel:
    """One model of the benchmark: a registry preset or a trained checkpoint."""

    name: str
    role: str  # "paper" (the headline model) | "paper-arch" | "peer"
    preset: str | None = None
    checkpoint: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchModel":
        return cls(**d)


def select_models(
    checkpoint: str | Path | None = None,
    preset: str = "paper_lite0",
    peers: bool = True,
    only: list[str] | None = None,
) -> list[BenchModel]:
    """The headline model first (checkpoint, else ``preset``), then paper variants and peers.

    ``only`` keeps just the named rows (names as in :data:`PEER_NOTES`, or ``checkpoint``).
    """
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: checkpoint file not found")
        head = BenchModel("checkpoint", "paper", checkpoint=str(checkpoint), note=f"trained checkpoint {Path(checkpoint).name}")
    else:
        if preset not in list_presets():
            raise UsageError(f"unknown --preset {preset!r}; choose one of {list_presets()}")
        head = BenchModel(preset, "paper", preset=preset, note=PEER_NOTES.get(preset, "preset"))
    rows = [head]
    if peers:
        for name in (*PAPER_PRESETS, *PEER_PRESETS):
            if name != head.name:
                role = "paper-arch" if name in PAPER_PRESETS else "peer"
                rows.append(BenchModel(name, role, preset=name, note=PEER_NOTES[name]))
    if only:
        known = [r.name for r in rows]
        unknown = [n for n in only if n not in known]
        if unknown:
            raise UsageError(f"unknown --models {unknown}; choose from {known}")
        rows = [r for r in rows if r.name in only]
    return rows


def build(bm: BenchModel, image_size: int | None = None):
    """(torch model in eval mode, ModelSpec) for a bench row.

    A checkpoint keeps its own spec (its image size unless ``image_size`` overrides it);
    a preset gets the 6-plane spec with the backbone's own normalization.
    """
    if bm.checkpoint:
        from fetalplanes.models.checkpoint import load_model

        model, spec = load_model(bm.checkpoint)
        if image_size and image_size != spec.preprocessing.image_size:
            spec = spec.replace(preprocessing=_resized(spec.preprocessing, image_size))
        return model.eval(), spec
    assert bm.preset is not None
    model = create_model(bm.preset, len(PLANES), pretrained=bm.preset in OFFLINE_PRETRAINED).eval()
    pre = default_preprocessing(model, image_size or 224)
    spec = ModelSpec(name=bm.preset, task="planes", class_names=tuple(PLANES), architecture=dict(model.config), preprocessing=pre)
    return model, spec


def _resized(pre, image_size: int):
    return replace(pre, image_size=int(image_size))


def model_facts(model, image_size: int) -> dict[str, Any]:
    """Parameters, FLOPs per image and weight-file size of one model (``models.cost``)."""
    flops = cost.flops_per_image(model, image_size)
    return {
        "params": cost.param_counts(model),
        "flops_per_image": flops,
        "gflops_per_image": round(flops / 1e9, 4),
        "torch_weights_bytes": cost.weights_bytes(model),
    }
