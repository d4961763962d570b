"""Which heat map points at the anatomy? Pointing game and energy share per (layer, method).

For every image of a dataset split that has a structure mask (the synthetic phantom set's
``Masks/``, or HC18's ``NNN_HC_Mask.png`` via --masks), each configuration's CAM is scored with
``fetalplanes.explain.localization`` and compared with the two model-free priors (uniform map:
mask area fraction; centred Gaussian) with 95 % bootstrap intervals (``explain.priors``: a
config "beats" a prior only when the intervals do not overlap). Uses
``compute_cam``/``compute_occlusion`` exactly as ``fetalplanes explain`` does, one image at a
time. Choose a model's default setting on ``--split val``, never on test.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_localization.py --checkpoint CKPT \\
        (--data DIR [--split test] | --inputs DIR --masks DIR) \\
        [--configs "cam_layer:gradcam;stage:-3,stage:-2:layercam+smooth;occlusion"] [--limit N] [--target CLASS] \\
        [--json benchmarks/results/bench_localization.json]
Configs are separated by ';'. A config is LAYER:METHOD (LAYER as in `fetalplanes explain
--layer`, e.g. a comma-separated list), optionally '+smooth' (--aug-smooth), or 'occlusion'.
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CONFIGS = "cam_layer:gradcam;cam_layer:eigencam;stage:-2:gradcam;stage:-2:eigencam;occlusion"


def parse_config(text: str) -> tuple[str | None, str, bool]:
    """'LAYER:METHOD[+smooth]' or 'occlusion' -> (layer, method, aug_smooth)."""
    if text == "occlusion":
        return None, "occlusion", False
    smooth = text.endswith("+smooth")
    layer, _, method = text.removesuffix("+smooth").rpartition(":")
    if not layer:
        raise SystemExit(f"bad config {text!r}: expected LAYER:METHOD[+smooth] or 'occlusion'")
    return layer, method, smooth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--inputs", nargs="*", default=[])
    ap.add_argument("--masks", nargs="*", default=[])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--target", default=None, help="'predicted' (default) or a class name, e.g. 'Fetal brain'")
    ap.add_argument("--json", default="benchmarks/results/bench_localization.json")
    args = ap.parse_args()

    from fetalplanes.core.io import load_image
    from fetalplanes.explain import compute_cam, compute_occlusion
    from fetalplanes.explain import localization as loc
    from fetalplanes.explain import priors
    from fetalplanes.explain.pipeline import gather_inputs, mask_for
    from fetalplanes.models.checkpoint import load_model

    model, spec = load_model(args.checkpoint)
    ins = gather_inputs(spec, args.inputs, args.data, args.split, args.masks)
    pairs = [(s, m) for s in ins.samples if (m := mask_for(s, ins)) is not None][: args.limit]
    if not pairs:
        raise SystemExit("no image has a mask: give --data with Masks/ or --masks DIR")
    images = [(load_image(s.path), s) for s, _ in pairs]
    masks = [loc.load_mask(m, im.size) for (im, _), (_, m) in zip(images, pairs)]
    truth = [ins.label_names[s.label] if ins.label_names and s.label >= 0 else None for _, s in images]
    rows = []
    for text in args.configs.split(";"):
        layer, method, smooth = parse_config(text.strip())
        scores, rows_p, correct, t0 = [], [], [], time.perf_counter()
        for (im, _), mask, true in zip(images, masks, truth):
            res = (compute_occlusion(model, spec, im, args.target) if method == "occlusion"
                   else compute_cam(model, spec, im, method, args.target, layer=layer, aug_smooth=smooth))
            scores.append(loc.score_one(res.cam, mask))
            rows_p.append(priors.score_row(res.cam, mask))
            correct.append(true is None or res.label == true)
        s = loc.summarize(scores)
        right = [sc for sc, ok in zip(scores, correct) if ok]
        rows.append({"config": text.strip(), "layer": layer, "method": method, **s, "priors": priors.compare(rows_p),
                     "hit_rate_correct_only": loc.summarize(right)["pointing_game"]["hit_rate"] if right else None,
                     "accuracy": sum(correct) / len(correct), "seconds_per_image": (time.perf_counter() - t0) / len(images)})
        print(f"  {text}: hit {s['pointing_game']['hit_rate']:.3f}", flush=True)
    print(f"\n{spec.name} ({args.checkpoint}), {len(images)} images with masks"
          f"{' from ' + args.data + ' split ' + args.split if args.data else ''}\n")
    print("| layer:method | pointing game [95 % CI] | energy in mask [95 % CI] | uniform (area) | centre prior hit [CI] "
          "| centre prior energy [CI] | beats both priors | s/img |")
    print("|---|---|---|---|---|---|---|---|")
    ci = lambda d: f"{d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"  # noqa: E731
    for r in rows:
        p = r["priors"]
        if not p.get("n"):
            print(f"| {r['config']} | no usable map | | | | | no | {r['seconds_per_image']:.2f} |")
            continue
        pg, en = p["pointing_game"], p["energy_share"]
        print(f"| {r['config']} | {ci(pg['model'])} | {ci(en['model'])} | {pg['uniform']['mean']:.3f} | "
              f"{ci(pg['centre'])} | {ci(en['centre'])} | {'yes' if p['beats_priors'] else 'NO'} | "
              f"{r['seconds_per_image']:.2f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "split": args.split,
                                           "target": args.target or "predicted",
                                           "inputs": args.inputs, "masks": args.masks, "n": len(images),
                                           "loadavg": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    print(f"\n-> {args.json}")


if __name__ == "__main__":
    main()
