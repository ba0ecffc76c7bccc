"""Learned optimizers: the LSTM optimizer meta-trained on optimizees, next to tuned baselines.

`config.optimizee` is `quadratic` (10-d `||W theta - y||^2`, Sec. 3.1 of
Andrychowicz et al. 2016) or `mnist` (the MLP of Sec. 3.2 on minibatches of
128; the IDX files from `config.mnist_dir`, else `$METALEARN_MNIST_DIR`,
else tensorflow-datasets). The learner is `learned_optim.lstm_meta_learner`
with `config.learner` as its keyword arguments (`estimator`: `tbptt`, `es` or
`pes`), meta-trained by `training.meta_train` on tasks sampled on the device.

After training, on `num_eval_tasks` held-out tasks (the TEST stream) the LSTM
optimizer and each baseline of `config.baselines` (Adam, RMSprop, SGD with
momentum, Nesterov), each at the learning rate of `config.lr_grid` with the
least mean loss at step `unroll` on `num_tune_tasks` tuning tasks (the
validation stream), are run for `max(eval_steps)` steps. Written into the
workdir: `comparison.json` (the grid, the chosen rates, loss at each of
`eval_steps` as mean ± 95% CI, steps to reach Adam's loss at the first of
them, the mean curves), `curves.npz` (every task's curve per optimizer) and
`loss_curves.png` (log scale: mean, and the 25-75%
band over tasks), besides `meta_train`'s checkpoints, metrics and `eval.json`
(the LSTM alone, on `num_val_tasks` test-stream tasks: the same tasks as
comparison.json's when `num_val_tasks = num_eval_tasks`, a draw of their own
otherwise; the LSTM's unroll is the costly part on MNIST, so it is not run
twice on all of them).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from typing import Any

import jax
import numpy as np
import optax
from ml_collections import config_dict

from experiments import families
from experiments.configs import _common
from experiments.train import ConfigError, has_checkpoint
from metalearn import algorithms, parallel, training
from metalearn.learned_optim import (
  ESTIMATORS,
  baselines,
  evaluate_optimizer,
  lstm_meta_learner,
  lstm_optimizer,
  mnist,
  quadratic,
)

METHODS = tuple(ESTIMATORS)  # the config file's argument: the meta-gradient estimator
OPTIMIZEES = ("quadratic", "mnist")
FAMILY_ARGUMENTS = ("objective", "start", "name")
TUNE_STREAM = 4  # the baselines' tuning tasks (training's streams are 1, 2, 3)
NOT_IDENTITY = frozenset(
  {"num_steps", "eval_every", "checkpoint_every", "log_every", "num_val_tasks", "num_eval_tasks"}
  | {"eval_batch_size", "eval_steps", "baselines", "lr_grid", "num_tune_tasks", "mnist_dir"}
  | {"host_cores", "budget_note"}
)


def hyperparameters() -> dict[str, Any]:
  """`lstm_meta_learner`'s configurable keyword arguments and their defaults."""
  return algorithms.keyword_defaults(lstm_meta_learner, FAMILY_ARGUMENTS)


def learner_block(**settings) -> config_dict.ConfigDict:
  """`config.learner`: the learner's hyperparameters, None meaning the factory's default."""
  return _common.block_of(hyperparameters(), **settings)


def common_config(optimizee: str, estimator: str) -> config_dict.ConfigDict:
  """The fields of every lopt config (each config file sets its family's values on top)."""
  c = config_dict.ConfigDict()
  c.task, c.method, c.optimizee, c.seed = "lopt", "lstm", optimizee, 0
  c.num_steps, c.meta_batch_size, c.outer_lr, c.max_grad_norm = 1000, 128, 1e-3, 1.0
  c.eval_every, c.checkpoint_every, c.log_every = 500, 500, 50
  c.num_val_tasks, c.num_eval_tasks, c.eval_batch_size = 100, 100, 100
  c.eval_steps = (100, 200)
  c.baselines = tuple(baselines.BASELINES)
  c.lr_grid = (1e-4, 1.0, 2)  # low, high, points per decade (log10)
  c.num_tune_tasks = 32
  # skip=False: the paper's read-out (a skip weight on the raw gradient makes ES/PES diverge).
  c.learner = learner_block(estimator=estimator, skip=False, sigma=1e-3)
  c.budget_note = ""
  return c


def _bad(field: str, value, why: str):
  raise ConfigError(f"--config.{field}={value!r}: {why}")


def learner_kwargs(config) -> dict[str, Any]:
  """The learner block with unset fields dropped (the factory's defaults apply)."""
  known = hyperparameters()
  block = config.get("learner") or {}
  for name in block:
    if name not in known:
      _bad(
        f"learner.{name}", block[name], f"not a setting of lstm_meta_learner: {', '.join(known)}"
      )
  return {k: v for k, v in block.items() if v is not None}


def validate(config, workdir: str) -> None:
  """Raises ConfigError naming the field for any bad value; touches nothing on disk."""
  if config.get("method") != "lstm":
    _bad("method", config.get("method"), "the lopt family meta-trains 'lstm'")
  if config.get("optimizee") not in OPTIMIZEES:
    _bad("optimizee", config.get("optimizee"), f"choose one of {', '.join(OPTIMIZEES)}")
  for field in ("num_steps", "meta_batch_size", "num_eval_tasks", "num_val_tasks"):
    if not isinstance(config.get(field), int) or config.get(field) < 1:
      _bad(field, config.get(field), "must be a positive int")
  for field in ("eval_batch_size", "num_tune_tasks"):
    if not isinstance(config.get(field), int) or config.get(field) < 1:
      _bad(field, config.get(field), "must be a positive int")
  for field in ("eval_every", "checkpoint_every", "log_every"):
    if not isinstance(config.get(field), int) or config.get(field) < 0:
      _bad(field, config.get(field), "must be an int >= 0")
  if not config.outer_lr > 0:
    _bad("outer_lr", config.outer_lr, "must be > 0")
  if not config.eval_steps or min(config.eval_steps) < 1:
    _bad("eval_steps", config.eval_steps, "must be a non-empty list of step counts >= 1")
  for name in config.baselines:
    if name not in baselines.BASELINES:
      _bad("baselines", config.baselines, f"choose from {', '.join(baselines.BASELINES)}")
  if config.baselines and "adam" not in config.baselines:
    _bad("baselines", config.baselines, "must include adam (the reference of steps_to_reference)")
  try:
    baselines.log_grid(*config.lr_grid)
  except (TypeError, ValueError) as e:
    raise ConfigError(
      f"--config.lr_grid={config.lr_grid!r}: (low, high, per_decade): {e}"
    ) from None
  try:
    lstm_meta_learner(**learner_kwargs(config))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--config.learner: {e}") from None
  if config.optimizee == "mnist":
    hidden = tuple(config.mnist_hidden)
    if not hidden or min(hidden) < 1:
      _bad("mnist_hidden", config.mnist_hidden, "must be a non-empty list of widths >= 1")
    if config.mnist_activation not in mnist.ACTIVATIONS:
      _bad("mnist_activation", config.mnist_activation, f"choose {', '.join(mnist.ACTIVATIONS)}")
    if not isinstance(config.mnist_batch_size, int) or config.mnist_batch_size < 1:
      _bad("mnist_batch_size", config.mnist_batch_size, "must be a positive int")
  elif not isinstance(config.get("dim"), int) or config.dim < 1:
    _bad("dim", config.get("dim"), "must be a positive int")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir}: exists and is not a directory")
  _check_resume(config, workdir)


def _identity(config) -> dict:
  record = json.loads(config.to_json())
  record["learner"] = {**hyperparameters(), **learner_kwargs(config)}
  return {k: v for k, v in record.items() if k not in NOT_IDENTITY}


def _check_resume(config, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not has_checkpoint(workdir):
    return
  with open(path) as f:
    saved = json.load(f)
  diff = [
    f"{k}={saved.get(k)!r} (now {v!r})" for k, v in _identity(config).items() if saved.get(k) != v
  ]
  if diff:
    raise ConfigError(
      f"--workdir={workdir} holds a run with other settings ({', '.join(diff)}); "
      "use a new --workdir to start a different run"
    )


def optimizee(config):
  """`(sample(key, n) -> tasks, objective, start)` of the config's optimizee family."""
  if config.optimizee == "quadratic":
    sample = lambda key, n: quadratic.sample_quadratics(key, n, dim=config.dim)
    return sample, quadratic.quadratic_loss, quadratic.initial_params
  images, labels = mnist.load_mnist("train", config.get("mnist_dir") or None)
  hidden = tuple(config.mnist_hidden)
  objective = mnist.mlp_objective(
    images, labels, batch_size=config.mnist_batch_size, activation=config.mnist_activation
  )
  sample = lambda key, n: mnist.sample_mlp_tasks(key, n, hidden=hidden)
  return sample, objective, mnist.initial_mlp


def loss_curves_figure(curves: dict[str, np.ndarray], path: str, title: str) -> None:
  """Loss against optimizee step, log scale: each optimizer's mean and its 25-75% band."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (name, c) in enumerate(curves.items()):
    steps = np.arange(c.shape[1])
    lo, hi = np.nanpercentile(c, [25, 75], axis=0)
    ax.plot(steps, np.nanmean(c, 0), color=f"C{i}", label=name, lw=1.5)
    ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
  ax.set_yscale("log")
  ax.set_xlabel("optimizee step")
  ax.set_ylabel("loss (mean; band: 25-75% of tasks)")
  ax.set_title(textwrap.fill(title, 70), fontsize=8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def compare_optimizers(config, theta, sample, objective, start) -> dict[str, Any]:
  """The LSTM optimizer and the tuned baselines on the held-out tasks: table and mean curves."""
  steps = max(config.eval_steps)
  unroll = learner_kwargs(config).get("unroll", hyperparameters()["unroll"])
  grid = baselines.log_grid(*config.lr_grid)
  tune_tasks = sample(
    training.episode_key(config.seed, training.VAL_STREAM, 1), config.num_tune_tasks
  )
  held_out = sample(
    training.episode_key(config.seed, training.TEST_STREAM, 0), config.num_eval_tasks
  )
  kw = learner_kwargs(config)
  lstm = lstm_optimizer(
    theta,
    **{k: kw[k] for k in ("scale", "p", "preprocess") if k in kw},
  )
  run = lambda opt, tasks, n: np.asarray(
    jax.jit(lambda t: evaluate_optimizer(opt, t, n, objective=objective, start=start))(tasks)
  )
  curves, tuned = {"lstm": run(lstm, held_out, steps)}, {}
  for name in config.baselines:
    best, scores = baselines.tune(name, grid, tune_tasks, unroll, objective=objective, start=start)
    tuned[name] = {"learning_rate": best, "grid_mean_loss": {str(k): v for k, v in scores.items()}}
    curves[name] = run(baselines.baseline(name, best), held_out, steps)
  table = baselines.compare(curves, config.eval_steps) if "adam" in curves else {}
  return {
    "grid": list(grid),
    "tuned_at_step": unroll,
    "num_tune_tasks": config.num_tune_tasks,
    "tuned": tuned,
    "table": table,
    "mean_curves": {k: np.nanmean(c, 0).tolist() for k, c in curves.items()},
  }, curves


def setting(config) -> str:
  """A one-line description of the run's setting, for figures and JSON."""
  kw = {**hyperparameters(), **learner_kwargs(config)}
  where = (
    f"quadratic d={config.dim}"
    if config.optimizee == "quadratic"
    else f"MNIST MLP {tuple(config.mnist_hidden)} {config.mnist_activation}, "
    f"batch {config.mnist_batch_size}"
  )
  return (
    f"{where}; LSTM by {kw['estimator']} (unroll {kw['unroll']}, truncation "
    f"{kw['truncation']}), {config.num_steps} meta-steps x {config.meta_batch_size} tasks"
  )


def train_and_evaluate(config, workdir: str) -> dict:
  """Validates, meta-trains the LSTM optimizer, compares it with the tuned baselines."""
  validate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  sample, objective, start = optimizee(config)
  learner = lstm_meta_learner(**learner_kwargs(config), objective=objective, start=start)
  record = {**json.loads(config.to_json()), "learner": _identity(config)["learner"]}
  training.write_json_atomic(os.path.join(workdir, "config.json"), record)
  kw = learner_kwargs(config)
  steps = max(config.eval_steps)

  def evaluate(theta, task, key):
    del key
    opt = lstm_optimizer(theta, **{k: kw[k] for k in ("scale", "p", "preprocess") if k in kw})
    curve = quadratic.loss_curve(opt, task, steps, objective=objective, start=start)
    return {f"loss@{k}": curve[k] for k in config.eval_steps}

  optimizer = optax.chain(
    optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.outer_lr)
  )
  started = time.time()
  result = training.meta_train(
    learner,
    training.on_device(sample),
    evaluate=evaluate,
    optimizer=optimizer,
    workdir=workdir,
    **families.loop_settings(
      config,
      # eval.json: num_val_tasks test-stream tasks (comparison.json: all num_eval_tasks).
      num_eval_tasks=min(config.num_val_tasks, config.num_eval_tasks),
      strategy="vmap",
    ),
  )
  train_s = time.time() - started
  theta = jax.device_get(result.state.theta)
  comparison, curves = compare_optimizers(config, theta, sample, objective, start)
  out = {
    "task": config.task,
    "optimizee": config.optimizee,
    "setting": setting(config),
    "step": int(result.state.step),
    "num_tasks": config.num_eval_tasks,
    "budget_note": config.budget_note,
    "train_wall_s_this_process": round(train_s, 1),
    **comparison,
  }
  if parallel.is_primary():
    training.write_json_atomic(os.path.join(workdir, "comparison.json"), out)
    np.savez_compressed(os.path.join(workdir, "curves.npz"), **curves)  # [tasks, steps + 1] each
    loss_curves_figure(curves, os.path.join(workdir, "loss_curves.png"), setting(config))
  for name, row in out["table"].items():
    cells = "  ".join(f"{k} {row[k]['mean']:.4g} ± {row[k]['ci95']:.2g}" for k in row if "@" in k)
    lr = out["tuned"].get(name, {}).get("learning_rate")
    print(f"{name:>9} (lr {lr}): {cells}  steps to Adam's: {row['steps_to_reference']}")
  print(f"wrote {os.path.join(workdir, 'comparison.json')}", flush=True)
  return out
