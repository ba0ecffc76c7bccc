r"""metalearn against the PyTorch meta-learning stack: same steps, same weights, same episodes.

  pip install -e '.[torch]'   # torch==2.13.0 (CPU wheel) and higher==0.2.1
  python -m benchmarks.compare_torch --out=compare_torch.json \
      [--workloads=conv4,sinusoid,protonet] [--inner_steps=1,5] [--orders=second,first]

Workloads:

- `conv4`: the MAML Omniglot meta-step: Conv4 (64 filters, batch statistics),
  5-way 1-shot, 15 queries per class, meta-batch 32, inner SGD lr 0.4, for each
  inner step count and order, then an Adam update. PyTorch implementations
  (`benchmarks/torch_reference.py`): `loop` (per-task `autograd.grad(create_graph=True)`,
  learn2learn's method; learn2learn 0.2.0 itself does not build on Python
  3.11), `func` (`torch.func.grad` + `vmap` over tasks) and `higher` (second order).
- `sinusoid`: the MAML sinusoid step (MLP 40-40, 10 shots, 10 queries,
  meta-batch 25, inner lr 0.01, one step), task sampling included on both sides.
  metalearn is timed twice: one meta-step per call, and `--sinusoid_steps_per_call`
  steps per call (`core.repeat_step`, what the sinusoid config trains with; the
  row `metalearn/20`), the host still sampling every step's batch with numpy;
  that row also gives `pipelined`, its calls issued back to back as training
  issues them. `--host_cores=1` (sinusoid alone) keeps a core for the Python
  thread and gives XLA's pool the rest (`parallel.reserve_host_cores`, the
  sinusoid config's default); PyTorch's threads still get every core.
- `protonet`: one ProtoNets 5-way 1-shot, 15-query training episode per step.

Episodes are synthetic images (uniform noise; the cost of a step does not
depend on pixel values) drawn once with numpy and given to both sides; PyTorch
starts from metalearn's initial weights (converted). Before timing, the
meta-loss and meta-gradient of each PyTorch implementation are compared with
metalearn's (relative L2 error over all parameters; reported, and flagged when
above `--tolerance`). Timing: `--repeats` warm steps after `--warmup`, median
and min-max; metalearn's compile time and PyTorch's first step are reported
apart. PyTorch uses `--threads` intra-op threads (default: every core the
process may use), XLA its default thread pool (the same cores). Under `taskset
-c 0` both run on one core.
"""

from __future__ import annotations

import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import common
from metalearn import algorithms, core, parallel
from metalearn import episodes as ep
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP, Conv4

_WORKLOADS = flags.DEFINE_list("workloads", ["conv4", "sinusoid", "protonet"], "what to compare")
_INNER_STEPS = flags.DEFINE_list("inner_steps", ["1", "5"], "conv4: inner step counts")
_ORDERS = flags.DEFINE_list("orders", ["second", "first"], "conv4: MAML orders")
_IMPLS = flags.DEFINE_list("impls", ["loop", "func", "higher"], "PyTorch implementations")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", 32, "conv4: tasks per meta-step")
_STRATEGY = flags.DEFINE_string("strategy", "auto", "metalearn task batching strategy")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed steps (conv4, protonet)")
_SIN_REPEATS = flags.DEFINE_integer("sinusoid_repeats", 200, "timed steps (sinusoid)")
_SIN_PER_CALL = flags.DEFINE_integer(
  "sinusoid_steps_per_call",
  20,
  "sinusoid: also time metalearn with this many meta-steps per compiled call "
  "(core.repeat_step, the sinusoid config's steps_per_call; 1: skip)",
)
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps before timing")
_THREADS = flags.DEFINE_integer("threads", 0, "PyTorch threads (0: every usable core)")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "auto", "PyTorch device: auto, cpu or cuda")
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4, "agreement bar (relative L2)")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")
_HOST_CORES = flags.DEFINE_integer(
  "host_cores",
  0,
  "sinusoid only: cores kept for the Python thread while XLA's CPU pool runs the metalearn "
  "steps on the rest (parallel.reserve_host_cores, the sinusoid config's host_cores); "
  "the PyTorch rows get every core back",
)
# Every core of the process, set when --host_cores moved this thread to fewer.
_ALL_CORES: frozenset[int] | None = None


def _rel(a, b) -> float:
  """Relative L2 error of pytree `a` against pytree `b`."""
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  num = sum(
    float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    for x, y in zip(la, lb, strict=True)
  )
  den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in lb)
  return float(np.sqrt(num / max(den, 1e-30)))


def _f64(tree):
  return jax.tree_util.tree_map(
    lambda a: np.asarray(a, np.float64) if np.asarray(a).dtype == np.float32 else a, tree
  )


class _Jax:
  """A metalearn learner's compiled meta-step, and its meta-loss/gradient at theta.

  The meta-loss and meta-gradient are computed twice: in float32 (what is timed)
  and in float64 (to compare implementations without float32 rounding, which
  second-order MAML amplifies: two float32 implementations of the same step
  differ by about 1e-4 to 1e-3 relative).
  """

  def __init__(self, learner, batch, strategy):
    self.optimizer = optax.adam(1e-3)
    self.batch = jax.device_put(batch)
    self.state = core.init_state(learner, self.optimizer, jax.random.PRNGKey(0), ep.task(batch, 0))
    step = jax.jit(core.make_meta_step(learner, self.optimizer, strategy=strategy))
    start = time.perf_counter()
    self.step = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    keys = jax.random.split(jax.random.PRNGKey(1), ep.num_tasks(batch))
    self.strategy = strategy
    if strategy == "auto":
      self.strategy = core.auto_strategy(learner.meta_loss, self.state.theta, self.batch, keys)

    def loss_and_grads(theta, batch):
      def mean_loss(theta):
        # "map" gives the same per-task numbers as any strategy and compiles fastest.
        losses, _ = core.batch_over_tasks(learner.meta_loss, "map")(theta, batch, keys)
        return jnp.mean(losses)

      loss, grads = jax.jit(jax.value_and_grad(mean_loss))(theta)
      return float(loss), jax.tree_util.tree_map(np.asarray, grads["params"])

    self.reference = {"float32": loss_and_grads(self.state.theta, self.batch)}
    with jax.enable_x64(True):
      self.reference["float64"] = loss_and_grads(_f64(self.state.theta), _f64(batch))

  def run(self):
    return jax.block_until_ready(self.step(self.state, self.batch))

  def time(self, repeats):
    return common.time_calls(self.run, repeats=repeats, warmup=_WARMUP.value)


def _torch_impl(name, make, jax_side, repeats, **extra):
  """Agreement (float64 and float32), first step and warm timing of one PyTorch implementation.

  Args:
    name: implementation name for the table.
    make: `dtype -> (params {name: leaf tensor}, meta_grads(params) -> loss float
      (leaving the meta-gradient in each param's .grad), to_jax(grads) -> JAX tree)`.
    jax_side: the `_Jax` reference.
    repeats: timed steps.
  """
  import torch

  row = {"impl": name, **extra}
  try:
    for label, dtype in (("float64", torch.float64), ("float32", torch.float32)):
      params, meta_grads, to_jax = make(dtype)
      for p in params.values():
        p.grad = None
      loss = meta_grads(params)
      ref_loss, ref_grads = jax_side.reference[label]
      row[f"loss_rel_err_{label}"] = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
      row[f"grad_rel_err_{label}"] = _rel(to_jax({k: p.grad for k, p in params.items()}), ref_grads)
    row["agrees"] = bool(
      row["loss_rel_err_float64"] <= _TOLERANCE.value
      and row["grad_rel_err_float64"] <= _TOLERANCE.value
    )
    # `params` are now the float32 ones: time full steps (meta-gradient + Adam).
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def step():
      for p in params.values():
        p.grad = None
      meta_grads(params)
      opt.step()
      if torch.cuda.is_available():
        torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    row["first_step_s"] = time.perf_counter() - start
    row.update(common.time_calls(step, repeats=repeats, warmup=max(_WARMUP.value - 1, 0)))
  except Exception as e:  # an implementation that fails is reported, not fatal
    row["error"] = f"{type(e).__name__}: {e}"
    traceback.print_exc()
  return row


def _conv4_tensors(batch, dtype):
  from benchmarks import torch_reference as tr

  return (
    tr.images(batch.support.x, dtype),
    tr.labels(batch.support.y),
    tr.images(batch.query.x, dtype),
    tr.labels(batch.query.y),
  )


def conv4_rows(steps: int, order: str) -> list[dict]:
  import torch

  from benchmarks import torch_reference as tr

  first = order == "first"
  method = "fomaml" if first else "maml"
  learner = algorithms.get(method)(
    Conv4(ways=5), inner_lr=0.4, inner_steps=steps, objective="cross_entropy"
  )
  batch = common.image_episodes(_META_BATCH.value, 5, 1, 15)
  print(f"conv4 {method} steps={steps}: compiling metalearn ...", flush=True)
  j = _Jax(learner, batch, _STRATEGY.value)
  info = {"workload": "conv4", "method": method, "inner_steps": steps}
  rows = [
    {
      **info,
      "impl": "metalearn",
      "strategy": j.strategy,
      "compile_s": j.compile_s,
      **j.time(_REPEATS.value),
    }
  ]
  print(_fmt(rows[-1]), flush=True)
  ce = torch.nn.functional.cross_entropy
  theta = jax.tree_util.tree_map(np.asarray, j.state.theta["params"])
  kw = {"lr": 0.4, "steps": steps}

  def make_loop(dtype):
    tb = _conv4_tensors(batch, dtype)
    meta = lambda p: tr.maml_loop_grads(tr.conv4, ce, p, tb, first_order=first, **kw)
    return tr.conv4_from_jax(theta, dtype), meta, tr.conv4_to_jax

  def make_func(dtype):
    tb, loss_fn = (
      _conv4_tensors(batch, dtype),
      tr.maml_func_loss(tr.conv4_manual_norm, ce, first_order=first, **kw),
    )

    def meta(p):
      grads, loss = torch.func.grad_and_value(loss_fn)({k: v.detach() for k, v in p.items()}, tb)
      for k, v in p.items():
        v.grad = grads[k]
      return loss.item()

    return tr.conv4_from_jax(theta, dtype), meta, tr.conv4_to_jax

  def make_higher(dtype):
    tb, module = _conv4_tensors(batch, dtype), tr.Conv4Module(tr.conv4_from_jax(theta, dtype))
    meta = lambda _: tr.maml_higher_grads(module, ce, tb, **kw)
    return dict(module.named_parameters()), meta, lambda _: tr.conv4_to_jax(module.named_grads())

  makers = {"loop": make_loop, "func": make_func, "higher": None if first else make_higher}
  for impl in _IMPLS.value:
    if impl not in makers:
      raise ValueError(f"unknown PyTorch implementation {impl!r}; known: {sorted(makers)}")
    if makers[impl] is not None:
      rows.append(_torch_impl(impl, makers[impl], j, _REPEATS.value, **info))
      print(_fmt(rows[-1]), flush=True)
  return rows


def sinusoid_rows() -> list[dict]:
  import torch

  from benchmarks import torch_reference as tr

  tasks, t = Sinusoid(shots=10, queries=10), 25
  learner = algorithms.get("maml")(MLP(hidden=(40, 40)), inner_lr=0.01, inner_steps=1)
  batch = tasks.sample(np.random.default_rng(0), t)
  j = _Jax(learner, batch, "vmap")
  info = {"workload": "sinusoid", "method": "maml", "inner_steps": 1}
  counter = iter(range(10**9))

  def jax_step():
    fresh = tasks.sample(np.random.default_rng([0, next(counter)]), t)
    jax.block_until_ready(j.step(j.state, fresh))

  timing = common.time_calls(jax_step, repeats=_SIN_REPEATS.value, warmup=10)
  rows = [{**info, "impl": "metalearn", "strategy": "vmap", "compile_s": j.compile_s, **timing}]
  print(_fmt(rows[-1]), flush=True)
  k = _SIN_PER_CALL.value
  if k > 1:
    # What training does with steps_per_call=k: k batches sampled on the host
    # (one numpy draw per step, as above), then one compiled lax.scan over them.
    compile_s, timing = common.time_steps_per_call(
      core.make_meta_step(learner, j.optimizer, strategy="vmap"),
      j.state,
      lambda: tasks.sample(np.random.default_rng([0, next(counter)]), t),
      k,
      repeats=max(_SIN_REPEATS.value // k, 20),
    )
    row = {**info, "impl": "metalearn", "strategy": "vmap", "steps_per_call": k}
    rows.append({**row, "compile_s": compile_s, **timing})
    print(_fmt(rows[-1]), flush=True)
  if _ALL_CORES is not None:  # PyTorch's threads start from this one: every core for them
    os.sched_setaffinity(0, _ALL_CORES)
  mse = torch.nn.functional.mse_loss
  theta = jax.tree_util.tree_map(np.asarray, j.state.theta["params"])

  def make_loop(dtype):
    calls = iter(range(10**9))

    def meta(p):
      # The agreement check uses the reference batch; timed calls sample fresh
      # tasks with the same numpy sampler, as the metalearn side does.
      i = next(calls)
      b = batch if i == 0 else tasks.sample(np.random.default_rng([0, i]), t)
      tb = [
        torch.from_numpy(np.asarray(a)).to(device=tr.DEVICE, dtype=dtype)
        for a in (b.support.x, b.support.y, b.query.x, b.query.y)
      ]
      return tr.maml_loop_grads(tr.mlp, mse, p, tb, lr=0.01, steps=1, first_order=False)

    return tr.mlp_from_jax(theta, dtype), meta, tr.mlp_to_jax

  rows.append(_torch_impl("loop", make_loop, j, _SIN_REPEATS.value, **info))
  print(_fmt(rows[-1]), flush=True)
  return rows


def protonet_rows() -> list[dict]:
  from benchmarks import torch_reference as tr

  learner = algorithms.get("protonet")(Conv4(ways=None), ways=5)
  batch = common.image_episodes(1, 5, 1, 15)
  j = _Jax(learner, batch, _STRATEGY.value)
  info = {"workload": "protonet", "method": "protonet", "inner_steps": 0}
  timing = j.time(_REPEATS.value * 4)
  rows = [{**info, "impl": "metalearn", "strategy": j.strategy, "compile_s": j.compile_s, **timing}]
  print(_fmt(rows[-1]), flush=True)
  theta = jax.tree_util.tree_map(np.asarray, j.state.theta["params"])

  def make_plain(dtype):
    sx, sy, qx, qy = (a[0] for a in _conv4_tensors(batch, dtype))

    def meta(p):
      loss = tr.protonet_loss(p, sx, sy, qx, qy, 5)
      loss.backward()
      return loss.item()

    return tr.conv4_from_jax(theta, dtype), meta, tr.conv4_to_jax

  rows.append(_torch_impl("plain", make_plain, j, _REPEATS.value * 4, **info))
  print(_fmt(rows[-1]), flush=True)
  return rows


def _impl(r: dict) -> str:
  """The implementation's name; `metalearn/K` for K steps per compiled call."""
  return r["impl"] + (f"/{r['steps_per_call']}" if "steps_per_call" in r else "")


def _fmt(r: dict) -> str:
  impl = _impl(r)
  head = f"{r['workload']:9s} {r['method']:8s} k={r['inner_steps']} {impl:12s}"
  if "error" in r:
    return f"{head} ERROR {r['error'][:120]}"
  s = f"{head} {r['median_s'] * 1e3:10.2f} ms [{r['min_s'] * 1e3:.2f}-{r['max_s'] * 1e3:.2f}]"
  if "pipelined_s" in r:
    s += f" pipelined {r['pipelined_s'] * 1e3:.2f} ms"
  if "compile_s" in r:
    s += f" compile {r['compile_s']:.1f}s ({r['strategy']})"
  if "first_step_s" in r:
    s += (
      f" first {r['first_step_s']:.2f}s grad-err f64 {r['grad_rel_err_float64']:.1e}"
      f" f32 {r['grad_rel_err_float32']:.1e}"
    )
  return s


def _ratios(rows: list[dict]) -> None:
  """PyTorch rows: time over metalearn's one-step-per-call row; metalearn rows: the
  fastest PyTorch row's time over theirs."""
  key = lambda r: (r["workload"], r["method"], r["inner_steps"])
  ours, fastest = {}, {}
  for r in rows:
    if "median_s" not in r:
      continue
    if r["impl"] == "metalearn":
      ours.setdefault(key(r), r["median_s"])
    else:
      fastest[key(r)] = min(fastest.get(key(r), np.inf), r["median_s"])
  for r in rows:
    if "median_s" in r and r["impl"] == "metalearn" and key(r) in fastest:
      r["fastest_torch_over_this"] = fastest[key(r)] / r["median_s"]
      if "pipelined_s" in r:
        r["fastest_torch_over_pipelined"] = fastest[key(r)] / r["pipelined_s"]
    elif "median_s" in r and key(r) in ours:
      r["torch_over_metalearn"] = r["median_s"] / ours[key(r)]
  print(
    "\nseconds per meta-step (median); ratio: PyTorch rows, their time over metalearn's"
    " (one step per call); metalearn rows, the fastest PyTorch time over theirs; pipelined:"
    " the same over metalearn's calls issued back to back, as training issues them"
  )
  print(
    f"{'workload':9s} {'method':8s} {'K':>2s} {'impl':12s} {'s/step':>10s}"
    f" {'ratio':>7s} {'agrees':>7s} {'pipelined':>9s}"
  )
  for r in rows:
    med = f"{r['median_s']:.4f}" if "median_s" in r else "error"
    impl = _impl(r)
    ratio = r.get("torch_over_metalearn", r.get("fastest_torch_over_this"))
    ratio = "" if ratio is None else f"{ratio:.2f}"
    agrees = {True: "yes", False: "NO"}.get(r.get("agrees"), "")
    piped = r.get("fastest_torch_over_pipelined")
    piped = "" if piped is None else f"{piped:.2f}"
    print(
      f"{r['workload']:9s} {r['method']:8s} {r['inner_steps']:2d} {impl:12s} {med:>10s}"
      f" {ratio:>7s} {agrees:>7s} {piped:>9s}"
    )


def main(argv):
  global _ALL_CORES
  del argv
  import torch

  from benchmarks import torch_reference

  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  threads = _THREADS.value or usable
  # PyTorch's worker threads start here, with every core, before --host_cores pins any.
  torch.set_num_threads(threads)
  split = None
  if _HOST_CORES.value:  # before anything starts JAX
    if set(_WORKLOADS.value) != {"sinusoid"}:
      raise app.UsageError("--host_cores is for --workloads=sinusoid alone (it shrinks XLA's pool)")
    _ALL_CORES = frozenset(os.sched_getaffinity(0))
    compute, host = parallel.reserve_host_cores(_HOST_CORES.value)
    split = {"xla_pool": sorted(compute), "python": sorted(host)}
  m = common.machine()
  if split is not None:  # machine() saw this thread's cores only
    m["cores_usable"], m["host_cores"] = len(_ALL_CORES), split
  device = _TORCH_DEVICE.value
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  torch_reference.DEVICE = device
  try:
    import higher

    higher_version = getattr(higher, "__version__", "installed")
  except ImportError:
    higher_version = None
  rows = []
  if "conv4" in _WORKLOADS.value:
    for steps in map(int, _INNER_STEPS.value):
      for order in _ORDERS.value:
        rows += conv4_rows(steps, order)
  if "sinusoid" in _WORKLOADS.value:
    rows += sinusoid_rows()
  if "protonet" in _WORKLOADS.value:
    rows += protonet_rows()
  _ratios(rows)
  disagree = [r for r in rows if r.get("agrees") is False]
  if disagree:
    print(
      f"\n{len(disagree)} implementation(s) disagree with metalearn beyond {_TOLERANCE.value:g}"
    )
  common.write_json(
    _OUT.value,
    {
      "machine": {
        **m,
        "torch": torch.__version__,
        "higher": higher_version,
        "torch_threads": threads,
        "torch_device": device,
      },
      "meta_batch_size": _META_BATCH.value,
      "rows": rows,
    },
  )


if __name__ == "__main__":
  app.run(main)
