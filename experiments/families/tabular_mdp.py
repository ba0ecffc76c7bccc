"""Random tabular MDPs (Duan et al. 2016, Table 2): RL² against random and the true-MDP optimum.

10 states, 5 actions, episodes of 10 steps (`config.num_states`,
`config.num_actions`, `config.horizon`), `config.num_episodes` (n) episodes per
trial. `eval.json` holds the total reward per trial on the held-out MDPs, mean
± 95% CI, of RL², of the uniformly random policy (simulated) and of value
iteration on the true MDP (its exact expected total, n V*_0(s_0): an upper
bound no learner reaches in expectation); `learning_curve.png` shows RL²'s
validation reward over training.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from experiments.families import _rl2
from metalearn.rl import baselines as bl
from metalearn.rl import tabular_mdp


def environment(config) -> tabular_mdp.TabularMDP:
  return tabular_mdp.TabularMDP(config.num_states, config.num_actions, config.horizon)


def num_episodes(config) -> int:
  return config.num_episodes


def setting(config) -> str:
  return (
    f"tabular MDP n={config.num_episodes} episodes, S={config.num_states} "
    f"A={config.num_actions} H={config.horizon}"
  )


def check_task(config) -> None:
  for field in ("num_states", "num_actions", "horizon", "num_episodes"):
    if not isinstance(config.get(field), int) or config.get(field) < 1:
      _rl2._bad(field, config.get(field), "must be a positive int")


def trial_metrics(task, rewards: jax.Array, actions: jax.Array) -> dict:
  del task, actions
  return {"total_reward": jnp.sum(rewards)}


def baselines(config, env, tasks, key) -> dict[str, jax.Array]:
  """Total reward per trial `[T]`: random (simulated) and value iteration (exact expectation)."""
  n = config.num_episodes
  keys = jax.random.split(key, tasks.reward_means.shape[0])

  def random_total(params, key):
    return bl.mdp_trial(bl.uniform_policy(params), env, params, key, n).sum()

  def optimum(params):
    return n * bl.value_iteration(params).v[0, 0]

  return {
    "random": jax.jit(jax.vmap(random_total))(tasks, keys),
    "value_iteration": jax.jit(jax.vmap(optimum))(tasks),
  }


def validate(config, workdir: str) -> None:
  _rl2.validate(config, workdir, sys.modules[__name__])


def train_and_evaluate(config, workdir: str) -> dict:
  return _rl2.train_and_evaluate(config, workdir, sys.modules[__name__])
