r"""Meta-steps per second and compile time on the sinusoid config, per method.

  python -m benchmarks.sinusoid_speed [--methods=maml,fomaml] [--out=sinusoid_speed.json]

For each method: the MLP 40-40, 10 shots, 10 queries, meta-batch 25 step of
experiments/configs/sinusoid.py; compile time (lower + compile of the jitted
meta-step), then the median time of a meta-step over `--steps` calls, once on
a fixed batch already on the device (the compiled step alone) and once
including host-side task sampling and transfer (what training sees; the loop
blocks on every step here, so this is an upper bound on training's rate).
Then, with `--steps_per_call=K` (default 20, the sinusoid config's), the same
with K steps per compiled call (`core.repeat_step`; K host-sampled batches per
call, blocking on every call): milliseconds per step.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from absl import app, flags

from benchmarks import common
from metalearn import algorithms, core
from metalearn import episodes as ep
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP

_METHODS = flags.DEFINE_list("methods", ["maml", "fomaml"], "methods to time")
_STEPS = flags.DEFINE_integer("steps", 2000, "timed meta-steps per measurement")
_BATCH = flags.DEFINE_integer("meta_batch_size", 25, "tasks per meta-step")
_STRATEGY = flags.DEFINE_string("strategy", "vmap", "task batching strategy")
_PER_CALL = flags.DEFINE_integer(
  "steps_per_call", 20, "also time this many steps per compiled call (core.repeat_step; 1: skip)"
)
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")


def bench(method: str) -> dict:
  learner = algorithms.get(method)(MLP(hidden=(40, 40)), inner_lr=0.01, inner_steps=1)
  tasks = Sinusoid(shots=10, queries=10)
  optimizer = optax.adam(1e-3)
  batch = tasks.sample(np.random.default_rng(0), _BATCH.value)
  state = core.init_state(learner, optimizer, jax.random.PRNGKey(0), ep.task(batch, 0))
  step = jax.jit(core.make_meta_step(learner, optimizer, strategy=_STRATEGY.value))
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  device_batch = jax.device_put(batch)
  fixed_t, sampled_t = common.time_meta_step(
    compiled,
    state,
    device_batch,
    lambda i: tasks.sample(np.random.default_rng([0, i]), _BATCH.value),
    repeats=_STEPS.value,
  )
  k, per_call = _PER_CALL.value, {}
  if k > 1:
    calls = iter(range(10**9))
    _, t = common.time_steps_per_call(
      core.make_meta_step(learner, optimizer, strategy=_STRATEGY.value),
      state,
      lambda: tasks.sample(np.random.default_rng([1, next(calls)]), _BATCH.value),
      k,
      repeats=max(_STEPS.value // k, 20),
    )
    per_call = {
      "steps_per_call": k,
      "step_with_sampling_ms_per_call_k": 1e3 * t["median_s"],
      "step_with_sampling_ms_per_call_k_pipelined": 1e3 * t["pipelined_s"],
    }
  return {
    "method": method,
    "compile_s": compile_s,
    "step_ms": 1e3 * fixed_t["median_s"],
    "step_ms_min": 1e3 * fixed_t["min_s"],
    "step_with_sampling_ms": 1e3 * sampled_t["median_s"],
    "steps_per_s": 1.0 / fixed_t["median_s"],
    "steps_per_s_with_sampling": 1.0 / sampled_t["median_s"],
    **per_call,
  }


def main(argv):
  del argv
  rows = [bench(m) for m in _METHODS.value]
  info = common.machine()
  print(
    f"sinusoid meta-step, MLP 40-40, K=10, meta-batch {_BATCH.value}, "
    f"strategy={_STRATEGY.value}; {info['cpu']} ({info['cores']} cores), jax {info['jax']}"
  )
  print(
    f"{'method':<14}{'compile s':>10}{'ms/step':>10}{'steps/s':>10}"
    f"{'ms/step+sampling':>18}{'steps/s+sampling':>18}{f'same, {_PER_CALL.value}/call':>16}"
  )
  for r in rows:
    print(
      f"{r['method']:<14}{r['compile_s']:>10.2f}{r['step_ms']:>10.3f}{r['steps_per_s']:>10.0f}"
      f"{r['step_with_sampling_ms']:>18.3f}{r['steps_per_s_with_sampling']:>18.0f}"
      f"{r.get('step_with_sampling_ms_per_call_k', float('nan')):>16.3f}"
    )
  common.write_json(
    _OUT.value,
    {
      "machine": info,
      "meta_batch_size": _BATCH.value,
      "strategy": _STRATEGY.value,
      "results": rows,
    },
  )


if __name__ == "__main__":
  app.run(main)
