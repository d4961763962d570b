"""The experiment grid of ``fetalplanes reproduce``: named variants as config rows.

A variant is a name plus dotted overrides applied to a base training config through
``training.config.load_config(base, overrides)``; no variant copies model or training code.
Groups (``paper``, ``ablations``, ``baselines``, ``all``) name sets of variants. Extra or
changed rows can come from a YAML file mapping ``name -> {overrides: {...}, group: ...}``.

The paper (Sivasubramanian et al. 2024, arXiv 2410.17396) pairs EfficientNet-B0 and
EfficientNetV2-B0 with an attention block and a 3-layer perceptron head; the baselines are
the dataset paper's best model (DenseNet-169, Burgos-Artizzu et al. 2020) and a mobile model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The base config every variant starts from (the paper's B0 model at 224 px, 30 epochs).
BASE_CONFIG = "paper_b0"

_B0 = {"model.backbone": "efficientnet_b0", "model.pretrained": "timm"}
_V2B0 = {"model.backbone": "tf_efficientnetv2_b0", "model.pretrained": "timm"}
_LITE0 = {"model.backbone": "tf_efficientnet_lite0", "model.pretrained": "lite0-pypi"}
_PAPER_HEAD = {"model.head_hidden": [512, 256], "model.dropout": 0.3, "model.finetune": "full"}
_LINEAR_HEAD = {"model.attention": "none", "model.head_hidden": [], "model.dropout": 0.2, "model.finetune": "full"}


@dataclass(frozen=True)
class Variant:
    """One row of the grid: overrides on top of the base config, and what it tests."""

    name: str
    overrides: dict[str, Any]
    group: str
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def frozen(self) -> bool:
        return self.overrides.get("model.finetune") == "frozen"


def _row(name: str, group: str, description: str, *parts: dict[str, Any]) -> Variant:
    overrides: dict[str, Any] = {}
    for part in parts:
        overrides.update(part)
    return Variant(name, overrides, group, description)


def default_variants() -> dict[str, Variant]:
    """The built-in rows (paper variants, ablations, baselines)."""
    rows = [
        _row("b0_cbam", "paper", "EfficientNet-B0 + CBAM + 3-layer MLP", _B0, _PAPER_HEAD, {"model.attention": "cbam"}),
        _row("b0_se", "paper", "EfficientNet-B0 + squeeze-excitation + 3-layer MLP", _B0, _PAPER_HEAD, {"model.attention": "se"}),
        _row("b0_mhsa", "paper", "EfficientNet-B0 + spatial self-attention + 3-layer MLP", _B0, _PAPER_HEAD,
             {"model.attention": "mhsa"}),
        _row("v2b0_cbam", "paper", "EfficientNetV2-B0 + CBAM + 3-layer MLP", _V2B0, _PAPER_HEAD, {"model.attention": "cbam"}),
        _row("v2b0_se", "paper", "EfficientNetV2-B0 + squeeze-excitation + 3-layer MLP", _V2B0, _PAPER_HEAD,
             {"model.attention": "se"}),
        _row("v2b0_mhsa", "paper", "EfficientNetV2-B0 + spatial self-attention + 3-layer MLP", _V2B0, _PAPER_HEAD,
             {"model.attention": "mhsa"}),
        _row("b0_noattn", "ablations", "B0 + 3-layer MLP, no attention", _B0, _PAPER_HEAD, {"model.attention": "none"}),
        _row("b0_linear", "ablations", "B0 + CBAM + linear head", _B0, _PAPER_HEAD,
             {"model.attention": "cbam", "model.head_hidden": [], "model.dropout": 0.2}),
        _row("b0_frozen", "ablations", "B0 frozen (features only) + CBAM + 3-layer MLP", _B0, _PAPER_HEAD,
             {"model.attention": "cbam", "model.finetune": "frozen"}),
        _row("lite0_cbam", "ablations", "EfficientNet-Lite0 (offline ImageNet weights) + CBAM + 3-layer MLP", _LITE0,
             _PAPER_HEAD, {"model.attention": "cbam"}),
        _row("lite0_frozen", "ablations", "Lite0 frozen (offline ImageNet weights) + CBAM + 3-layer MLP", _LITE0,
             _PAPER_HEAD, {"model.attention": "cbam", "model.finetune": "frozen"}),
        _row("densenet169", "baselines", "DenseNet-169 + linear head (dataset paper's best model)",
             {"model.backbone": "densenet169", "model.pretrained": "timm"}, _LINEAR_HEAD),
        _row("mobilenetv3", "baselines", "MobileNetV3-Large + linear head (mobile baseline)",
             {"model.backbone": "mobilenetv3_large_100", "model.pretrained": "timm"}, _LINEAR_HEAD),
    ]
    return {v.name: v for v in rows}


def load_variants(path: str | os.PathLike[str] | None = None) -> dict[str, Variant]:
    """Built-in rows, updated by a YAML file ``name: {overrides: {...}, group: ..., description: ...}``."""
    variants = default_variants()
    if path is None:
        return variants
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping 'name: {{overrides: {{...}}, group: ...}}'")
    for name, row in raw.items():
        if not isinstance(row, dict) or not isinstance(row.get("overrides", {}), dict):
            raise ValueError(f"{path}: variant {name!r} needs a mapping with an 'overrides' mapping")
        base = variants.get(name)
        overrides = {**(base.overrides if base else {}), **row.get("overrides", {})}
        group = str(row.get("group", base.group if base else "custom"))
        description = str(row.get("description", base.description if base else ""))
        variants[str(name)] = Variant(str(name), overrides, group, description)
    return variants


def groups(variants: dict[str, Variant]) -> dict[str, list[str]]:
    """Group name -> variant names (in table order); ``all`` holds every row."""
    out: dict[str, list[str]] = {}
    for v in variants.values():
        out.setdefault(v.group, []).append(v.name)
    out["all"] = list(variants)
    return out


def select_variants(spec: str, variants: dict[str, Variant] | None = None) -> list[Variant]:
    """``'paper'`` / ``'b0_cbam,densenet169'`` / ``'ablations,mobilenetv3'`` -> ordered, unique rows."""
    variants = variants if variants is not None else default_variants()
    by_group = groups(variants)
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        names = by_group.get(item) or ([item] if item in variants else None)
        if names is None:
            raise ValueError(
                f"--variants: unknown variant or group {item!r}; groups {sorted(by_group)}, variants {list(variants)}"
            )
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise ValueError("--variants: no variant selected")
    return [variants[n] for n in chosen]
