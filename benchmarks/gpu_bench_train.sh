#!/usr/bin/env bash
# Issue 12 on a CUDA GPU, in ONE device call of under 8 minutes (docs/reproduce.md, "Training at
# the GPU's pace"): installs the carried wheels, builds a synthetic FETAL_PLANES_DB-format set at
# the real training split's size in 14 parallel processes (8,400 images at 512x384: ~6,070
# training + ~1,070 validation images for the official split, like the real archive's 6,060 +
# 1,070), then runs benchmarks/bench_train.py: compute-only step vs `fit` end to end (workers and
# device loaders at batch 32, device loader at batch 256), GPU busy %, every variant's step rate,
# the K-process probe for `reproduce --jobs K`, calibration + evaluation cost, and the projected
# planes table. Prints the table; JSON + log go to $OUT (default /tmp/gpu_out).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv,noheader
python3 -c "import torch, timm, lightning, pydantic; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__, 'pydantic', pydantic.__version__, 'bf16', torch.cuda.is_bf16_supported())" || exit 4
WORKERS=$(( $(nproc) - 2 ))
timeout "${BENCH_TIMEOUT:-450}" python3 benchmarks/bench_train.py --out "$OUT/bench_train.json" --work /tmp/bench_train \
  --config "${CONFIG:-paper_v2b0}" --per-class "${PER_CLASS:-1400}" --sets 14 --synth-size 512x384 \
  --batches 32,256 --loaders workers,device --large-loaders device --workers "$WORKERS" --epochs 3 \
  --steps 20 --warmup 5 --project-variants --jobs-probe 1,3 --eval 2>&1 | tee "$OUT/bench_train.log"
rc=${PIPESTATUS[0]}
for run in /tmp/bench_train/run_*; do cp "$run/train_summary.json" "$OUT/$(basename "$run").json" 2>/dev/null; done
exit "$rc"
