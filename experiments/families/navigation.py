"""2-D navigation (Finn et al. 2017, Sec. 5.3): MAML-RL with a TRPO outer step, and its references.

`train_and_evaluate` meta-trains `metalearn.algorithms.maml_rl` (one TRPO
step per meta-batch of `config.meta_batch_size` goals, so the training loop
sees one task a step: see that module's docstring), then scores it on
`config.num_eval_tasks` held-out goals: the mean return of
`learner.num_trajectories` episodes before adaptation and after 1..
`config.eval_steps` policy-gradient steps (`return@k`), next to

- `oracle`: the optimal policy, which knows the goal (`navigation.oracle_action`);
- `standing_still`: the zero action (return `-100 ||goal||`);
- `random`: actions uniform in the action box;
- `pretrained` (when `config.pretrain_steps > 0`): the same policy trained
  by the same TRPO on all tasks without adaptation (`inner_steps=0`),
  fine-tuned with the same steps.

Writes `eval.json` (the learner's `return@k` under `metrics`, the references
and the meta-iterations reached), `config.json` and `navigation.png`
(trajectories of the policy's mean action before and after one step).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_dict

from experiments import families
from metalearn import core, parallel, training
from metalearn.algorithms import maml_rl
from metalearn.rl import navigation as nav
from metalearn.rl import rollout as ro

ADAPTATION = ("inner_lr", "num_trajectories", "gamma", "baseline", "normalized")


def _error(field: str, value, why: str):
  from experiments.train import ConfigError

  raise ConfigError(f"--config.{field}={value!r}: {why}")


def validate(config: config_dict.ConfigDict, workdir: str) -> None:
  """Raises `experiments.train.ConfigError` naming the flag for a bad value; touches no file."""
  if config.method != "maml_trpo":
    _error("method", config.method, "the navigation family runs maml_trpo")
  positive = ("meta_batch_size", "num_eval_tasks", "log_every", "horizon", "eval_steps")
  for field in positive:
    if not isinstance(config[field], int) or config[field] <= 0:
      _error(field, config[field], "must be a positive integer")
  for field in ("num_steps", "checkpoint_every", "eval_every", "pretrain_steps", "figure_goals"):
    if not isinstance(config[field], int) or config[field] < 0:
      _error(field, config[field], "must be an integer >= 0")
  if not config.hidden or min(config.hidden) < 1:
    _error("hidden", config.hidden, "must be a non-empty list of layer widths >= 1")
  try:
    build(config)
  except (TypeError, ValueError) as e:
    _error("learner", dict(config.learner), str(e))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    from experiments.train import ConfigError

    raise ConfigError(f"--workdir={workdir}: exists and is not a directory")


def build(config, *, inner_steps: int | None = None):
  """`(env, policy, learner)` of the config (`inner_steps` overrides the learner block's)."""
  env = nav.Navigation2D()
  policy = ro.gaussian_mlp(env.num_actions, hidden=tuple(config.hidden))
  kwargs = dict(config.learner)
  if inner_steps is not None:
    kwargs["inner_steps"] = inner_steps
  return env, policy, maml_rl.maml_rl(env, policy, outer="trpo", **kwargs)


def samplers(config):
  """`(train, eval)` device samplers: meta-batches of goals `[n, M, 2]`, single goals `[n, 2]`."""
  m, horizon = config.meta_batch_size, config.horizon

  def groups(key, n):
    goals = nav.sample_tasks(key, n * m, horizon)
    return jax.tree_util.tree_map(lambda g: g.reshape(n, m, *g.shape[1:]), goals)

  return training.on_device(groups), training.on_device(
    lambda k, n: nav.sample_tasks(k, n, horizon)
  )


def evaluator(config, env, policy) -> core.EvaluateFn:
  """`(theta, goal, key) -> {return@k}` for k = 0..eval_steps policy-gradient steps."""
  kwargs = {k: config.learner[k] for k in ADAPTATION}

  def evaluate(theta, goal, key):
    returns = maml_rl.adaptation_returns(
      env, policy, theta, goal, key, steps=config.eval_steps, **kwargs
    )
    return {f"return@{k}": returns[k] for k in range(config.eval_steps + 1)}

  return evaluate


def references(config, env, goals, key) -> dict:
  """Oracle, standing-still and random returns on the held-out goals (mean ± 95% CI)."""
  n = config.learner.num_trajectories

  def one(goal, key):
    oracle = ro.rollout(env, goal, lambda o, k: nav.oracle_action(o, goal), key, 1)
    still = ro.rollout(env, goal, lambda o, k: jnp.zeros(2), key, 1)
    box = env.action_space(goal)
    rand = ro.rollout(env, goal, lambda o, k: box.sample(k), key, n)
    returns = (oracle, still, rand)
    return {name: ro.episode_returns(t).mean() for name, t in zip(NAMES, returns, strict=True)}

  keys = jax.random.split(key, core.num_tasks(goals))
  values = jax.device_get(jax.jit(jax.vmap(one))(goals, keys))
  return core.summarize(values)


NAMES = ("oracle", "standing_still", "random")


def figure(config, env, policy, learner, theta, goals, path: str, key) -> None:
  """Trajectories of the mean action before and after one policy-gradient step, a few goals."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  k = min(config.figure_goals, core.num_tasks(goals))
  goals = jax.tree_util.tree_map(lambda g: g[:k], goals)
  one_step = build(config, inner_steps=1)[2]
  phis = one_step.adapt(theta, goals, key)

  def path_of(params, goal):
    act = lambda obs, key: policy.distribution(params, obs)[0]
    traj = ro.rollout(env, goal, act, jax.random.PRNGKey(0), 1)
    steps = jnp.clip(traj.actions[0], -nav.MAX_ACTION, nav.MAX_ACTION) * traj.mask[0, :, None]
    return jnp.concatenate([jnp.zeros((1, 2)), jnp.cumsum(steps, axis=0)])

  before = jax.vmap(path_of, in_axes=(None, 0))(theta, goals)
  after = jax.vmap(path_of)(phis, goals)
  fig, ax = plt.subplots(figsize=(5, 5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i in range(k):
    c = colors[i % len(colors)]
    if i == 0:  # the same policy for every goal before adaptation
      ax.plot(*np.asarray(before[i]).T, ls=":", color="gray", label="before adaptation")
    ax.plot(*np.asarray(after[i]).T, ls="-", color=c, label="after 1 step" if i == 0 else None)
    ax.plot(*np.asarray(goals.goal[i]), marker="*", ms=14, color=c)
  ax.plot(0, 0, "ko", ms=4)
  ax.set_xlim(-0.6, 0.6)
  ax.set_ylim(-0.6, 0.6)
  ax.set_aspect("equal")
  ax.legend(loc="lower right")
  ax.set_title("2-D navigation: policy mean before / after adaptation")
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def _train(config, workdir: str, inner_steps: int | None, num_steps: int):
  env, policy, learner = build(config, inner_steps=inner_steps)
  train_sampler, eval_sampler = samplers(config)
  result = training.meta_train(
    learner,
    train_sampler,
    evaluate=evaluator(config, env, policy),
    optimizer=optax.sgd(1.0),  # meta_grad is theta - theta_TRPO: sgd(1) takes the TRPO step
    workdir=workdir,
    eval_sampler=eval_sampler,
    mesh=parallel.make_mesh(1),
    **families.loop_settings(
      config,
      num_steps=num_steps,
      meta_batch_size=1,  # one task = one meta-batch of goals (one TRPO step)
      num_val_tasks=config.num_eval_tasks,
      eval_batch_size=config.num_eval_tasks,
      strategy="map",
      on_nonfinite=config.on_nonfinite,
    ),
  )
  return env, policy, learner, result


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str) -> dict:
  """Meta-trains, evaluates against the references, writes eval.json and navigation.png."""
  validate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_primary() and not os.path.exists(os.path.join(workdir, "config.json")):
    training.write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
  env, policy, learner, result = _train(config, workdir, None, config.num_steps)
  _, eval_sampler = samplers(config)
  goals = training.fixed_batches(
    eval_sampler, config.seed, training.TEST_STREAM, config.num_eval_tasks, config.num_eval_tasks
  )[0]
  key = jax.random.PRNGKey(config.seed + 1)
  record = {
    "metrics": result.eval_summary,
    "meta_iterations": int(jax.device_get(result.state.step)),
    "references": references(config, env, goals, key),
  }
  if config.pretrain_steps:
    base = _train(config, os.path.join(workdir, "pretrained"), 0, config.pretrain_steps)[3]
    record["pretrained"] = {
      "metrics": base.eval_summary,
      "meta_iterations": int(jax.device_get(base.state.step)),
    }
  if parallel.is_primary():
    theta = parallel.fetch(result.state.theta)
    path = os.path.join(workdir, "navigation.png")
    if config.figure_goals:
      figure(config, env, policy, learner, theta, goals, path, key)
    with open(os.path.join(workdir, "eval.json")) as f:
      saved = json.load(f)
    training.write_json_atomic(os.path.join(workdir, "eval.json"), {**saved, **record})
    print(f"wrote {os.path.join(workdir, 'eval.json')}", flush=True)
  return record
