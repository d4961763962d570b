"""Draw a CAM over its image: heat map, predicted plane, confidence, top-2 (PIL + numpy only).

The overlay keeps the image's own size and aspect so it can sit next to the original in a
report or a viewer. Colour strength follows the map (low evidence stays close to the plain
grey scan), so the anatomy under the hot region stays readable.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fetalplanes.core.encode import png_bytes
from fetalplanes.core.preprocess import to_gray
from fetalplanes.explain.result import CamResult

METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "eigencam": "Eigen-CAM",
    "eigengradcam": "EigenGrad-CAM",
    "gradcam-elementwise": "Grad-CAM (element-wise)",
    "scorecam": "Score-CAM",
    "random": "random CAM",
    "gradientshap": "GradientSHAP",
    "integratedgradients": "Integrated Gradients",
    "occlusion": "occlusion",
}


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colour map for values in [0, 1] -> float RGB, from pure blue to pure red.

    Uses jet's [0.125, 0.875] section so 1.0 is full red, not jet's dark maroon end.
    """
    v = 0.125 + 0.75 * np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue peaks
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def blend(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Grey scan + jet heat map; per-pixel opacity alpha * (0.25 + 0.75 * cam)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = np.asarray(to_gray(image), dtype=np.float32) / 255.0
    if gray.shape != np.shape(cam):
        raise ValueError(f"CAM shape {np.shape(cam)} does not match image size {image.size[::-1]} (H, W)")
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    a = (alpha * (0.25 + 0.75 * cam))[..., None]
    rgb = (1.0 - a) * gray[..., None] + a * jet(cam)
    return Image.fromarray(np.round(rgb * 255.0).astype(np.uint8), mode="RGB")


def caption_lines(result: CamResult, class_names: Sequence[str], k: int = 2) -> list[str]:
    """Text drawn on the overlay: prediction, runner-up(s), and what the map explains."""
    top = result.topk(class_names, k)
    lines = [f"{top[0][0]}  {top[0][1]:.1%}"]
    lines += [f"#{i + 2}: {name}  {p:.1%}" for i, (name, p) in enumerate(top[1:])]
    title = METHOD_TITLES.get(result.method, result.method)
    lines.append(f"{title} for: {result.target}")
    return lines


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def annotate_image(img: Image.Image, lines: Sequence[str]) -> Image.Image:
    """Caption box (top-left) and a low/high colour bar (bottom-right), drawn in place."""
    w, h = img.size
    size = int(np.clip(min(w, h) / 18, 9, 28))
    font = _font(size)
    draw = ImageDraw.Draw(img, "RGBA")
    pad, gap = max(2, size // 3), max(1, size // 5)
    widths = [draw.textbbox((0, 0), t, font=font)[2] for t in lines]
    box_w, box_h = max(widths) + 2 * pad, len(lines) * (size + gap) + 2 * pad
    draw.rectangle([0, 0, min(box_w, w - 1), min(box_h, h - 1)], fill=(0, 0, 0, 160))
    for i, text in enumerate(lines):
        colour = (255, 255, 255, 255) if i == 0 else (215, 215, 215, 255)
        draw.text((pad, pad + i * (size + gap)), text, font=font, fill=colour)
    _colour_bar(img, draw, font, size)
    return img


def _colour_bar(img: Image.Image, draw: ImageDraw.ImageDraw, font, size: int) -> None:
    w, h = img.size
    low_w = draw.textbbox((0, 0), "low", font=font)[2]
    high_w = draw.textbbox((0, 0), "high", font=font)[2]
    bar_w, bar_h, gap = max(20, w // 6), max(4, size // 2), max(3, size // 4)
    total_w = low_w + high_w + bar_w + 4 * gap
    if total_w * 2 > w or bar_h * 4 > h:
        return  # too small an image for a legend
    x0, y0 = w - total_w, h - size - 2 * gap
    draw.rectangle([x0, y0, w - 1, h - 1], fill=(0, 0, 0, 160))
    bar_x, bar_y = x0 + low_w + 2 * gap, y0 + gap + (size - bar_h) // 2
    ramp = (jet(np.linspace(0.0, 1.0, bar_w))[None].repeat(bar_h, axis=0) * 255).astype(np.uint8)
    img.paste(Image.fromarray(ramp, mode="RGB"), (bar_x, bar_y))
    draw.text((x0 + gap, y0 + gap), "low", font=font, fill=(230, 230, 230, 255))
    draw.text((bar_x + bar_w + gap, y0 + gap), "high", font=font, fill=(230, 230, 230, 255))


def overlay(image: Image.Image, result: CamResult, spec, alpha: float = 0.45, annotate: bool = True) -> Image.Image:
    """RGB overlay of ``result.cam`` on ``image``, same size as ``image``, optionally captioned."""
    img = blend(image, result.cam, alpha)
    if annotate:
        annotate_image(img, caption_lines(result, spec.class_names))
    return img


def overlay_png(image: Image.Image, result: CamResult, spec, **kw) -> bytes:
    """``overlay`` encoded as PNG bytes (for files and HTTP responses)."""
    return png_bytes(overlay(image, result, spec, **kw))
