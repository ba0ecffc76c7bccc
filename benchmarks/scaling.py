r"""Meta-step time against the number of devices the task axis is sharded over.

  python -m benchmarks.scaling [--devices=1,2,4,8] [--meta_batch_size=32] \
      [--methods=maml] [--steps=300] [--out=scaling.json]

The sinusoid meta-step of experiments/configs/sinusoid.py (MLP 40-40, K=10
support and 10 query points, one inner step), meta-batch 32 (25, the paper's,
does not divide over 8 devices), jitted with the task axis sharded over a mesh
of N devices and theta replicated, exactly as `training.meta_train` runs it.
Each device count runs in a fresh process, since the number of simulated CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`) is fixed when
JAX starts. Reported per N: compile time, the median time of the compiled step
on a batch already on the devices, the same including host-side sampling and
transfer (what training sees), steps/s, and the speed relative to N=1.

On CPU the devices are simulated: N "devices" share the machine's cores, so on
a 2-core machine the numbers show the correctness of the sharded program and
its overhead (partitioning, the gradient all-reduce), not a speed-up.

`--platform=gpu` (or `tpu`) times the real accelerators instead: the device
counts default to 1, 2, 4, ... up to the number present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_DEVICES = flags.DEFINE_list("devices", None, "device counts (default 1,2,4,8 on CPU)")
_PLATFORM = flags.DEFINE_enum("platform", "cpu", ["cpu", "gpu", "tpu"], "devices to time")
_METHODS = flags.DEFINE_list("methods", ["maml"], "methods to time")
_BATCH = flags.DEFINE_integer("meta_batch_size", 32, "tasks per meta-step (all device counts)")
_STEPS = flags.DEFINE_integer("steps", 300, "timed meta-steps per measurement")
_STRATEGY = flags.DEFINE_string("strategy", "vmap", "task batching strategy")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")
_CHILD = flags.DEFINE_integer("child", None, "internal: time this device count and print JSON")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(method: str, num_devices: int) -> dict:
  """Times one method's sharded meta-step on a mesh of `num_devices` devices."""
  import time

  import jax
  import numpy as np
  import optax

  from benchmarks import common
  from metalearn import algorithms, core, parallel, training
  from metalearn import episodes as ep
  from metalearn.data.sinusoid import Sinusoid
  from metalearn.models import MLP

  learner = algorithms.get(method)(MLP(hidden=(40, 40)), inner_lr=0.01, inner_steps=1)
  tasks = Sinusoid(shots=10, queries=10)
  optimizer = optax.adam(1e-3)
  mesh = parallel.make_mesh(num_devices)
  repl, sharded = parallel.replicated(mesh), parallel.task_sharded(mesh)
  batch = tasks.sample(np.random.default_rng(0), _BATCH.value)
  state = core.init_state(learner, optimizer, jax.random.PRNGKey(0), ep.task(batch, 0))
  state = parallel.replicate(state, mesh)
  step = jax.jit(
    core.make_meta_step(learner, optimizer, strategy=_STRATEGY.value),
    in_shardings=(repl, sharded),
    out_shardings=(repl, repl),
  )
  device_batch = parallel.put_global_batch(batch, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, device_batch).compile()
  compile_s = time.perf_counter() - start

  def sample(i):
    piece = lambda j, n: tasks.sample(training.episode_rng(0, 1, i), n)
    return parallel.sample_global_batch(piece, _BATCH.value, mesh)

  fixed_t, sampled_t = common.time_meta_step(
    compiled, state, device_batch, sample, repeats=_STEPS.value, sampled_step=step
  )
  return {
    "method": method,
    "devices": mesh.size,
    "platform": mesh.devices.flat[0].platform,
    "compile_s": compile_s,
    "step_ms": 1e3 * fixed_t["median_s"],
    "step_ms_min": 1e3 * fixed_t["min_s"],
    "step_with_sampling_ms": 1e3 * sampled_t["median_s"],
    "steps_per_s": 1.0 / fixed_t["median_s"],
    "steps_per_s_with_sampling": 1.0 / sampled_t["median_s"],
    "all_reduce_in_program": "all-reduce" in compiled.as_text() if mesh.size > 1 else None,
  }


def _child_main(num_devices: int) -> None:
  import jax

  from benchmarks import common

  if jax.default_backend() != _PLATFORM.value:
    raise SystemExit(f"--platform={_PLATFORM.value}, but JAX runs on {jax.default_backend()}")

  rows = [bench(m, num_devices) for m in _METHODS.value]
  print("RESULT " + json.dumps({"rows": rows, "machine": common.machine()}), flush=True)


def _run_child(num_devices: int) -> dict:
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  if _PLATFORM.value == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (
      f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
    ).strip()
  args = [
    f"--child={num_devices}",
    f"--platform={_PLATFORM.value}",
    f"--methods={','.join(_METHODS.value)}",
    f"--meta_batch_size={_BATCH.value}",
    f"--steps={_STEPS.value}",
    f"--strategy={_STRATEGY.value}",
  ]
  out = subprocess.run(
    [sys.executable, "-m", "benchmarks.scaling", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"{num_devices} device(s) failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
  return json.loads(lines[-1][len("RESULT ") :])


def _device_counts() -> list[int]:
  if _DEVICES.value:
    return [int(d) for d in _DEVICES.value]
  if _PLATFORM.value == "cpu":
    return [1, 2, 4, 8]
  # Counted in a child: this process must not hold the accelerators while children time them.
  count = subprocess.run(
    [sys.executable, "-c", f"import jax; print(len(jax.devices({_PLATFORM.value!r})))"],
    capture_output=True,
    text=True,
    check=True,
  )
  available = int(count.stdout.split()[-1])
  return [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= available]


def main(argv):
  del argv
  if _CHILD.value is not None:
    _child_main(_CHILD.value)
    return
  for n in _device_counts():
    if _BATCH.value % n:
      raise app.UsageError(f"--meta_batch_size={_BATCH.value} does not divide over {n} devices")
  results, machine = [], None
  for n in _device_counts():
    got = _run_child(n)
    results.extend(got["rows"])
    machine = machine or got["machine"]
  base = {r["method"]: r["step_ms"] for r in results if r["devices"] == results[0]["devices"]}
  for r in results:
    r["speed_vs_first"] = base[r["method"]] / r["step_ms"]

  simulated = " (simulated CPU devices sharing the cores)" if _PLATFORM.value == "cpu" else ""
  print(
    f"sinusoid meta-step, MLP 40-40, K=10, meta-batch {_BATCH.value} sharded over the task axis, "
    f"strategy={_STRATEGY.value}; {machine['cpu']} ({machine['cores']} cores), "
    f"jax {machine['jax']}, platform {_PLATFORM.value}{simulated}"
  )
  header = (
    f"{'method':<8}{'devices':>8}{'compile s':>11}{'ms/step':>10}{'steps/s':>10}"
    f"{'vs first':>10}{'ms/step+sampling':>18}{'steps/s+sampling':>18}"
  )
  print(header)
  for r in results:
    print(
      f"{r['method']:<8}{r['devices']:>8}{r['compile_s']:>11.2f}{r['step_ms']:>10.3f}"
      f"{r['steps_per_s']:>10.0f}{r['speed_vs_first']:>9.2f}x"
      f"{r['step_with_sampling_ms']:>18.3f}{r['steps_per_s_with_sampling']:>18.0f}"
    )
  from benchmarks import common

  common.write_json(
    _OUT.value,
    {
      "machine": machine,
      "platform": _PLATFORM.value,
      "simulated_devices": _PLATFORM.value == "cpu",
      "meta_batch_size": _BATCH.value,
      "strategy": _STRATEGY.value,
      "steps": _STEPS.value,
      "results": results,
    },
  )


if __name__ == "__main__":
  app.run(main)
