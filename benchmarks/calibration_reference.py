"""Calibration curves of the GP benchmark's reference rows: the diagonal GP, the trivial baseline.

  python -m benchmarks.calibration_reference --kernel=eq --num_tasks=1000 \
      --out=docs/measurements/calibration_cpu2/gp_reference_eq.json \
      --figure=docs/measurements/calibration_cpu2/gp_reference_eq.png

Observed coverage of the central p-interval (`probabilistic.calibration_curve`)
at p = 0.05, 0.10, ..., 0.95 on held-out tasks of `experiments/configs/np_gp.py`
(seed 0, the test stream, drawn `--batch_size` at a time, each batch from its
own seed as `training.fixed_batches` draws them): `pooled` is the
fraction of all target points inside (every task has 50 targets, so it is also
the mean of the per-task fractions), `task_mean` / `task_ci95` the mean and 95%
confidence interval over tasks (the points of one task are correlated, the
tasks are independent). `width` is the mean width of the central 90% interval
(sharpness): a calibrated model can still be uninformative, and the trivial
baseline (N(empirical mean, empirical variance) at every target: the GP's prior
predictive, marginally calibrated by construction) shows it.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from experiments.families import gp as family
from metalearn import core, plotting, probabilistic, training
from metalearn.data import gp

parser = argparse.ArgumentParser()
parser.add_argument("--kernel", default="eq")
parser.add_argument("--num_tasks", type=int, default=1000)
parser.add_argument("--batch_size", type=int, default=250)
parser.add_argument("--out", required=True)
parser.add_argument("--figure", default="")
args = parser.parse_args()

config = common.gp_reference_config(args.kernel, args.num_tasks, args.batch_size)
kernel = gp.get_kernel(config.kernel)
levels = np.asarray(probabilistic.CURVE_LEVELS)
z90 = 1.6448536269514722  # central 90% half-width of a standard normal
t = time.time()
batches = training.fixed_batches(
  family.sampler(config),
  config.seed,
  training.TEST_STREAM,
  config.num_eval_tasks,
  config.eval_batch_size,
)
mean, std = probabilistic.empirical_moments(batches)
key = jax.random.PRNGKey(config.seed + 1)


def task_curve(learner):
  def one(theta, task, key):
    pred = learner.adapt(theta, task.context, key)(task.target.x)
    inside, n = probabilistic.calibration_curve(pred, task.target)
    _, sd = probabilistic.moments(pred)
    width = 2 * z90 * jnp.sum(jnp.where(task.target.mask, sd, 0.0)) / jnp.maximum(n, 1)
    return inside, n, width

  return jax.jit(core.make_eval_step(one))


rows = {}
for learner in (probabilistic.diagonal_gp(kernel), probabilistic.constant(mean, std)):
  theta = learner.init(key, core.task(batches[0], 0))
  step = task_curve(learner)
  out = [jax.device_get(step(theta, b, jax.random.fold_in(key, i))) for i, b in enumerate(batches)]
  inside, n, width = (np.concatenate([np.asarray(o[j]) for o in out]) for j in range(3))
  frac = inside / n[:, None]
  rows[learner.name] = {
    "pooled": (inside.sum(0) / n.sum()).tolist(),
    "task_mean": frac.mean(0).tolist(),
    "task_ci95": (1.96 * frac.std(0, ddof=1) / np.sqrt(frac.shape[0])).tolist(),
    "max_abs_gap": float(np.max(np.abs(inside.sum(0) / n.sum() - levels))),
    "width90_mean": float(width.mean()),
    "targets": int(n.sum()),
  }
record = {
  "kernel": args.kernel,
  "num_tasks": args.num_tasks,
  "levels": levels.tolist(),
  "trivial_moments": {"mean": mean, "std": std},
  "seconds": time.time() - t,
  "machine": common.machine(),
  **rows,
}
with open(args.out, "w") as f:
  json.dump(record, f, indent=1)
if args.figure:
  names = {"diagonal_gp": "diagonal GP (exact marginals)", "trivial": "trivial (empirical moments)"}
  plotting.plot_coverage(
    args.figure,
    levels=levels,
    curves={names[k]: np.asarray(v["pooled"]) for k, v in rows.items()},
    title=f"GP ({args.kernel}), {args.num_tasks} held-out tasks",
  )
for name, row in rows.items():
  at = {
    f"{round(100 * p)}": round(row["pooled"][i], 4)
    for i, p in enumerate(levels)
    if p in (0.5, 0.9, 0.95)
  }
  print(
    name,
    "coverage",
    at,
    "max |gap|",
    round(row["max_abs_gap"], 4),
    "width90",
    round(row["width90_mean"], 3),
  )
