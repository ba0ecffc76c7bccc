#!/bin/bash
# The script that produced the maml_rl_navigation* measurements (run from the repository root
# under the CPU lock: flock <lock> bash docs/measurements/maml_rl_chain_cpu2.sh).
# MAML-RL measurements, run under the CPU lock: bench, MAML-TRPO up to 12 min, pretrained up to 4 min.
# The training timeouts shrink so that everything ends by 20:06 UTC.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
CFG=experiments/configs/maml_rl_navigation.py
left() { echo $(( $(date -u -d "$1" +%s) - $(date -u +%s) )); }
date -u
$PY docs/measurements/maml_rl_bench.py --out docs/measurements/maml_rl_step_time_cpu2.json > runs/maml_rl_bench.log 2>&1
date -u
T=$(left "20:00"); [ $T -gt 720 ] && T=720; [ $T -lt 150 ] && T=150
echo "train timeout $T"
timeout -s TERM $T $PY -m experiments.meta_train --config=$CFG --workdir=runs/maml_rl_navigation > runs/maml_rl_navigation_train.log 2>&1
echo "train rc=$?"; date -u
STEP=$(ls runs/maml_rl_navigation/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
$PY -m experiments.meta_train --config=$CFG --workdir=runs/maml_rl_navigation --config.num_steps=$STEP > runs/maml_rl_navigation_eval.log 2>&1
echo "eval rc=$? step=$STEP"; date -u
timeout 300 $PY -m pytest -q --durations=5 tests/rl/navigation_test.py tests/rl/maml_rl_test.py > runs/maml_rl_tests.log 2>&1
echo "tests rc=$?"; date -u
T=$(left "20:04"); [ $T -gt 240 ] && T=240
if [ $T -lt 120 ]; then echo "no time for the pretrained run"; exit 0; fi
echo "pretrain timeout $T"
timeout -s TERM $T $PY -m experiments.meta_train --config=$CFG --workdir=runs/maml_rl_navigation_pretrained --config.learner.inner_steps=0 > runs/maml_rl_navigation_pretrained_train.log 2>&1
echo "pretrain rc=$?"; date -u
STEP=$(ls runs/maml_rl_navigation_pretrained/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
$PY -m experiments.meta_train --config=$CFG --workdir=runs/maml_rl_navigation_pretrained --config.learner.inner_steps=0 --config.num_steps=$STEP > runs/maml_rl_navigation_pretrained_eval.log 2>&1
echo "pretrain eval rc=$? step=$STEP"; date -u
$PY docs/measurements/maml_rl_bench.py --out docs/measurements/maml_rl_step_time_cpu2.json > runs/maml_rl_bench2.log 2>&1
echo "bench2 rc=$?"; date -u
