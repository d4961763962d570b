"""Input attributions via captum: GradientSHAP, Integrated Gradients and occlusion as heat maps.

The paper (arXiv 2410.17396) names SHAP beside Grad-CAM. These methods attribute the
explained class's score to the INPUT pixels, (N, 3, S, S), not to a feature map; to go
through the same overlays, localization scores, priors and sanity checks as the CAMs they
are reduced to one (S, S) map in [0, 1] by ONE rule, :func:`heat_map` (captum's own
``visualize_image_attr`` rule for ``sign='positive'``):

1. sum the attribution over the 3 colour channels (the model's input is grey repeated 3x:
   the channels are one pixel);
2. keep the positive part: evidence FOR the explained class, as a CAM's ReLU and the
   occlusion drop clipped at 0 do (negative evidence is not "where the model looks at the
   anatomy");
3. divide by the 98th percentile of the positive values (captum's ``outlier_perc=2``) and
   clip to [0, 1]: pixel attributions are heavy-tailed, so dividing by the single largest
   pixel would leave a black map with a few specks.

Per-method settings (bounded CPU cost, all documented in docs/explain.md):

- ``gradientshap``: ``N_SAMPLES`` = 16 gradient evaluations, input noise ``STDEV`` = 0.1
  (model units), baselines = two images that carry no structure: black (zero echo, as the
  occlusion 'black' fill) and the image's own mean grey; the random draws (baseline choice,
  interpolation point, noise) are seeded (``seed``, default 0), so a map repeats exactly;
- ``integratedgradients``: baseline black, ``N_STEPS`` = 16 Gauss-Legendre steps;
- ``occlusion``: a patch of 1/8 of the input side (at least 4 px), stride half a patch,
  filled with the image's mean grey; attribution = drop of the explained class's
  (temperature-calibrated) probability, averaged over the windows covering a pixel.

All three run the model in eval mode and restore its mode; parameters are never modified.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch
from PIL import Image

from fetalplanes.core.cam_methods import ATTRIBUTION_METHOD_NAMES, INPUT_LAYER, check_method
from fetalplanes.core.errors import UsageError
from fetalplanes.core.postprocess import softmax, top1
from fetalplanes.core.preprocess import preprocess
from fetalplanes.explain.cam import build_result, resolve_target
from fetalplanes.explain.result import CamResult

N_SAMPLES = 16
STDEV = 0.1
N_STEPS = 16
OUTLIER_PERC = 2.0
HEAT_MAP_RULE = (f"sum over channels, positive part, divided by the {100 - OUTLIER_PERC:g}th percentile of the "
                 "positive values, clipped to [0, 1] (captum visualize_image_attr, sign='positive')")
FILLS = ("mean", "black")

_LOCK = threading.RLock()  # one attribution of a shared model at a time (eval/train mode flips)


def heat_map(attribution: np.ndarray) -> np.ndarray:
    """(3, S, S) or (S, S) attribution -> float32 (S, S) in [0, 1] by the module's one rule.

    All-zero for an attribution with no positive value (no evidence for the class).
    """
    a = np.asarray(attribution, dtype=np.float64)
    a = a.sum(axis=0) if a.ndim == 3 else a
    a = np.nan_to_num(np.clip(a, 0.0, None), nan=0.0)
    positive = a[a > 0]
    if positive.size == 0:
        return np.zeros(a.shape, dtype=np.float32)
    scale = float(np.percentile(positive, 100.0 - OUTLIER_PERC))
    return np.clip(a / scale, 0.0, 1.0).astype(np.float32)


def fill_value(x: torch.Tensor, fill: str | float, spec) -> torch.Tensor:
    """A (3, 1, 1) constant image in model units: 'mean' (the image's own mean), 'black' (zero echo)."""
    if fill == "mean":  # removes structure without adding contrast
        return x.mean(dim=(1, 2), keepdim=True)
    if fill == "black":  # anechoic (no echo) in the model's normalized units
        mean = torch.tensor(spec.preprocessing.mean, dtype=x.dtype)[:, None, None]
        std = torch.tensor(spec.preprocessing.std, dtype=x.dtype)[:, None, None]
        return (0.0 - mean) / std
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full((x.shape[0], 1, 1), float(fill), dtype=x.dtype)
    raise UsageError(f"unknown occlusion fill {fill!r}; choose one of {list(FILLS)} or a number")


def _gradientshap(model, x: torch.Tensor, target: int, spec, seed: int) -> np.ndarray:
    from captum.attr import GradientShap

    baselines = torch.stack([fill_value(x[0], "black", spec).expand_as(x[0]),
                             fill_value(x[0], "mean", spec).expand_as(x[0])])
    # captum draws the noise from torch's global RNG and the baselines and interpolation points
    # from numpy's: both are seeded here and restored afterwards, so a map repeats exactly.
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            attr = GradientShap(model).attribute(x, baselines=baselines, target=target, n_samples=N_SAMPLES,
                                                 stdevs=STDEV)
    finally:
        np.random.set_state(state)
    return attr[0].detach().cpu().numpy()


def _integrated_gradients(model, x: torch.Tensor, target: int, spec, seed: int) -> np.ndarray:
    from captum.attr import IntegratedGradients

    baseline = fill_value(x[0], "black", spec).expand_as(x[0])[None]
    attr = IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=N_STEPS,
                                                internal_batch_size=N_STEPS)
    return attr[0].detach().cpu().numpy()


def occlusion_attribution(model, x: torch.Tensor, target: int, spec, patch: int, stride: int,
                          fill: str | float = "mean", batch_size: int = 32) -> np.ndarray:
    """Probability drop (S, S) of class ``target`` when a patch is filled, for one input (1, 3, S, S).

    captum's ``Occlusion`` over the calibrated probabilities: each pixel gets the mean drop of
    the windows that cover it. Positive = the patch held evidence for the class.
    """
    from captum.attr import Occlusion

    size = x.shape[-1]
    if not 0 < patch <= size or stride <= 0:
        raise UsageError(f"occlusion needs 0 < patch <= {size} and stride > 0, got patch={patch}, stride={stride}")

    def probs(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(batch).float() / float(spec.temperature or 1.0), dim=1)

    with torch.no_grad():
        attr = Occlusion(probs).attribute(
            x, sliding_window_shapes=(x.shape[1], patch, patch), strides=(x.shape[1], stride, stride),
            baselines=fill_value(x[0], fill, spec)[None], target=target, perturbations_per_eval=batch_size)
    # Pixels no window reaches (a stride that does not divide S - patch) have no value.
    return np.nan_to_num(attr[0, 0].detach().cpu().numpy(), nan=0.0)


def occlusion_geometry(size: int, patch: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """Default occlusion patch (1/8 of the input side, >= 4 px) and stride (half a patch)."""
    patch = patch or max(4, size // 8)
    return patch, stride or max(1, patch // 2)


def _occlusion(model, x: torch.Tensor, target: int, spec, seed: int) -> np.ndarray:
    patch, stride = occlusion_geometry(x.shape[-1])
    return occlusion_attribution(model, x, target, spec, patch, stride)


ATTRIBUTORS: dict[str, Callable[..., np.ndarray]] = {
    "gradientshap": _gradientshap,
    "integratedgradients": _integrated_gradients,
    "occlusion": _occlusion,
}
SETTINGS: dict[str, dict] = {
    "gradientshap": {"n_samples": N_SAMPLES, "stdevs": STDEV, "baselines": ["black", "image mean"]},
    "integratedgradients": {"n_steps": N_STEPS, "baseline": "black"},
    "occlusion": {"patch": "1/8 of the input side", "stride": "half a patch", "fill": "mean"},
}


def compute_attribution(model: torch.nn.Module, spec, image: Image.Image, method: str,
                        target: str | int | None = None, seed: int = 0) -> CamResult:
    """One image's input-attribution heat map (:func:`heat_map` rule) at the image's own size.

    ``method``: one of ``core.cam_methods.ATTRIBUTION_METHOD_NAMES``; ``target``: None /
    'predicted' (top-1), a class name or index; ``seed``: GradientSHAP's random draws.
    Raises UsageError for a CAM or unknown method name or target (listing the valid ones).
    """
    name = check_method(method)
    if name not in ATTRIBUTORS:
        raise UsageError(f"{method!r} is not an input attribution; choose one of {sorted(ATTRIBUTION_METHOD_NAMES)}")
    x = torch.from_numpy(preprocess(image, spec.preprocessing))[None].to(next(model.parameters()).device)
    with _LOCK, torch.inference_mode(False):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(x).float().cpu().numpy()
            idx = resolve_target(target, spec.class_names, int(top1(logits[0])[0]))
            with torch.enable_grad():
                attr = ATTRIBUTORS[name](model, x.clone(), idx, spec, seed)
        finally:
            model.train(was_training)
    probs = softmax(logits, spec.temperature)[0]
    extra = dict(SETTINGS[name])
    if name == "occlusion":
        extra.update(zip(("patch", "stride"), occlusion_geometry(x.shape[-1])))
    return build_result(heat_map(attr), image, spec, probs, idx, name, {"layer": INPUT_LAYER, **extra})
