#!/usr/bin/env bash
# The papers' full Omniglot protocols that do not fit the CPU budget, for a lent GPU:
#
#   bash benchmarks/run_gpu_protocols.sh <prepared Omniglot data_dir> [OUT_DIR] [SECONDS_PER_RUN]
#
# Runs, each in its own workdir under OUT_DIR (default runs/gpu_protocols):
#   maml20     MAML 20-way 1-shot as Finn et al. (2017, App. A.1): 5 inner steps at lr 0.1,
#              meta-batch 16, 60,000 meta-steps, 5 inner steps at test;
#   anil20     ANIL 20-way 1-shot with the same inner loop and schedule as maml20 (Raghu
#              et al. 2020 keep MAML's hyperparameters), the comparison ANIL is judged by;
#   fomaml5    first-order MAML 5-way 1-shot as Finn et al. (2017): 60,000 meta-steps of 32
#              tasks, 1 inner step at lr 0.4 (3 at test), batch norm out of the inner loop;
#   relation5  Relation Networks 5-way 1-shot as Sung et al. (2018, Sec. 4.1): 1,000,000
#              episodes, Adam 1e-3 halved every 100,000.
# Each run is stopped after SECONDS_PER_RUN (default 240) by SIGTERM, which checkpoints and
# exits 143; running the script again continues every run from its checkpoint, so a long
# protocol is done in several calls. When a run reaches its last step it writes eval.json,
# and the gradient-based runs are scored 5-shot too (experiments.evaluate). A summary of how far each
# run got is printed at the end. Needs JAX with CUDA and the project installed in $PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${1:?usage: run_gpu_protocols.sh <prepared Omniglot data_dir> [OUT_DIR] [SECONDS]}
OUT_DIR=${2:-runs/gpu_protocols}
SECONDS_PER_RUN=${3:-240}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

run() {  # name, then the binary's flags
  local name=$1
  shift
  echo "== $name (up to ${SECONDS_PER_RUN}s)"
  timeout --signal=TERM "$SECONDS_PER_RUN" "$PYTHON" -m experiments.meta_train \
    --workdir="$OUT_DIR/$name" --config.data_dir="$DATA_DIR" "$@" 2>&1 | tee -a "$OUT_DIR/$name.log"
  echo "exit ${PIPESTATUS[0]} (143 or 124: stopped with a checkpoint; run the script again)"
}

five_shot() {  # name: score a finished run on 5-shot episodes, once
  local name=$1
  if [ -f "$OUT_DIR/$name/eval.json" ] && [ ! -f "$OUT_DIR/${name}_5shot.done" ]; then
    "$PYTHON" -m experiments.evaluate --workdir="$OUT_DIR/$name" --shots=5 \
      | tee "$OUT_DIR/${name}_5shot.txt" && touch "$OUT_DIR/${name}_5shot.done"
  fi
}

LOOP20=(--config.ways=20 --config.meta_batch_size=16 --config.learner.inner_steps=5
  --config.learner.inner_lr=0.1 --config.eval_inner_steps=5 --config.num_steps=60000
  --config.log_every=1000 --config.eval_every=10000 --config.checkpoint_every=2000)
for method in maml anil; do
  run "${method}20" --config=experiments/configs/maml_omniglot.py:$method "${LOOP20[@]}"
  five_shot "${method}20"
done

run fomaml5 --config=experiments/configs/maml_omniglot.py:fomaml --config.num_steps=60000 \
  --config.log_every=1000 --config.eval_every=10000 --config.checkpoint_every=2000
five_shot fomaml5

run relation5 --config=experiments/configs/relation_omniglot.py --config.log_every=10000 \
  --config.eval_every=100000 --config.checkpoint_every=10000

echo "== where each run stands"
for name in maml20 anil20 fomaml5 relation5; do
  last=$(grep -o 'step [0-9]*/[0-9]*' "$OUT_DIR/$name.log" 2>/dev/null | tail -1)
  echo "$name: ${last:-no step logged}; eval.json: $([ -f "$OUT_DIR/$name/eval.json" ] && echo yes || echo not yet)"
done
