"""Does CBAM's spatial gate read the image, or only the position? Its variance across images.

For each checkpoint (a CBAM model), the spatial gate (B, 1, H, W) of every image of a split is
computed exactly as the model's forward pass does (``CBAM.channel_refined`` then
``CBAM.spatial_gate``) and summarized:

- ``across_images_var``: variance over images, averaged over the cells (what the image changes);
- ``position_var``: variance over the cells of the mean gate map (a fixed, image-independent
  pattern, e.g. the border pattern zero padding teaches a 7x7 kernel on a 4x4 map);
- ``position_share`` = position_var / (position_var + across_images_var);
- the mean gate on border cells and on inner cells.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_attention_gate.py --data runs/demo/data --split test \\
        --checkpoint runs/demo_zeros/checkpoints/best.ckpt --checkpoint runs/demo/run/checkpoints/best.ckpt \\
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
    from fetalplanes.explain.pipeline import gather_inputs
    from fetalplanes.models.attention import CBAM
    from fetalplanes.models.checkpoint import load_model

    model, spec = load_model(checkpoint)
    if not isinstance(model.attention, CBAM):
        raise SystemExit(f"{checkpoint}: attention is {type(model.attention).__name__}, not CBAM")
    samples = gather_inputs(spec, data=data, split=split).samples
    gates = []
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            x = torch.from_numpy(np.stack([preprocess(load_image(s.path), spec.preprocessing) for s in samples[i:i + 16]]))
            refined = model.attention.channel_refined(model.backbone.forward_features(x))
            gates.append(model.attention.spatial_gate(refined)[:, 0].numpy())
    g = np.concatenate(gates).astype(np.float64)  # (N, H, W)
    mean_map = g.mean(0)
    border = np.ones(mean_map.shape, bool)
    border[1:-1, 1:-1] = False
    across, position = float(g.var(0).mean()), float(mean_map.var())
    return {
        "checkpoint": checkpoint, "spatial_padding": model.attention.spatial_padding, "n_images": int(len(g)),
        "map_size": list(mean_map.shape), "across_images_var": across, "position_var": position,
        "position_share": position / (position + across) if position + across > 0 else None,
        "mean_gate_border": float(mean_map[border].mean()),
        "mean_gate_inner": float(mean_map[~border].mean()) if (~border).any() else None,
        "mean_gate_map": mean_map.round(3).tolist(),
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
    print("| checkpoint | padding | n | map | across-image var | position-only var | position share | border / inner mean |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        inner = "n/a" if r["mean_gate_inner"] is None else f"{r['mean_gate_inner']:.3f}"
        print(f"| {r['checkpoint']} | {r['spatial_padding']} | {r['n_images']} | {r['map_size'][0]}x{r['map_size'][1]} | "
              f"{r['across_images_var']:.5f} | {r['position_var']:.5f} | {r['position_share']:.3f} | "
              f"{r['mean_gate_border']:.3f} / {inner} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"data": args.data, "split": args.split, "rows": rows}, indent=2) + "\n")
    print(f"\n-> {args.json}")


if __name__ == "__main__":
    main()
