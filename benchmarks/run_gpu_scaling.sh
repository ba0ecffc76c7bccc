#!/usr/bin/env bash
# The scaling numbers of docs/results.md in one call (a few minutes; under 8 on a
# 16-core GPU host): the sharded sinusoid meta-step on 1, 2, 4 and 8 simulated
# CPU devices, the same meta-step on the GPU(s), and the sinusoid experiment
# itself (the binary, 3,000 meta-steps) on one GPU with its steps/s.
#
#   bash benchmarks/run_gpu_scaling.sh [OUT_DIR]      # default: benchmarks/results
#
# Needs JAX with CUDA in the interpreter $PYTHON (default .venv/bin/python, else
# python3): pip install -e . 'jax[cuda12]>=0.10.2,<0.11'. Without a GPU the CPU
# part runs and the GPU part is skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-benchmarks/results}
PYTHON=${PYTHON:-.venv/bin/python}
if [[ ! -x "$PYTHON" ]]; then
  PYTHON=$(command -v python3)
fi
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PYTHON" -c 'import jax; print("jax", jax.__version__, jax.devices())'

echo "== sharded meta-step on 1, 2, 4, 8 simulated CPU devices"
timeout 300 "$PYTHON" -m benchmarks.scaling --platform=cpu --devices=1,2,4,8 \
  --out="$OUT_DIR/scaling_cpu.json" | tee "$OUT_DIR/scaling_cpu.txt"

if ! "$PYTHON" -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")' 2>/dev/null; then
  echo "== no GPU visible to JAX: GPU measurements skipped"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt" || true

echo "== the same meta-step on the GPU(s)"
timeout 150 "$PYTHON" -m benchmarks.scaling --platform=gpu \
  --out="$OUT_DIR/scaling_gpu.json" | tee "$OUT_DIR/scaling_gpu.txt"

echo "== the sinusoid experiment (binary), 3,000 meta-steps on one GPU"
workdir=$(mktemp -d)
timeout 150 "$PYTHON" -m experiments.meta_train --config=experiments/configs/sinusoid.py \
  --workdir="$workdir" --config.num_devices=1 --config.num_steps=3000 --config.baseline=False \
  --config.eval_every=0 --config.checkpoint_every=0 --config.log_every=1000 \
  --config.num_eval_tasks=100 | tee "$OUT_DIR/train_gpu.txt"
cp "$workdir/eval.json" "$OUT_DIR/train_gpu_eval.json"
grep -o '"steps_per_sec": [0-9.]*' "$workdir/metrics.jsonl" | tail -1
rm -rf "$workdir"
