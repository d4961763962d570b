"""Grad-CAM family heat maps for any registry model, via pytorch-grad-cam.

The target layer is whatever the model declares as ``cam_layer`` (for ``PlaneClassifier``
the attention block's output, i.e. the refined last feature map), so no architecture is
special-cased here. The input goes through THE preprocessing (``core.preprocess``) and the
map is resized back to the original image size, undoing the 'squash' resize.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from fetalplanes.core.errors import UsageError
from fetalplanes.core.postprocess import softmax, top1
from fetalplanes.core.preprocess import preprocess
from fetalplanes.explain.result import CamResult
from fetalplanes.core.cam_methods import CAM_METHOD_NAMES, HeatMapSettings, check_method, method_family

# AblationCAM is left out on purpose: it swaps the target layer inside the model (unsafe when
# the web service shares one model between requests) and shares one ablation layer globally.
METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "gradcam-elementwise": GradCAMElementWise,
    "scorecam": ScoreCAM,
    "random": RandomCAM,
}

# pytorch-grad-cam keeps per-call state (hooks, activation lists) on the model's modules, so
# two concurrent explanations of one model would mix their activations.
_LOCK = threading.RLock()


def get_method(name: str) -> type:
    """The pytorch-grad-cam class for ``name``; UsageError (a ValueError) listing the valid names.

    An attribution method's name (``core.cam_methods``) is refused here: it has no CAM class
    (``explain.attribution.compute_attribution`` draws it; ``explain.maps.compute_map`` picks).
    """
    if method_family(name) != "cam":
        raise UsageError(f"{name!r} is an input attribution, not a CAM method; CAM methods: {sorted(CAM_METHOD_NAMES)}")
    return METHODS[check_method(name)]


def cam_target_layer(model: torch.nn.Module, layer: str | torch.nn.Module | None = None) -> torch.nn.Module:
    """The module whose output the CAM explains.

    ``layer``: None or 'cam_layer' -> the layer the model declares (``model.cam_layer``);
    'stage:N' -> the N-th backbone stage (``models.backbones.backbone_stages``, N may be
    negative), a generic way to look one stage earlier at a finer map; any other string ->
    a dotted sub-module name (``model.get_submodule``); a module -> itself.
    """
    if isinstance(layer, torch.nn.Module):
        return layer
    if layer is None or layer == "cam_layer":
        found = getattr(model, "cam_layer", None)
        if not isinstance(found, torch.nn.Module):
            raise UsageError(
                f"{type(model).__name__} declares no CAM target layer; expected a `cam_layer` module "
                "attribute (every fetalplanes registry model has one) or an explicit layer name"
            )
        return found
    if layer.startswith("stage:"):
        return _stage(model, layer)
    try:
        return model.get_submodule(layer)
    except AttributeError:
        top = [name for name, _ in model.named_children()]
        raise UsageError(
            f"unknown CAM layer {layer!r}; use 'cam_layer', 'stage:N' or a dotted module name under {top}"
        ) from None


def cam_target_layers(model: torch.nn.Module, layer: str | torch.nn.Module | Sequence | None = None) -> list[torch.nn.Module]:
    """One or more CAM layers: a comma-separated string or a sequence of names/modules.

    pytorch-grad-cam scales each layer's map to [0, 1] and averages them (multi-scale CAM).
    """
    if isinstance(layer, str) and "," in layer:
        layer = [part.strip() for part in layer.split(",") if part.strip()]
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ValueError("empty CAM layer list")
        return [cam_target_layer(model, part) for part in layer]
    return [cam_target_layer(model, layer)]


def _layer_label(layer: str | torch.nn.Module | Sequence | None) -> str:
    if layer is None:
        return "cam_layer"
    if isinstance(layer, str):
        return layer
    if isinstance(layer, torch.nn.Module):
        return type(layer).__name__
    return ",".join(_layer_label(part) for part in layer)


def _stage(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    from fetalplanes.models.backbones import backbone_stages

    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise UsageError(f"CAM layer {layer!r} needs a model with a `backbone`")
    stages = backbone_stages(backbone)
    try:
        stage = stages[int(layer.split(":", 1)[1])]
    except (ValueError, IndexError):
        raise UsageError(f"CAM layer {layer!r}: expected 'stage:N' with N in [-{len(stages)}, {len(stages) - 1}]") from None
    # Stem and tail stages are ModuleLists (never called themselves): their last module is.
    return stage[-1] if isinstance(stage, torch.nn.ModuleList) else stage


def resolve_target(target: str | int | None, class_names: tuple[str, ...] | list[str], predicted: int) -> int:
    """Class index to explain: None/'predicted' -> the top-1 class, a name or an index."""
    if target is None or (isinstance(target, str) and target.lower() == "predicted"):
        return int(predicted)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= int(target) < len(class_names):
            return int(target)
    elif isinstance(target, str):
        if target in class_names:
            return list(class_names).index(target)
        if target.isdigit() and int(target) < len(class_names):
            return int(target)
    raise UsageError(f"unknown CAM target {target!r}; choose 'predicted' or one of {list(class_names)}")


@contextmanager
def _grad_at(layers: Sequence[torch.nn.Module]) -> Iterator[set[int]]:
    """Make the layer's output differentiable even when nothing upstream trains.

    With a frozen backbone and no attention parameters the target layer's output has no
    autograd graph, so CAM libraries get no gradient there. Grad-CAM only needs d(score)/d(A),
    so re-rooting A as a leaf that requires grad is exact, touches no parameter, and spares a
    backward pass through the frozen backbone. Yields the ids of the layers that ran.
    """
    calls: set[int] = set()

    def hook(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        calls.add(id(module))
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            return output.detach().requires_grad_(True)
        return None

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def to_original_size(cam: np.ndarray, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """(S, S) map -> float32 (H, W) for a PIL ``size`` (W, H), inverting the input resize."""
    if resize != "squash":
        raise ValueError(f"cannot map a CAM back through preprocessing.resize {resize!r}; supported: ['squash']")
    img = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def compute_cam(
    model: torch.nn.Module,
    spec,
    image: Image.Image,
    method: str | None = None,
    target: str | int | None = None,
    *,
    layer: str | torch.nn.Module | Sequence | None = None,
    aug_smooth: bool | None = None,
) -> CamResult:
    """Explain one image: a CAM in [0, 1] at the image's own size plus the prediction.

    ``method``, ``layer``, ``aug_smooth``: None takes the checkpoint's ``explain`` settings
    (``core.cam_methods.HeatMapSettings.from_spec``; Grad-CAM at the declared ``cam_layer`` when it has none).
    ``target``: None / 'predicted' (top-1 class), a class name, or a class index.
    ``layer``: which feature map(s) to explain (see ``cam_target_layer``: 'cam_layer' is the
    model's declared layer; 'a,b' or a list averages several). ``aug_smooth``: average over
    pytorch-grad-cam's test-time augmentations (flip x 3 intensity scales, 6 passes). The
    model's train/eval mode is restored afterwards and its parameters are never modified.
    """
    defaults = HeatMapSettings.from_spec(spec)
    method = defaults.method if method is None else method
    layer = defaults.cam_layer if layer is None else layer
    aug_smooth = defaults.aug_smooth if aug_smooth is None else aug_smooth
    cam_cls = get_method(method)
    modules = cam_target_layers(model, layer)
    targets = None  # None: the library explains the arg-max class of its own forward pass
    if not (target is None or (isinstance(target, str) and target.lower() == "predicted")):
        targets = [ClassifierOutputTarget(resolve_target(target, spec.class_names, 0))]
    x = torch.from_numpy(preprocess(image, spec.preprocessing))[None]
    x = x.to(next(model.parameters()).device)
    was_training = model.training
    with _LOCK, torch.inference_mode(False), torch.enable_grad(), _grad_at(modules) as calls:
        logits = None
        if aug_smooth:  # augmented passes must neither give the prediction nor pick the target
            model.eval()
            with torch.no_grad():
                logits = model(x).float().cpu().numpy()
            targets = targets or [ClassifierOutputTarget(int(top1(logits[0])[0]))]
        # Not the library's `with` form: its __exit__ swallows IndexError and would leave us
        # without a result.
        cam = cam_cls(model=model, target_layers=modules)
        try:
            grayscale = cam(input_tensor=x, targets=targets, aug_smooth=aug_smooth)
            if logits is None:
                logits = cam.outputs.detach().float().cpu().numpy()
        except (IndexError, AttributeError, TypeError):
            if len(calls) == len({id(m) for m in modules}):
                raise
            raise ValueError(
                f"CAM layer {_layer_label(layer)!r} produced no activation: the forward pass does not use it"
            ) from None
        finally:
            cam.activations_and_grads.release()
            model.train(was_training)
    probs = softmax(logits, spec.temperature)[0]
    idx = resolve_target(target, spec.class_names, int(top1(logits[0])[0]))
    heat = np.nan_to_num(np.asarray(grayscale[0], dtype=np.float32), nan=0.0)
    extra = {"layer": _layer_label(layer), **({"aug_smooth": True} if aug_smooth else {})}
    return build_result(heat, image, spec, probs, idx, method.lower(), extra)


def build_result(heat: np.ndarray, image: Image.Image, spec, probs: np.ndarray, target_idx: int, method: str,
                 extra: dict) -> CamResult:
    """A model-input-size map in [0, 1] + calibrated probabilities -> CamResult at the image's size."""
    top = int(top1(probs)[0])
    return CamResult(
        cam=to_original_size(heat, image.size, spec.preprocessing.resize),
        probs=probs,
        label=spec.class_names[top],
        confidence=float(probs[top]),
        target=spec.class_names[target_idx],
        method=method,
        extra=extra,
    )
