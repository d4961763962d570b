"""Does CBAM's spatial gate read the image, or only the position? Its variance across images.

For each checkpoint (a CBAM model), the spatial gate (B, 1, H, W) of every image of a split is
computed exactly as the model's forward pass does (``CBAM.channel_refined`` then
``CBAM.spatial_gate``) and summarized:

- ``across_images_var``: variance over images, averaged over the cells (what the image changes);
- ``position_var``: variance over the cells of the mean gate map (a fixed, image-independent
  pattern, e.g. the border pattern zero padding teaches a 7x7 kernel on a 4x4 map);
- ``position_share`` = position_var / (position_var + across_images_var);
- ``saturated_share``: the share of gate values outside [0.01, 0.99], where the sigmoid no
  longer discriminates (a gate at ~1 everywhere passes the features through untouched);
- the mean gate on border cells and on inner cells;
- ``gate_localization``: the gate itself read as a heat map (mapped back to each image like a
  CAM) against the structure masks, beside the uniform and centre priors
  (``explain.priors.compare``): a gate that reads the image should point at the anatomy.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_attention_gate.py --data runs/demo/data --split test \\
        --checkpoint runs/gate/zeros_none/checkpoints/best.ckpt --checkpoint runs/demo/run/checkpoints/best.ckpt \\
        [--json benchmarks/results/bench_attention_gate_demo.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gate_stats(checkpoint: str, data: str, split: str) -> dict:
    import numpy as np
    import torch

    from fetalplanes.core.io import load_image
    from fetalplanes.core.preprocess import preprocess
    from fetalplanes.explain import localization as loc
    from fetalplanes.explain import priors
    from fetalplanes.explain.cam import to_original_size
    from fetalplanes.explain.pipeline import gather_inputs, mask_for
    from fetalplanes.models.attention import CBAM
    from fetalplanes.models.checkpoint import load_model

    model, spec = load_model(checkpoint)
    if not isinstance(model.attention, CBAM):
        raise SystemExit(f"{checkpoint}: attention is {type(model.attention).__name__}, not CBAM")
    inputs = gather_inputs(spec, data=data, split=split)
    samples = inputs.samples
    gates, rows = [], []
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            images = [load_image(s.path) for s in samples[i:i + 16]]
            x = torch.from_numpy(np.stack([preprocess(im, spec.preprocessing) for im in images]))
            refined = model.attention.channel_refined(model.backbone.forward_features(x))
            batch = model.attention.spatial_gate(refined)[:, 0].numpy()
            gates.append(batch)
            for sample, image, gate in zip(samples[i:i + 16], images, batch):
                if (mask := mask_for(sample, inputs)) is not None:
                    cam = to_original_size(gate, image.size, spec.preprocessing.resize)
                    rows.append(priors.score_row(cam, loc.load_mask(mask, image.size)))
    g = np.concatenate(gates).astype(np.float64)  # (N, H, W)
    mean_map = g.mean(0)
    border = np.ones(mean_map.shape, bool)
    border[1:-1, 1:-1] = False
    across, position = float(g.var(0).mean()), float(mean_map.var())
    return {
        "checkpoint": checkpoint, "spatial_padding": model.attention.spatial_padding,
        "spatial_norm": model.attention.spatial_norm_kind, "n_images": int(len(g)),
        "map_size": list(mean_map.shape), "across_images_var": across, "position_var": position,
        "position_share": position / (position + across) if position + across > 0 else None,
        "saturated_share": float(((g < 0.01) | (g > 0.99)).mean()),
        "mean_gate_border": float(mean_map[border].mean()),
        "mean_gate_inner": float(mean_map[~border].mean()) if (~border).any() else None,
        "mean_gate_map": mean_map.round(3).tolist(),
        "gate_localization": priors.compare(rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", default="benchmarks/results/bench_attention_gate.json")
    args = ap.parse_args()
    rows = [gate_stats(c, args.data, args.split) for c in args.checkpoint]
    print(f"\nCBAM spatial gate on {args.data} split {args.split}\n")
    print("| checkpoint | padding | norm | n | map | across-image var | position-only var | position share "
          "| saturated | border / inner mean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        inner = "n/a" if r["mean_gate_inner"] is None else f"{r['mean_gate_inner']:.3f}"
        print(f"| {r['checkpoint']} | {r['spatial_padding']} | {r['spatial_norm']} | {r['n_images']} | "
              f"{r['map_size'][0]}x{r['map_size'][1]} | {r['across_images_var']:.5f} | {r['position_var']:.5f} | "
              f"{r['position_share']:.3f} | {r['saturated_share']:.3f} | "
              f"{r['mean_gate_border']:.3f} / {inner} |")
    from fetalplanes.explain import priors

    print("\nThe gate as a heat map against the structure masks (explain.priors):\n")
    for r in rows:
        print(f"- {r['checkpoint']}: " + "; ".join(priors.lines(r["gate_localization"])))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"data": args.data, "split": args.split, "rows": rows}, indent=2) + "\n")
    print(f"\n-> {args.json}")


if __name__ == "__main__":
    main()
