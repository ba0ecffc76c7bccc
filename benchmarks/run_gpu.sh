#!/usr/bin/env bash
# The PyTorch comparison and the FLOP rates on one GPU, in one call (about 5
# minutes on an H100/H200 host, under 8 in all):
#
#   bash benchmarks/run_gpu.sh [OUT_DIR]      # default: benchmarks/results/gpu
#
# Needs, in the interpreter $PYTHON (default python3): JAX with CUDA, flax,
# optax, chex, absl-py, and PyTorch with CUDA (+ higher, optional). The JSON
# and text outputs land in OUT_DIR; docs/results.md quotes them with the card.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and PyTorch share the card: no preallocation of most of its memory by JAX.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

"$PYTHON" -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__, torch.cuda.is_available())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt" || true

echo "== FLOPs per meta-step and achieved rate"
timeout 150 "$PYTHON" -m benchmarks.flops --matmul_size=8192 --repeats=20 \
  --out="$OUT_DIR/flops.json" | tee "$OUT_DIR/flops.txt"

echo "== metalearn against PyTorch (CUDA)"
timeout 330 "$PYTHON" -m benchmarks.compare_torch --torch_device=cuda --repeats=20 \
  --sinusoid_repeats=500 --out="$OUT_DIR/compare_torch.json" | tee "$OUT_DIR/compare_torch.txt"
