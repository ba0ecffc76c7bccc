"""Helpers shared by the benchmarks: machine description, timing, FLOP counts, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax


def machine() -> dict:
  """CPU model, core count, backend and library versions, for every results table."""
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import flax
  import optax

  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    # Cores this process may run on (fewer under `taskset`).
    "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "jax": jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "python": platform.python_version(),
    "date": time.strftime("%Y-%m-%d"),
  }


def time_calls(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> dict:
  """Median / min / max seconds of `fn()` (which must block until done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {
    "median_s": statistics.median(times),
    "min_s": min(times),
    "max_s": max(times),
    "repeats": repeats,
  }


def time_steps_per_call(
  step: Callable, state, sample_batch: Callable[[], object], k: int, *, repeats: int
) -> tuple[float, dict]:
  """Compiles `core.repeat_step(step)` and times calls of `k` host-sampled batches.

  What training does with `steps_per_call=k`: `sample_batch()` draws each
  step's batch on the host, one compiled `lax.scan` takes the k steps. Every
  timed call blocks; `pipelined_s` is the time per step of `repeats` more
  calls issued back to back (state threaded through, one block at the end),
  as the training loop issues them. Returns `(compile seconds, time_calls'
  dict per step plus pipelined_s)`.
  """
  from metalearn import core

  fn = jax.jit(core.repeat_step(step))
  batches = lambda: tuple(sample_batch() for _ in range(k))
  start = time.perf_counter()
  fn = fn.lower(state, batches()).compile()
  compile_s = time.perf_counter() - start
  per_call = time_calls(lambda: jax.block_until_ready(fn(state, batches())), repeats=repeats)
  timing = {n: v / k for n, v in per_call.items() if n.endswith("_s")}
  # As the training loop runs: calls issued back to back on the evolving state,
  # the host sampling the next call's batches while the device runs this one.
  s = fn(state, batches())[0]
  jax.block_until_ready(s)
  start = time.perf_counter()
  for _ in range(repeats):
    s = fn(s, batches())[0]
  jax.block_until_ready(s)
  pipelined_s = (time.perf_counter() - start) / (repeats * k)
  return compile_s, {**timing, "pipelined_s": pipelined_s, "repeats": per_call["repeats"] * k}


def write_json(path: str | None, payload: dict) -> None:
  """Writes the benchmark's numbers to `path` (when given)."""
  if path:
    with open(path, "w") as f:
      json.dump(payload, f, indent=2)
    print(f"wrote {path}")


def time_meta_step(
  step: Callable,
  state,
  device_batch,
  sample_batch: Callable[[int], object],
  *,
  repeats: int,
  sampled_step: Callable | None = None,
) -> tuple[dict, dict]:
  """Times a jitted meta-step: on one batch already on the device, and on fresh batches.

  Args:
    step: `(state, batch) -> (state, metrics)`, compiled.
    state: the initial state (threaded through the calls).
    device_batch: a batch already on the device.
    sample_batch: `i -> batch` drawing the i-th fresh host batch (sampling and
      transfer are then part of the timed call).
    repeats: timed calls per measurement (after 20 warm-up calls).
    sampled_step: the step for fresh batches, if not `step` (e.g. the jitted
      function where host batches need resharding).

  Returns:
    `(fixed, sampled)`, each as `time_calls` returns it.
  """
  holder = {"state": state, "i": 0}

  def fixed():
    holder["state"], m = step(holder["state"], device_batch)
    jax.block_until_ready(m)

  def sampled():
    holder["i"] += 1
    holder["state"], m = (sampled_step or step)(holder["state"], sample_batch(holder["i"]))
    jax.block_until_ready(m)

  return (
    time_calls(fixed, repeats=repeats, warmup=20),
    time_calls(sampled, repeats=repeats, warmup=20),
  )


def image_episodes(tasks: int, ways: int, shots: int, queries: int, seed: int = 0):
  """Omniglot-shaped episodes of uniform-noise 28x28 images, labels 0..ways-1 in order.

  The cost of a step does not depend on pixel values, so benchmarks use these
  instead of real data. Returns an `Episode` with arrays `[tasks, ways * k, ...]`.
  """
  import numpy as np

  from metalearn import episodes as ep

  rng = np.random.default_rng(seed)

  def split(k):
    x = rng.uniform(size=(tasks, ways * k, 28, 28, 1)).astype(np.float32)
    y = np.tile(np.repeat(np.arange(ways), k), (tasks, 1)).astype(np.int32)
    return ep.make_split(x, y, np.ones((tasks, ways * k), bool))

  return ep.Episode(split(shots), split(queries))


def compiled_flops(compiled) -> float:
  """FLOPs of a compiled program by XLA's cost analysis (a loop body counts once)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"])


def step_flops(learner, optimizer, state, batch) -> float:
  """FLOPs of the meta-step on a batch of T tasks, from unrolled programs of 1 and 2 tasks.

  XLA's cost analysis counts a loop body once, so a `map` program is
  undercounted, and the unrolled T-task program takes minutes to compile. The
  step's work is one part per task plus a shared part (the mean over tasks,
  the optimizer update), so with `f(n)` the count of the unrolled n-task
  program, the T-task step does `f(1) + (T - 1) * (f(2) - f(1))`.
  """
  from metalearn import core
  from metalearn import episodes as ep

  counts = []
  unrolled = jax.jit(core.make_meta_step(learner, optimizer, strategy="unroll"))
  for n in (1, 2):
    few = jax.tree_util.tree_map(lambda a, n=n: a[:n], batch)
    counts.append(compiled_flops(unrolled.lower(state, few).compile()))
  return counts[0] + (ep.num_tasks(batch) - 1) * (counts[1] - counts[0])


def gp_reference_config(kernel: str, num_tasks: int, batch_size: int | None = None):
  """The `np_gp` config's held-out GP tasks for `kernel`, as the GP reference benchmarks score them.

  Args:
    kernel: `"eq"`, `"matern"` or `"weakly_periodic"`.
    num_tasks: held-out tasks (`num_eval_tasks`).
    batch_size: tasks per evaluation batch (at most `num_tasks`); None keeps
      the config's `eval_batch_size`.
  """
  from experiments.configs import np_gp

  config = np_gp.get_config("cnp")
  config.unlock()
  config.kernel, config.num_eval_tasks = kernel, num_tasks
  if batch_size is not None:
    config.eval_batch_size = min(batch_size, num_tasks)
  return config
