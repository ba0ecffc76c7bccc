r"""Peak memory and time of one meta-step as the inner loop grows: MAML vs. iMAML.

  python -m benchmarks.imaml_memory [--meta_batch_size=1] [--inner_steps=1,5,10,25,50,100] \
      [--methods=maml,maml_remat,fomaml,imaml] [--out=imaml_memory.json] [--plot=FILE.png]
  python -m benchmarks.imaml_memory --from_json=imaml_memory.json --plot=FILE.png

The Omniglot Conv4 5-way 1-shot setting with random images: per task a
support set `[5, 28, 28, 1]` (one image per class) and 15 queries per class
`[75, 28, 28, 1]`, cross-entropy, inner SGD (step 0.1), outer Adam. For each
method and inner step count K, in a fresh subprocess (so that neither memory
nor compiled programs carry over):

- `xla_total_mb`, `xla_temp_mb`: XLA's compiled memory analysis of the jitted
  meta-step (`jit(step).lower(...).compile().memory_analysis()`, a
  `CompiledMemoryStats`): the buffers the program needs, arguments + outputs -
  aliased (donated) + temporaries, and the temporaries alone
  (`temp_size_in_bytes`, the part that depends on K). jax 0.10.2 also has
  `peak_memory_in_bytes`, kept as `xla_peak_field_mb`; on the CPU backend it
  leaves the temporaries out (it equals arguments + outputs - aliased), so it is
  not used for the comparison.
- `rss_peak_mb`, `rss_step_mb`: the process's measured peak resident memory
  while running meta-steps (after compilation; Linux `VmHWM`, reset through
  `/proc/self/clear_refs` once compiled), and that peak minus the resident
  memory just before the first step: the cross-check of the XLA figure. Where
  the reset is not allowed, the lifetime peak (`ru_maxrss`, compilation
  included) is reported and `rss_reset` is false.
- `compile_s` and `step_s`: compile time, and the median wall time of
  `--timed_steps` meta-steps after one warm-up step.

Methods: `maml` (second order, differentiating through the K steps), `maml_remat`
(the same with each inner step rematerialised in the backward pass),
`fomaml` (first order) and `imaml` (lambda = `--lam`, `--cg_steps` CG iterations,
the implicit gradient; nothing of the inner loop is kept for the backward pass).
Tasks are batched with `--strategy` (`unroll` by default: XLA:CPU runs
convolutions with per-task weights fastest as separate programs, see DESIGN.md).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
import optax
from absl import app, flags

from benchmarks import common
from metalearn import algorithms, core
from metalearn import episodes as ep
from metalearn.models import Conv4

METHODS = ("maml", "maml_remat", "fomaml", "imaml")

_METHODS = flags.DEFINE_list("methods", list(METHODS), f"methods, from {METHODS}")
_STEPS = flags.DEFINE_list("inner_steps", ["1", "5", "10", "25", "50", "100"], "K values")
_MAML_MAX = flags.DEFINE_integer(
  "maml_max_steps", 100, "largest K run for second-order MAML (with and without remat)"
)
_BATCH = flags.DEFINE_integer("meta_batch_size", 1, "tasks per meta-step")
_STRATEGY = flags.DEFINE_string("strategy", "unroll", "task batching strategy (core.STRATEGIES)")
_TIMED = flags.DEFINE_integer("timed_steps", 2, "timed meta-steps (after one warm-up step)")
_LAM = flags.DEFINE_float("lam", 2.0, "iMAML proximal weight")
_CG = flags.DEFINE_integer("cg_steps", 5, "iMAML CG iterations")
_TIMEOUT = flags.DEFINE_integer("timeout", 600, "seconds allowed per configuration")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")
_PLOT = flags.DEFINE_string("plot", None, "also draw memory and time against K into this PNG")
_FROM_JSON = flags.DEFINE_string(
  "from_json", None, "draw --plot from this earlier --out file instead of measuring"
)
_CHILD = flags.DEFINE_string("child", None, "internal: run one 'method:K' and print JSON")

WAYS, SHOTS, QUERIES = 5, 1, 15
INNER_LR = 0.1
MB = 2**20


def make_learner(method: str, inner_steps: int) -> core.MetaLearner:
  common_args = dict(inner_lr=INNER_LR, inner_steps=inner_steps, objective="cross_entropy")
  model = Conv4(ways=WAYS)
  if method == "imaml":
    return algorithms.get("imaml")(model, lam=_LAM.value, cg_steps=_CG.value, **common_args)
  if method in ("maml", "maml_remat", "fomaml"):
    return algorithms.get("maml")(
      model, first_order=method == "fomaml", remat=method == "maml_remat", **common_args
    )
  raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def random_episodes(num_tasks: int, seed: int = 0) -> ep.Episode:
  """Random 'Omniglot' episodes: `[T, 5, 28, 28, 1]` support, `[T, 75, 28, 28, 1]` query."""
  rng = np.random.default_rng(seed)

  def split(per_class):
    n = WAYS * per_class
    x = rng.uniform(size=(num_tasks, n, 28, 28, 1)).astype(np.float32)
    y = np.tile(np.repeat(np.arange(WAYS, dtype=np.int32), per_class), (num_tasks, 1))
    return ep.Split(x, y, np.ones((num_tasks, n), bool))

  return ep.Episode(split(SHOTS), split(QUERIES))


def _status_kb(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def run_one(method: str, inner_steps: int) -> dict:
  """Compiles and runs one configuration in this process; returns its measurements."""
  learner = make_learner(method, inner_steps)
  optimizer = optax.adam(1e-3)
  batch = jax.device_put(random_episodes(_BATCH.value))
  state = core.init_state(learner, optimizer, jax.random.PRNGKey(0), ep.task(batch, 0))
  step = jax.jit(
    core.make_meta_step(learner, optimizer, strategy=_STRATEGY.value), donate_argnums=0
  )
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  rss_reset = _reset_peak_rss()
  rss_before = _status_kb("VmRSS")
  times = []
  for i in range(1 + _TIMED.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    if i:
      times.append(time.perf_counter() - start)
  peak_kb = _status_kb("VmHWM") if rss_reset else None
  if peak_kb is None:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  metrics = jax.device_get(metrics)
  return {
    "method": method,
    "inner_steps": inner_steps,
    "xla_total_mb": (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      - memory.alias_size_in_bytes
      + memory.temp_size_in_bytes
    )
    / MB,
    "xla_peak_field_mb": getattr(memory, "peak_memory_in_bytes", float("nan")) / MB,
    "xla_temp_mb": memory.temp_size_in_bytes / MB,
    "xla_argument_mb": memory.argument_size_in_bytes / MB,
    "xla_output_mb": memory.output_size_in_bytes / MB,
    "xla_alias_mb": memory.alias_size_in_bytes / MB,
    "rss_peak_mb": peak_kb / 1024,
    "rss_step_mb": (peak_kb - rss_before) / 1024 if rss_reset and rss_before else float("nan"),
    "rss_reset": rss_reset,
    "compile_s": compile_s,
    "step_s": statistics.median(times),
    "step_s_all": times,
    "loss": float(metrics["loss"]),
    "nonfinite": float(metrics["nonfinite"]),
    **({"cg_residual": float(metrics["cg_residual"])} if "cg_residual" in metrics else {}),
  }


def spawn(method: str, inner_steps: int) -> dict:
  """Runs one configuration in a fresh Python process."""
  argv = [sys.executable, "-m", "benchmarks.imaml_memory", f"--child={method}:{inner_steps}"]
  argv += [
    f"--meta_batch_size={_BATCH.value}",
    f"--strategy={_STRATEGY.value}",
    f"--timed_steps={_TIMED.value}",
    f"--lam={_LAM.value}",
    f"--cg_steps={_CG.value}",
  ]
  start = time.perf_counter()
  try:
    done = subprocess.run(
      argv, capture_output=True, text=True, timeout=_TIMEOUT.value, env=dict(os.environ)
    )
  except subprocess.TimeoutExpired:
    return {"method": method, "inner_steps": inner_steps, "error": f"timeout {_TIMEOUT.value}s"}
  lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
  if done.returncode or not lines:
    tail = (done.stderr or done.stdout)[-2000:]
    return {"method": method, "inner_steps": inner_steps, "error": tail}
  row = json.loads(lines[-1])
  row["process_s"] = time.perf_counter() - start
  return row


def _fmt(row: dict) -> str:
  head = f"{row['method']:<11}{row['inner_steps']:>5}"
  if "error" in row:
    return f"{head}  error: {row['error'].strip().splitlines()[-1][:80]}"
  return (
    f"{head}{row['xla_total_mb']:>10.1f}{row['xla_temp_mb']:>10.1f}{row['rss_peak_mb']:>10.0f}"
    f"{row['rss_step_mb']:>10.1f}{row['compile_s']:>9.1f}{row['step_s']:>9.3f}"
  )


def plot(rows: list[dict], path: str, meta_batch_size: int) -> None:
  """Draws XLA's memory and the step time against K, one line per method, into `path`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for method in METHODS:
    ok = sorted(
      (r for r in rows if r["method"] == method and "error" not in r),
      key=lambda r: r["inner_steps"],
    )
    if not ok:
      continue
    ks = [r["inner_steps"] for r in ok]
    axes[0].plot(ks, [r["xla_total_mb"] for r in ok], marker="o", label=method)
    axes[1].plot(ks, [r["step_s"] for r in ok], marker="o", label=method)
  for ax, label in zip(
    axes, ("XLA memory of one meta-step (MiB)", "seconds per meta-step"), strict=True
  ):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inner steps K")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend()
  fig.suptitle(f"Conv4 {WAYS}-way {SHOTS}-shot, meta-batch {meta_batch_size}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  print(f"wrote {path}")


def main(argv):
  del argv
  if _CHILD.value:
    method, k = _CHILD.value.split(":")
    print(json.dumps(run_one(method, int(k))), flush=True)
    return
  if _FROM_JSON.value:
    if not _PLOT.value:
      raise app.UsageError("--from_json only draws a figure: give --plot=FILE.png")
    with open(_FROM_JSON.value) as f:
      run = json.load(f)
    plot(run["results"], _PLOT.value, run["setting"]["meta_batch_size"])
    return
  for m in _METHODS.value:
    if m not in METHODS:
      raise ValueError(f"--methods: unknown {m!r}; choose from {METHODS}")
  steps = [int(k) for k in _STEPS.value]
  info = common.machine()
  print(
    f"Conv4 {WAYS}-way {SHOTS}-shot, {QUERIES} queries/class, meta-batch {_BATCH.value}, "
    f"strategy={_STRATEGY.value}, iMAML lam={_LAM.value} cg_steps={_CG.value}; "
    f"{info['cpu']} ({info['cores']} cores), jax {info['jax']}"
  )
  print(
    f"{'method':<11}{'K':>5}{'XLA total':>10}{'XLA temp':>10}{'RSS peak':>10}{'RSS step':>10}"
    f"{'compile':>9}{'s/step':>9}"
  )
  print(f"{'':<16}{'MiB':>10}{'MiB':>10}{'MiB':>10}{'MiB':>10}{'s':>9}{'median':>9}")
  rows = []
  for method in _METHODS.value:
    for k in steps:
      if method in ("maml", "maml_remat") and k > _MAML_MAX.value:
        continue
      row = spawn(method, k)
      rows.append(row)
      print(_fmt(row), flush=True)
  by = {(r["method"], r["inner_steps"]): r for r in rows if "error" not in r}
  summary = {}
  for method in _METHODS.value:
    ks = sorted(k for (m, k) in by if m == method)
    if len(ks) > 1:
      lo, hi = by[(method, ks[0])], by[(method, ks[-1])]
      summary[method] = {
        "k_min": ks[0],
        "k_max": ks[-1],
        "xla_total_ratio": hi["xla_total_mb"] / lo["xla_total_mb"],
        "rss_peak_ratio": hi["rss_peak_mb"] / lo["rss_peak_mb"],
        "rss_step_ratio": hi["rss_step_mb"] / lo["rss_step_mb"],
      }
      ratios = summary[method]
      print(
        f"{method}: memory at K={ks[-1]} / at K={ks[0]}: XLA total "
        f"{ratios['xla_total_ratio']:.2f}x, RSS peak {ratios['rss_peak_ratio']:.2f}x, "
        f"RSS step {ratios['rss_step_ratio']:.2f}x"
      )
  common.write_json(
    _OUT.value,
    {
      "machine": info,
      "setting": {
        "model": "Conv4 (64 channels)",
        "ways": WAYS,
        "shots": SHOTS,
        "queries_per_class": QUERIES,
        "meta_batch_size": _BATCH.value,
        "strategy": _STRATEGY.value,
        "inner_lr": INNER_LR,
        "imaml_lam": _LAM.value,
        "imaml_cg_steps": _CG.value,
        "timed_steps": _TIMED.value,
      },
      "results": rows,
      "summary": summary,
    },
  )
  if _PLOT.value:
    plot(rows, _PLOT.value, _BATCH.value)


if __name__ == "__main__":
  app.run(main)
