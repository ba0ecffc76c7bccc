"""k-armed Bernoulli bandits (Duan et al. 2016, Table 1): RL² against the classical baselines.

`config.num_arms` (k) and `config.num_pulls` (n) set the task; the learner
block holds `metalearn.algorithms.rl2`'s hyperparameters. `eval.json` holds the
total reward per trial (n pulls) on the held-out bandits, mean ± 95% CI, of
RL² and of random, Thompson sampling, UCB1, epsilon-greedy and greedy on the
same bandits; `learning_curve.png` shows RL²'s validation reward over training.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from experiments.families import _rl2
from metalearn.rl import bandits
from metalearn.rl import baselines as bl


def environment(config) -> bandits.BernoulliBandit:
  return bandits.BernoulliBandit(config.num_arms)


def num_episodes(config) -> int:
  return config.num_pulls  # each pull is an episode of one step


def setting(config) -> str:
  return f"bandit n={config.num_pulls} k={config.num_arms}"


def check_task(config) -> None:
  if not isinstance(config.get("num_arms"), int) or config.num_arms < 2:
    _rl2._bad("num_arms", config.get("num_arms"), "must be an int >= 2")
  if not isinstance(config.get("num_pulls"), int) or config.num_pulls < 1:
    _rl2._bad("num_pulls", config.get("num_pulls"), "must be a positive int")
  if not 0.0 <= config.get("epsilon", 0.1) <= 1.0:
    _rl2._bad("epsilon", config.get("epsilon"), "must lie in [0, 1]")


def trial_metrics(task: bandits.EnvParams, rewards: jax.Array, actions: jax.Array) -> dict:
  """Total reward of a trial, and its pseudo-regret sum_t (max_a mu_a - mu_{a_t})."""
  regret = jnp.sum(jnp.max(task.means) - task.means[actions])
  return {"total_reward": jnp.sum(rewards), "regret": regret}


def baselines(config, env, tasks, key) -> dict[str, jax.Array]:
  """Total reward per trial `[T]` of each baseline on the tasks `[T, k]`."""
  keys = jax.random.split(key, tasks.means.shape[0])
  out = {}
  for name, policy in bl.bandit_baselines(config.get("epsilon", 0.1), config.num_pulls).items():

    def total(params, key, policy=policy):
      return bl.bandit_trial(policy, env, params, key, config.num_pulls).rewards.sum()

    out[name] = jax.jit(jax.vmap(total))(tasks, keys)
  return out


def validate(config, workdir: str) -> None:
  _rl2.validate(config, workdir, sys.modules[__name__])


def train_and_evaluate(config, workdir: str) -> dict:
  return _rl2.train_and_evaluate(config, workdir, sys.modules[__name__])
