#!/usr/bin/env bash
# Every GPU check and benchmark in one call (about 5 minutes on one H100), for the device tool:
#   run(command="bash bench/gpu_all.sh", carry=[".whl"], timeout_s=540)
# Prints the throughput matrix, the full lin recipe with the feature cache, and a bf16 vs fp32
# check; copies the logs to $OUT. The device's python3 lacks jsonargparse, docstring-parser,
# wandb, lpips and possibly torchvision: put their wheels in .whl/ (see the device README).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src WANDB_MODE=disabled PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:src
fi
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 bench/throughput.py --matrix 2>&1 | grep -v Warning | tee "$OUT/matrix.txt"
python3 bench/throughput.py --lin-recipe 151000 --precision bf16-mixed 2>&1 | grep recipe | tee "$OUT/recipe.txt"
python3 bench/throughput.py --variant lin --backbone alex --batch 50 --feature-cache on --steps 3200 --warmup 640 \
  --precision bf16-mixed 2>&1 | grep "triplets/s=" | tee -a "$OUT/recipe.txt"
