#!/usr/bin/env bash
# Every GPU check and benchmark in one device call (about 7 minutes on one H100 or H200):
#   run(command="bash bench/gpu_all.sh", carry=[".whl"], timeout_s=570)
# 1. tests/test_gpu.py: the captured step against the eager one, resume, NaN watch, fallbacks;
# 2. the plain-PyTorch floor (../shared/bench/step_floor.py, or a copy in .whl/) eager and as one graph;
# 3. the project's matrix (bench/throughput.py --matrix), each row as a ratio to the floor, same call,
#    and lin batch 50 over resnet50 and a ViT-S (timm's DINOv2) beside alex;
# 4. the full lin recipe with the feature cache (151,000 triplets x 10 epochs);
# 5. an embedding metric (DreamSim-style, ViT-B/16, LoRA) against a plain DreamSim-style Lightning loop.
# The device's python3 lacks jsonargparse, docstring-parser, typeshed-client and importlib-resources:
# their pure-Python wheels travel in .whl/ (see the device README). W&B is disabled.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src WANDB_MODE=disabled PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:src
fi
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
FLOOR=../shared/bench/step_floor.py
[ -f "$FLOOR" ] || FLOOR=.whl/step_floor.py
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)"

echo "== 1. GPU tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.txt" 2>&1; tail -25 "$OUT/tests.txt"

echo "== 2. floor"
timeout 60 python3 "$FLOOR" --nets alex vgg --batches 50 512 --modes eager-bf16 graph-bf16 2>&1 \
  | grep -v Warning | tee "$OUT/floor.txt"

echo "== 3. project matrix"
timeout 170 python3 bench/throughput.py --matrix 2>&1 | grep "triplets/s=" | tee "$OUT/matrix.txt"

echo "== 3b. other backbones (lin, batch 50, captured)"
timeout 100 python3 bench/throughput.py --variant lin --backbone alex torchvision:resnet50 timm:vit_small_patch14_dinov2 \
  --batch 50 --precision bf16-mixed --steps 60 --warmup 10 2>&1 | grep -E "triplets/s=|capture:" | tee "$OUT/backbones.txt"

echo "== 4. lin recipe"
timeout 60 python3 bench/throughput.py --lin-recipe 151000 --precision bf16-mixed 2>&1 | grep recipe \
  | tee "$OUT/recipe.txt"

echo "== 5. embedding metric vs a plain DreamSim-style loop (ViT-B/16, LoRA 16, batch 16, 224 px; ours bf16)"
timeout 150 python3 bench/embedding_throughput.py --device cuda --model vit_base_patch16_224.dino --img-size 224 \
  --depth 12 --source-size 256 --n 1024 --steps 30 --warmup 5 --workers 4 --precision bf16-mixed 2>&1 \
  | grep -E "triplets/s=|ratio|capture:" | tee "$OUT/embedding.txt"

echo "== ratios to the floor (same call)"
python3 - "$OUT/floor.txt" "$OUT/matrix.txt" <<'EOF'
import re, sys
floor = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\w+)\s+(\w+)\s+batch=\s*(\d+)\s+(\S+)\s+(\d+) triplets/s", line)
    if m:
        floor[(m[1], m[2], int(m[3]), m[4])] = float(m[5])
print("| run | triplets/s | / floor eager | / floor graph |")
print("|---|---|---|---|")
for line in open(sys.argv[2]):
    m = re.match(r"(\w+)-(\w+) batch=(\d+) .*capture=(\w+).*triplets/s=(\d+)", line)
    if not m:
        continue
    key = (m[2], m[1], int(m[3]))
    rate = float(m[5])
    eager, graph = floor.get(key + ("eager-bf16",)), floor.get(key + ("graph-bf16",))
    ratio = lambda f: f"{rate / f:.2f}" if f else "-"
    print(f"| {m[1]}-{m[2]} batch {m[3]} capture={m[4]} | {rate:,.0f} | {ratio(eager)} | {ratio(graph)} |")
EOF
