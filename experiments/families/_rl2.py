"""What the bandit and tabular-MDP families share: RL² meta-trained, scored next to baselines.

A family module gives `environment(config)`, `num_episodes(config)`,
`check_task(config)` and `baselines(config, env, tasks, key) -> {name: [T]}`
(total reward per trial on the held-out tasks); `validate` and
`train_and_evaluate` here do the rest: the learner from `config.learner`
(`metalearn.algorithms.rl2`'s keyword arguments), `training.meta_train` on
tasks sampled on the device, `eval.json` with RL² and every baseline (mean ±
95% CI of the total reward per trial on the same held-out tasks) and the
learning curve `learning_curve.png`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
import optax
from ml_collections import config_dict

from experiments import families
from experiments.configs import _common
from experiments.train import ConfigError, has_checkpoint
from metalearn import algorithms, core, training
from metalearn.algorithms.rl2 import rl2

METHODS = ("rl2",)
TASK_ARGUMENTS = ("num_episodes",)
NOT_IDENTITY = frozenset(
  {"num_steps", "eval_every", "checkpoint_every", "log_every", "num_val_tasks"}
  | {"num_eval_tasks", "eval_batch_size", "baselines", "budget_note", "host_cores"}
)


def hyperparameters() -> dict[str, Any]:
  """rl2's configurable keyword arguments and their defaults (its signature)."""
  return algorithms.keyword_defaults(rl2, TASK_ARGUMENTS)


def learner_block(**settings) -> config_dict.ConfigDict:
  """`config.learner`: rl2's hyperparameters, None meaning the factory's default."""
  return _common.block_of(hyperparameters(), **settings)


def common_config(task: str) -> config_dict.ConfigDict:
  """The fields every RL² config has (the family's own come on top)."""
  c = config_dict.ConfigDict()
  c.task, c.method, c.seed = task, "rl2", 0
  c.outer_lr, c.max_grad_norm = 1e-3, 1.0
  c.num_steps, c.meta_batch_size = 1000, 64
  c.eval_every, c.checkpoint_every, c.log_every = 200, 200, 50
  c.num_val_tasks, c.num_eval_tasks, c.eval_batch_size = 200, 1000, 500
  c.baselines = True
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
      _bad(f"learner.{name}", block[name], f"not a setting of rl2; choose from {', '.join(known)}")
  return {k: v for k, v in block.items() if v is not None}


def validate(config, workdir: str, family) -> None:
  """Raises ConfigError naming the field for any bad value; touches nothing on disk."""
  if config.get("method") not in METHODS:
    _bad("method", config.get("method"), f"choose one of {', '.join(METHODS)}")
  for field in ("num_steps", "meta_batch_size", "num_eval_tasks", "num_val_tasks"):
    if not isinstance(config.get(field), int) or config.get(field) < 1:
      _bad(field, config.get(field), "must be a positive int")
  if config.eval_batch_size < 1:
    _bad("eval_batch_size", config.eval_batch_size, "must be a positive int")
  for field in ("eval_every", "checkpoint_every", "log_every"):
    if not isinstance(config.get(field), int) or config.get(field) < 0:
      _bad(field, config.get(field), "must be an int >= 0")
  if not config.outer_lr > 0:
    _bad("outer_lr", config.outer_lr, "must be > 0")
  family.check_task(config)
  kwargs = learner_kwargs(config)
  try:
    rl2(family.environment(config), num_episodes=family.num_episodes(config), **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--config.learner: {e}") from None
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
  mine = _identity(config)
  diff = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in mine.items() if saved.get(k) != v]
  if diff:
    raise ConfigError(
      f"--workdir={workdir} holds a run with other settings ({', '.join(diff)}); "
      "use a new --workdir to start a different run"
    )


def learning_curve(workdir: str, baselines: dict, path: str, title: str) -> None:
  """Validation total reward per trial against meta-steps, the baselines as lines."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps, means = [], []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if row.get("val/total_reward") is not None:
        steps.append(row["step"])
        means.append(row["val/total_reward"])
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(steps, means, "o-", label="RL² (validation tasks)")
  for i, (name, s) in enumerate(sorted(baselines.items())):
    label = f"{name} {s['mean']:.2f} (test tasks)"
    ax.axhline(s["mean"], color=f"C{i + 1}", ls="--", lw=1, label=label)
  ax.set_xlabel("meta-step (batch of trials)")
  ax.set_ylabel("total reward per trial")
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def train_and_evaluate(config, workdir: str, family) -> dict:
  """Validates, meta-trains RL², scores it and the baselines on the held-out tasks."""
  validate(config, workdir, family)
  os.makedirs(workdir, exist_ok=True)
  env, n = family.environment(config), family.num_episodes(config)
  learner = rl2(env, num_episodes=n, **learner_kwargs(config))
  record = {**json.loads(config.to_json()), "learner": _identity(config)["learner"]}
  training.write_json_atomic(os.path.join(workdir, "config.json"), record)

  def sample(key, num_tasks):
    return jax.vmap(env.sample_params)(jax.random.split(key, num_tasks))

  def evaluate(theta, task, key):
    trial = learner.adapt(theta, task, key)
    return family.trial_metrics(task, trial.rewards, trial.actions)

  sampler = training.on_device(sample)
  optimizer = optax.chain(
    optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.outer_lr)
  )
  started = time.time()
  result = training.meta_train(
    learner,
    sampler,
    evaluate=evaluate,
    optimizer=optimizer,
    workdir=workdir,
    **families.loop_settings(config),
  )
  summary = {"rl2": result.eval_summary}
  if config.baselines:
    batches = training.fixed_batches(
      sampler, config.seed, training.TEST_STREAM, config.num_eval_tasks, config.eval_batch_size
    )
    key = jax.random.PRNGKey(config.seed + 12345)
    collected: dict[str, list[np.ndarray]] = {}
    for i, tasks in enumerate(batches):
      for name, values in family.baselines(config, env, tasks, jax.random.fold_in(key, i)).items():
        collected.setdefault(name, []).append(np.asarray(values))
    for name, values in collected.items():
      summary[name] = core.summarize({"total_reward": np.concatenate(values)})
  out = {
    "task": config.task,
    "setting": family.setting(config),
    "step": int(result.state.step),
    "num_tasks": config.num_eval_tasks,
    "metrics": summary,
    "budget_note": config.budget_note,
    "wall_s_this_process": round(time.time() - started, 1),
  }
  training.write_json_atomic(os.path.join(workdir, "eval.json"), out)
  totals = {k: v["total_reward"] for k, v in summary.items() if k != "rl2"}
  learning_curve(
    workdir, totals, os.path.join(workdir, "learning_curve.png"), family.setting(config)
  )
  for name, s in summary.items():
    t = s["total_reward"]
    print(f"{name:>20}: total reward per trial {t['mean']:.3f} ± {t['ci95']:.3f} (n={t['n']})")
  return out
