#!/usr/bin/env bash
# The CPU benchmarks of the PyTorch comparison in one go (about 25 minutes on a
# 2-core CPU, most of it the Conv4 steps of both frameworks and two 1-2 minute
# compiles; run it on an otherwise idle machine):
#
#   bash benchmarks/run_all.sh [OUT_DIR] [DATA_DIR]   # default OUT_DIR: benchmarks/results/cpu
#
# DATA_DIR is a prepared Omniglot TFDS folder (or set METALEARN_OMNIGLOT_DIR to
# the authors' zips); without one the sampler benchmark is skipped. Needs the
# `torch` extra: pip install -e '.[torch]'.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-benchmarks/results/cpu}
DATA_DIR=${2:-}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

echo "== FLOPs per meta-step, achieved rate, matmul peak (about 4 minutes)"
"$PYTHON" -m benchmarks.flops --out="$OUT_DIR/flops.json" | tee "$OUT_DIR/flops.txt"

echo "== metalearn against PyTorch: Conv4 MAML 1 inner step, sinusoid, ProtoNets (about 12 minutes)"
"$PYTHON" -m benchmarks.compare_torch --inner_steps=1 --repeats=3 \
  --out="$OUT_DIR/compare_torch.json" | tee "$OUT_DIR/compare_torch.txt"

# torch.func is left out here: its float64 agreement check with 5 second-order
# steps vmapped over 32 tasks needs more than 24 GiB of memory.
echo "== Conv4 MAML with 5 inner steps, second order (about 6 minutes)"
"$PYTHON" -m benchmarks.compare_torch --workloads=conv4 --inner_steps=5 --orders=second \
  --impls=loop,higher --repeats=3 --out="$OUT_DIR/compare_torch_5steps.json" | tee "$OUT_DIR/compare_torch_5steps.txt"

if [[ -n "$DATA_DIR" || -n "${METALEARN_OMNIGLOT_DIR:-}" ]]; then
  echo "== Omniglot episodic sampler"
  "$PYTHON" -m benchmarks.sampler ${DATA_DIR:+--data_dir="$DATA_DIR"} \
    --out="$OUT_DIR/sampler.json" | tee "$OUT_DIR/sampler.txt"
else
  echo "== no Omniglot data given: sampler benchmark skipped"
fi
