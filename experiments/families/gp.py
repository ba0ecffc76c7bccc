"""GP curves: neural processes meta-trained on GP samples, scored against the exact GP posterior.

`train_and_evaluate(config, workdir)` meta-trains `config.method` (a factory
of `metalearn.algorithms.neural_process`) through `training.meta_train` on
tasks sampled on the device, evaluates KL per target point and interval
coverage on held-out tasks (`metalearn.probabilistic.gp_evaluator`), adds the
benchmark's trivial baseline and the diagonal GP as reference rows on the same
tasks, and draws `gp.png`: context points, targets, the model's mean +- 2 sigma
beside the exact GP's.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import families
from metalearn import algorithms, core, parallel, probabilistic, training
from metalearn.algorithms import neural_process
from metalearn.data import gp

LATENT = ("np", "anp")


def _error(field: str, value, why: str):
  from experiments.train import ConfigError

  raise ConfigError(f"--config.{field}={value!r}: {why}")


def learner_kwargs(config) -> dict:
  """The learner block's set values (None: the factory's default)."""
  return {k: v for k, v in config.learner.items() if v is not None}


def learner_with_defaults(config) -> dict:
  factory = neural_process.np_latent if config.method in LATENT else neural_process.cnp
  defaults = algorithms.keyword_defaults(factory, ("attentive",))
  return {**defaults, **learner_kwargs(config)}


def build_learner(config) -> core.MetaLearner:
  return neural_process.REGISTRY[config.method](**learner_kwargs(config))


def num_steps(config) -> int:
  """`config.num_steps` when set, else epochs * tasks_per_epoch / meta_batch_size."""
  if config.num_steps:
    return config.num_steps
  return config.epochs * config.tasks_per_epoch // config.meta_batch_size


def validate(config, workdir: str) -> None:
  """Raises `ConfigError` naming the first bad field; touches nothing on disk."""
  if config.method not in neural_process.REGISTRY:
    _error("method", config.method, f"choose one of {', '.join(neural_process.REGISTRY)}")
  if config.kernel not in gp.KERNELS:
    _error("kernel", config.kernel, f"choose one of {', '.join(gp.KERNELS)}")
  for name in ("meta_batch_size", "tasks_per_epoch", "epochs", "num_target", "num_eval_tasks"):
    if not isinstance(config[name], int) or config[name] < 1:
      _error(name, config[name], "must be an int >= 1")
  if not 0 <= config.min_context <= config.max_context:
    _error("min_context", config.min_context, "need 0 <= min_context <= max_context")
  if not isinstance(config.num_steps, int) or config.num_steps < 0:
    _error("num_steps", config.num_steps, "must be an int >= 0 (0: from epochs)")
  if not config.outer_lr > 0:
    _error("outer_lr", config.outer_lr, "must be > 0")
  try:
    build_learner(config)
  except (TypeError, ValueError) as e:
    _error("learner", learner_kwargs(config), str(e))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    _error("workdir", workdir, "exists and is not a directory")


def sampler(config) -> training.DeviceSampler:
  kernel = gp.get_kernel(config.kernel)
  return training.on_device(
    lambda key, n: gp.sample_tasks(
      key,
      n,
      kernel=kernel,
      min_context=config.min_context,
      max_context=config.max_context,
      num_target=config.num_target,
    )
  )


def reference_rows(config, learner_key, names=("trivial", "diagonal_gp")) -> dict:
  """The trivial baseline and the diagonal GP (those in `names`) on the run's held-out tasks."""
  kernel = gp.get_kernel(config.kernel)
  batches = training.fixed_batches(
    sampler(config),
    config.seed,
    training.TEST_STREAM,
    config.num_eval_tasks,
    config.eval_batch_size,
  )
  mean, std = probabilistic.empirical_moments(batches)
  rows = {}
  for learner in (probabilistic.constant(mean, std), probabilistic.diagonal_gp(kernel)):
    if learner.name not in names:
      continue
    step = jax.jit(core.make_eval_step(probabilistic.gp_evaluator(learner, kernel)))
    theta = learner.init(learner_key, core.task(batches[0], 0))
    rows[learner.name] = core.evaluate(step, theta, batches, learner_key)
  if "trivial" in rows:
    rows["trivial"]["moments"] = {"mean": mean, "std": std}
  return rows


def figure(config, path: str, learner: core.MetaLearner, theta) -> None:
  """Held-out tasks: context, targets, model mean +- 2 sigma beside the exact GP's."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kernel = gp.get_kernel(config.kernel)
  n = config.num_figure_tasks
  tasks = gp.sample_tasks(
    training.episode_key(config.seed, training.TEST_STREAM, 10_000),
    n,
    kernel=kernel,
    min_context=config.min_context,
    max_context=config.max_context,
    num_target=config.num_target,
  )
  grid = jnp.linspace(*gp.X_RANGE, 200)[:, None]
  fig, axes = plt.subplots(2, n, figsize=(4 * n, 6), sharex=True, sharey=True, squeeze=False)
  for i in range(n):
    task = core.task(tasks, i)
    c, t = task.context, task.target
    pred = learner.adapt(theta, c, jax.random.PRNGKey(i))(grid)
    model_mean, model_std = probabilistic.moments(pred)
    gp_mean, gp_cov = gp.posterior(kernel, c, grid)
    bands = [
      (config.method, model_mean, model_std),
      ("exact GP", gp_mean, jnp.sqrt(jnp.diag(gp_cov))),
    ]
    for row, (label, mean, std) in enumerate(bands):
      ax = axes[row, i]
      g, mean, std = (np.asarray(a).reshape(-1) for a in (grid, mean, std))
      ax.fill_between(g, mean - 2 * std, mean + 2 * std, alpha=0.25, label=f"{label} ±2σ")
      ax.plot(g, mean, label=f"{label} mean")
      ax.scatter(t.x[:, 0], t.y[:, 0], s=8, c="gray", label="targets (truth)")
      m = np.asarray(c.mask)
      ax.scatter(np.asarray(c.x[m, 0]), np.asarray(c.y[m, 0]), s=20, c="k", label="context")
      ax.set_title(f"{label}, {int(m.sum())} context points", fontsize=9)
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].legend(fontsize=7)
  fig.suptitle(f"{config.method} on GP ({config.kernel}) curves")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def train_and_evaluate(config, workdir: str) -> dict:
  """Validates, meta-trains, evaluates; writes config.json, eval.json and gp.png in `workdir`."""
  validate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_primary():
    record = {**json.loads(config.to_json()), "learner": learner_with_defaults(config)}
    record["num_steps_run"] = num_steps(config)
    training.write_json_atomic(os.path.join(workdir, "config.json"), record)
  learner = build_learner(config)
  kernel = gp.get_kernel(config.kernel)
  tasks = sampler(config)
  result = training.meta_train(
    learner,
    tasks,
    evaluate=probabilistic.gp_evaluator(learner, kernel),
    optimizer=optax.adam(config.outer_lr),
    workdir=workdir,
    **families.loop_settings(
      config,
      num_steps=num_steps(config),
      strategy=config.strategy,
      on_nonfinite=config.on_nonfinite,
      max_skipped_fraction=config.max_skipped_fraction,
      steps_per_call=config.steps_per_call,
    ),
  )
  summary = result.eval_summary
  if parallel.is_primary():
    path = os.path.join(workdir, "eval.json")
    with open(path) as f:
      record = json.load(f)
    record["kernel"] = config.kernel
    record["reference"] = reference_rows(config, jax.random.PRNGKey(config.seed + 1))
    training.write_json_atomic(path, record)
    figure(config, os.path.join(workdir, "gp.png"), learner, parallel.fetch(result.state.theta))
    print(f"wrote {path} and {os.path.join(workdir, 'gp.png')}", flush=True)
  return summary
