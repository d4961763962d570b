#!/usr/bin/env bash
# GPU check (run from the repo root on a CUDA machine): the AMP training path end to end on a
# synthetic set, then compute throughput of the presets for the GPU-time estimate.
# Results go to $OUT (default /tmp/gpu_out).
set -euo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="src:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
python3 -m fetalplanes.cli synth /tmp/syn --per-class 50 --seed 0
t0=$(date +%s)
python3 -m fetalplanes.cli train --data /tmp/syn --config demo --out /tmp/run_gpu --accelerator gpu \
  --image-size 224 --workers 8 --no-progress
echo "train wall s: $(( $(date +%s) - t0 ))"
python3 -m fetalplanes.cli evaluate --checkpoint /tmp/run_gpu/checkpoints/best.ckpt --data /tmp/syn --out "$OUT/eval_gpu" --n-boot 200
cp /tmp/run_gpu/train_summary.json "$OUT/"
python3 benchmarks/gpu_throughput.py --out "$OUT/gpu_throughput.json"
