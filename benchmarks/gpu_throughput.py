"""Training / inference throughput of the model presets on a CUDA GPU (AMP, channels_last).

Used for the GPU-time estimate of a full FETAL_PLANES_DB run (docs/reproduce.md). Compute only:
random inputs at the preset's input size, so data loading is excluded.

Usage: python benchmarks/gpu_throughput.py [--out gpu_throughput.json] [--batch 64]
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PRESETS = ("paper_v2b0", "paper_b0", "paper_lite0", "baseline_b0_linear", "mobilenetv3", "densenet169")


def _time(fn, steps: int, warmup: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench(name: str, batch: int, size: int, steps: int) -> dict:
    import torch

    from fetalplanes.models import create_model

    model = create_model(name, 6, pretrained=False).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,), device="cuda")

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    t_train = _time(train_step, steps, 5)
    model.eval()

    @torch.inference_mode()
    def infer() -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            model(x)

    t_inf = _time(infer, steps, 5)
    return {"preset": name, "batch": batch, "image_size": size, "train_img_s": batch / t_train, "infer_img_s": batch / t_inf}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="gpu_throughput.json")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--train-images", type=int, default=6060, help="official train minus 15 % validation")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPU machines")
    torch.backends.cudnn.benchmark = True
    rows = [bench(n, args.batch, args.size, args.steps) for n in PRESETS]
    for r in rows:
        r["est_train_minutes_30ep"] = args.train_images * args.epochs / r["train_img_s"] / 60
    print(f"device: {torch.cuda.get_device_name()}  batch {args.batch}  {args.size}px  AMP fp16, channels_last")
    print("| preset | train img/s | inference img/s | compute-only minutes for 30 epochs |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['train_img_s']:.0f} | {r['infer_img_s']:.0f} | {r['est_train_minutes_30ep']:.1f} |")
    with open(args.out, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
