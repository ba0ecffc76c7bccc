#!/usr/bin/env bash
# The CPU benchmarks of the PyTorch comparison in one go (about 13 minutes on a
# 2-core CPU, most of it the Conv4 steps of both frameworks and their compiles;
# run it on an otherwise idle machine):
#
#   bash benchmarks/run_all.sh [OUT_DIR] [DATA_DIR]   # default OUT_DIR: benchmarks/results/cpu
#
# DATA_DIR is a prepared Omniglot TFDS folder (or set METALEARN_OMNIGLOT_DIR to
# the authors' zips); without one the sampler benchmark is skipped. Needs the
# `torch` extra: pip install -e '.[torch]'.
#
# Two things keep it short (787 s on the 2-core machine of docs/results.md, plus
# 23 s for the host-core sinusoid step added since, timed alone).
# XLA's persistent compilation cache (a fresh folder per run, deleted at the
# end) lets flops.py load the meta-steps compare_torch.py has just compiled;
# on XLA:CPU a load still regenerates machine code (about 60 s instead of 85 s
# for the MAML step). The compile times compare_torch.py reports are real
# compiles; flops.py's are then cache loads.
# torch.func is left out on the CPU: it is 6-10x slower than the per-task loop
# there (docs/results.md), and its agreement check and timed steps would add
# minutes; its CPU rows come from
#   python -m benchmarks.compare_torch --workloads=conv4 --inner_steps=1 --impls=func --repeats=3
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-benchmarks/results/cpu}
DATA_DIR=${2:-}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

CACHE_DIR="$OUT_DIR/xla_cache"
rm -rf "$CACHE_DIR"
export JAX_COMPILATION_CACHE_DIR="$CACHE_DIR"
trap 'rm -rf "$CACHE_DIR"' EXIT

echo "== metalearn against PyTorch: Conv4 MAML 1 inner step, sinusoid, ProtoNets"
"$PYTHON" -m benchmarks.compare_torch --inner_steps=1 --impls=loop,higher --repeats=3 \
  --out="$OUT_DIR/compare_torch.json" | tee "$OUT_DIR/compare_torch.txt"

# torch.func is left out here as above; its float64 agreement check with 5
# second-order steps vmapped over 32 tasks also needs more than 24 GiB of memory.
echo "== Conv4 MAML with 5 inner steps, second order"
"$PYTHON" -m benchmarks.compare_torch --workloads=conv4 --inner_steps=5 --orders=second \
  --impls=loop,higher --repeats=3 --out="$OUT_DIR/compare_torch_5steps.json" | tee "$OUT_DIR/compare_torch_5steps.txt"

echo "== sinusoid with a core kept for the Python thread (the sinusoid config's host_cores=1)"
"$PYTHON" -m benchmarks.compare_torch --workloads=sinusoid --host_cores=1 --sinusoid_repeats=500 \
  --out="$OUT_DIR/compare_torch_sinusoid_host_cores.json" | tee "$OUT_DIR/compare_torch_sinusoid_host_cores.txt"
echo "== FLOPs per meta-step, achieved rate, matmul peak"
"$PYTHON" -m benchmarks.flops --out="$OUT_DIR/flops.json" | tee "$OUT_DIR/flops.txt"

if [[ -n "$DATA_DIR" || -n "${METALEARN_OMNIGLOT_DIR:-}" ]]; then
  echo "== Omniglot episodic sampler"
  "$PYTHON" -m benchmarks.sampler ${DATA_DIR:+--data_dir="$DATA_DIR"} \
    --out="$OUT_DIR/sampler.json" | tee "$OUT_DIR/sampler.txt"
else
  echo "== no Omniglot data given: sampler benchmark skipped"
fi
