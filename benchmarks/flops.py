r"""FLOPs per meta-step (XLA's cost analysis), achieved GFLOP/s, and the machine's matmul peak.

  python -m benchmarks.flops --out=flops.json [--workloads=maml,fomaml,protonet,relation] \
      [--repeats=5]

For each workload, the compiled meta-step's FLOP count comes from
`compiled.cost_analysis()` (what XLA will execute; with one inner step, so
that no loop body is counted once for several iterations), the step is timed
warm (median of `--repeats`), and FLOPs / time is the achieved rate. The
machine's peak is a float32 matrix product of `--matmul_size`² timed the same
way (jit, warm, median); the ratio achieved / peak says how much of the
hardware's arithmetic the step uses. Workloads: second-order MAML (`maml`) and
first-order MAML (`fomaml`) on Conv4 Omniglot 5-way 1-shot, 15 queries,
meta-batch 32 (the `benchmarks/compare_torch.py` step), one ProtoNets
5-way 1-shot 15-query episode (`protonet`), and, on request, one Relation
Networks 5-way 1-shot 19-query episode (`relation`, the training episode of
`experiments/configs/relation_omniglot.py`).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from benchmarks import common
from metalearn import algorithms, core
from metalearn import episodes as ep
from metalearn.models import Conv4

_WORKLOADS = flags.DEFINE_list("workloads", ["maml", "fomaml", "protonet"], "steps to measure")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", 32, "MAML tasks per meta-step")
_STRATEGIES = flags.DEFINE_list(
  "strategies", ["auto"], "task batching strategies to measure (each workload with each)"
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed steps")
_QUERIES = flags.DEFINE_integer("queries", 15, "query images per class")
_MATMUL = flags.DEFINE_integer("matmul_size", 4096, "side of the peak-rate matrix product")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")


_FLOPS: dict[str, float] = {}  # workload -> FLOPs of its unrolled step


def matmul_peak(n: int, repeats: int) -> dict:
  """GFLOP/s of an `[n, n] @ [n, n]` float32 product, jitted and warm."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul).lower(a, b).compile()
  t = common.time_calls(lambda: jax.block_until_ready(f(a, b)), repeats=repeats)
  return {"size": n, "gflops": 2 * n**3 / 1e9, **t, "gflop_per_s": 2 * n**3 / 1e9 / t["median_s"]}


def step_rate(workload: str, strategy: str) -> dict:
  """FLOPs, compile time, median step time and GFLOP/s of one workload's meta-step.

  FLOPs are those of the `unroll` or `vmap` program, or `common.step_flops` for
  strategies that loop over tasks (XLA's cost analysis counts a loop body
  once); every strategy computes the same arithmetic.
  """
  if workload == "protonet":
    learner = algorithms.get("protonet")(Conv4(ways=None), ways=5)
    batch = common.image_episodes(1, 5, 1, _QUERIES.value)
  elif workload == "relation":
    learner = algorithms.get("relation")(ways=5)
    batch = common.image_episodes(1, 5, 1, 19)
  else:
    learner = algorithms.get(workload)(
      Conv4(ways=5), inner_lr=0.4, inner_steps=1, objective="cross_entropy"
    )
    batch = common.image_episodes(_META_BATCH.value, 5, 1, _QUERIES.value)
  optimizer = optax.adam(1e-3)
  batch = jax.device_put(batch)
  state = core.init_state(learner, optimizer, jax.random.PRNGKey(0), ep.task(batch, 0))
  keys = jax.random.split(jax.random.PRNGKey(0), ep.num_tasks(batch))
  chosen = strategy
  if strategy == "auto":
    chosen = core.auto_strategy(learner.meta_loss, state.theta, batch, keys)
  step = jax.jit(core.make_meta_step(learner, optimizer, strategy=chosen))
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  if chosen in ("unroll", "vmap") or ep.num_tasks(batch) == 1:
    flops = common.compiled_flops(compiled)
    _FLOPS.setdefault(workload, flops)
  elif workload in _FLOPS:
    flops = _FLOPS[workload]
  else:
    flops = _FLOPS.setdefault(workload, common.step_flops(learner, optimizer, state, batch))
  t = common.time_calls(
    lambda: jax.block_until_ready(compiled(state, batch)), repeats=_REPEATS.value, warmup=1
  )
  return {
    "workload": workload,
    "strategy": chosen,
    "tasks": ep.num_tasks(batch),
    "queries_per_class": _QUERIES.value,
    "compile_s": compile_s,
    # With a persistent compilation cache, compile_s may be a cache load.
    "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
    "gflops_per_step": flops / 1e9,
    **t,
    "gflop_per_s": flops / 1e9 / t["median_s"],
  }


def main(argv):
  del argv
  peak = matmul_peak(_MATMUL.value, max(_REPEATS.value, 5))
  print(f"matmul {peak['size']}^2 float32: {peak['gflop_per_s']:.1f} GFLOP/s (peak reference)")
  rows = []
  for w in _WORKLOADS.value:
    for strategy in _STRATEGIES.value:
      r = step_rate(w, strategy)
      r["fraction_of_peak"] = r["gflop_per_s"] / peak["gflop_per_s"]
      rows.append(r)
      _print(r)
  common.write_json(_OUT.value, {"machine": common.machine(), "matmul_peak": peak, "rows": rows})


def _print(r: dict) -> None:
  print(
    f"{r['workload']:9s} {r['strategy']:9s} {r['gflops_per_step']:8.1f} GFLOP/step"
    f"  {r['median_s']:.3f} s/step"
    f"  {r['gflop_per_s']:6.1f} GFLOP/s  {100 * r['fraction_of_peak']:5.1f}% of peak"
    f"  ({'compile or cache load' if r['compilation_cache'] else 'compile'}"
    f" {r['compile_s']:.1f} s)",
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
