"""Occlusion sensitivity: the model-agnostic cross-check of the gradient-based maps.

Slide a square patch over the model input, fill it with a constant, and record how much the
explained class's probability drops (captum's ``Occlusion``; ``explain.attribution``). It
needs no gradients and no target layer, so agreement with a CAM is evidence that the CAM is
not an artefact of one layer's gradients. ``fetalplanes explain --occlusion N`` draws it for
the first N images beside the chosen method; ``--method occlusion`` makes it THE map. Both
go through the one input-attribution heat-map rule (``explain.attribution.heat_map``).
"""

from __future__ import annotations

import torch
from PIL import Image

from fetalplanes.core.postprocess import softmax, top1
from fetalplanes.core.preprocess import preprocess
from fetalplanes.explain.attribution import FILLS, heat_map, occlusion_attribution, occlusion_geometry
from fetalplanes.explain.cam import build_result, resolve_target
from fetalplanes.explain.result import CamResult

__all__ = ["FILLS", "compute_occlusion"]


def compute_occlusion(
    model: torch.nn.Module,
    spec,
    image: Image.Image,
    target: str | int | None = None,
    patch: int | None = None,
    stride: int | None = None,
    fill: str | float = "mean",
    batch_size: int = 32,
) -> CamResult:
    """Occlusion map for one image as a CamResult (method 'occlusion'), at the image's size.

    Defaults: patch = 1/8 of the input side (at least 4 px), stride = half a patch; ``fill``
    'mean' (the image's mean grey), 'black' (zero echo) or a number in model units. Raises
    UsageError for a patch larger than the input, a stride <= 0 or an unknown fill.
    """
    patch, stride = occlusion_geometry(spec.preprocessing.image_size, patch, stride)
    x = torch.from_numpy(preprocess(image, spec.preprocessing))[None]
    was_training = model.training
    model.eval()
    try:
        x = x.to(next(model.parameters()).device)
        with torch.inference_mode():
            logits = model(x).float().cpu().numpy()
        idx = resolve_target(target, spec.class_names, int(top1(logits[0])[0]))
        with torch.inference_mode(False):
            sens = occlusion_attribution(model, x.clone(), idx, spec, patch, stride, fill, batch_size)
    finally:
        model.train(was_training)
    probs = softmax(logits, spec.temperature)[0]
    return build_result(heat_map(sens), image, spec, probs, idx, "occlusion", {"patch": patch, "stride": stride, "fill": fill})
