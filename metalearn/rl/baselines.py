"""Classical baselines for the RL² task families, in JAX, each acting on ONE task.

Bandits (`bandit_trial(policy, env, params, key, num_pulls)` runs one trial):

- `random_policy`: uniform over arms.
- `ucb1()`: pull each arm once, then argmax_a mean_a + sqrt(2 ln t / n_a)
  (Auer, Cesa-Bianchi, Fischer 2002).
- `thompson()`: Beta(1 + successes, 1 + failures) posterior per arm, pull the
  argmax of one draw from each (Thompson 1933; the Beta(1, 1) prior is the
  U[0, 1] distribution the arm means are drawn from).
- `epsilon_greedy(eps)`: with probability eps a uniform arm, else the arm of
  highest empirical mean, untried arms first (eps = 0 is greedy).

Tabular MDPs:

- `value_iteration(params)`: backward induction on the true MDP over the
  horizon, the optimal expected return of an episode from state 0 (times the
  number of episodes: the upper bound of any learner).
- `policy_value(params, pi)`: the exact expected return of a fixed policy
  (`uniform_policy` for the random baseline).
- `mdp_trial(actions_fn, ...)` simulates a trial of any such policy.

Batch over tasks with `jax.vmap`, e.g. `jax.vmap(lambda p, k: bandit_trial(ucb1(), env, p, k,
100))(params, keys)`.

References: Auer, Cesa-Bianchi, Fischer 2002, "Finite-time analysis of the
multiarmed bandit problem"; Thompson 1933; Sutton & Barto 2018 (Sec. 2.2-2.7,
4.4); Duan et al. 2016, arXiv:1611.02779 (the baselines of Tables 1 and 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metalearn.rl import bandits, tabular_mdp

# (key, t, counts [k], successes [k]) -> arm, t = pulls so far (0-based)
BanditPolicy = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


class BanditTrial(NamedTuple):
  """One trial: `actions [n]`, `rewards [n]`, `regret []` = sum_t (max_a mu_a - mu_{a_t})."""

  actions: jax.Array
  rewards: jax.Array
  regret: jax.Array


def _argmax_random_ties(key: jax.Array, scores: jax.Array) -> jax.Array:
  best = scores >= jnp.max(scores)
  return jax.random.categorical(key, jnp.where(best, 0.0, -jnp.inf))


def random_policy(key, t, counts, successes):
  """Uniform over arms."""
  return jax.random.randint(key, [], 0, counts.shape[0])


def ucb1(c: float = 2.0) -> BanditPolicy:
  """UCB1: each arm once, then argmax mean_a + sqrt(c ln t / n_a) (c = 2: Auer et al.)."""

  def policy(key, t, counts, successes):
    bonus = jnp.sqrt(c * jnp.log(jnp.maximum(t, 1)) / jnp.maximum(counts, 1))
    scores = jnp.where(counts > 0, successes / jnp.maximum(counts, 1) + bonus, jnp.inf)
    return _argmax_random_ties(key, scores)

  return policy


def thompson(prior_a: float = 1.0, prior_b: float = 1.0) -> BanditPolicy:
  """Beta-Bernoulli Thompson sampling with a Beta(prior_a, prior_b) prior per arm."""

  def policy(key, t, counts, successes):
    draw_key, tie_key = jax.random.split(key)
    draws = jax.random.beta(draw_key, prior_a + successes, prior_b + counts - successes)
    return _argmax_random_ties(tie_key, draws)

  return policy


def epsilon_greedy(epsilon: float = 0.1) -> BanditPolicy:
  """With probability epsilon a uniform arm, else the best empirical mean (untried arms first)."""
  if not 0.0 <= epsilon <= 1.0:
    raise ValueError(f"epsilon must lie in [0, 1], got {epsilon!r}")

  def policy(key, t, counts, successes):
    explore_key, arm_key, tie_key = jax.random.split(key, 3)
    means = jnp.where(counts > 0, successes / jnp.maximum(counts, 1), jnp.inf)
    greedy = _argmax_random_ties(tie_key, means)
    uniform = jax.random.randint(arm_key, [], 0, counts.shape[0])
    return jnp.where(jax.random.bernoulli(explore_key, epsilon), uniform, greedy)

  return policy


def bandit_trial(
  policy: BanditPolicy,
  env: bandits.BernoulliBandit,
  params: bandits.EnvParams,
  key: jax.Array,
  num_pulls: int,
) -> BanditTrial:
  """Runs `policy` for `num_pulls` pulls of one bandit, stepping `env` (a `lax.scan`)."""
  k = env.num_arms
  reset_key, key = jax.random.split(key)
  _, state = env.reset(reset_key, params)

  def step(carry, inputs):
    state, counts, successes = carry
    t, key = inputs
    act_key, env_key = jax.random.split(key)
    arm = policy(act_key, t, counts, successes)
    _, state, reward, _, _, _ = env.step(env_key, state, arm, params)
    one_hot = jax.nn.one_hot(arm, k)
    return (state, counts + one_hot, successes + reward * one_hot), (arm, reward)

  init = (state, jnp.zeros([k]), jnp.zeros([k]))
  _, (arms, rewards) = jax.lax.scan(
    step, init, (jnp.arange(num_pulls), jax.random.split(key, num_pulls))
  )
  regret = jnp.sum(jnp.max(params.means) - params.means[arms])
  return BanditTrial(arms, rewards, regret)


def bandit_baselines(epsilon: float = 0.1) -> dict[str, BanditPolicy]:
  """The bandit table's baselines by name."""
  return {
    "random": random_policy,
    "thompson": thompson(),
    "ucb1": ucb1(),
    f"epsilon_greedy_{epsilon:g}": epsilon_greedy(epsilon),
    "greedy": epsilon_greedy(0.0),
  }


class Values(NamedTuple):
  """Finite-horizon values: `q [H, S, A]`, `v [H + 1, S]` (v[H] = 0), `policy [H, S]` (argmax)."""

  q: jax.Array
  v: jax.Array
  policy: jax.Array


def value_iteration(params: tabular_mdp.EnvParams) -> Values:
  """Backward induction over the horizon H: Q_h = R + P V_{h+1}, V_h = max_a Q_h (V_H = 0)."""
  r, p = params.reward_means, params.transitions

  def backup(v_next, _):
    q = r + p @ v_next
    return jnp.max(q, axis=-1), (q, v_next)

  v0, (q, v_next) = jax.lax.scan(
    backup, jnp.zeros(r.shape[0]), None, length=params.max_steps_in_episode
  )
  q, v_next = q[::-1], v_next[::-1]  # scan ran h = H-1 .. 0
  v = jnp.concatenate([v0[None], v_next])
  return Values(q, v, jnp.argmax(q, axis=-1))


def policy_value(params: tabular_mdp.EnvParams, pi: jax.Array) -> jax.Array:
  """`V^pi_h [H + 1, S]` of a time-dependent stochastic policy `pi [H, S, A]` (exact)."""
  r, p = params.reward_means, params.transitions

  def backup(v_next, pi_h):
    return jnp.sum(pi_h * (r + p @ v_next), axis=-1), v_next

  v0, v_next = jax.lax.scan(backup, jnp.zeros(r.shape[0]), pi[::-1])
  return jnp.concatenate([v0[None], v_next[::-1]])


def uniform_policy(params: tabular_mdp.EnvParams) -> jax.Array:
  """`[H, S, A]`, every action equally likely."""
  h = params.max_steps_in_episode
  s, a = params.reward_means.shape
  return jnp.full([h, s, a], 1.0 / a)


def mdp_trial(
  pi: jax.Array,
  env: tabular_mdp.TabularMDP,
  params: tabular_mdp.EnvParams,
  key: jax.Array,
  num_episodes: int,
) -> jax.Array:
  """Simulated rewards `[num_episodes * H]` of the fixed policy `pi [H, S, A]` (auto-reset)."""
  reset_key, key = jax.random.split(key)
  _, state = env.reset(reset_key, params)

  def step(state, key):
    act_key, env_key = jax.random.split(key)
    action = jax.random.categorical(act_key, jnp.log(pi[state.time, state.state]))
    _, state, reward, _, _, _ = env.step(env_key, state, action, params)
    return state, reward

  steps = num_episodes * params.max_steps_in_episode
  _, rewards = jax.lax.scan(step, state, jax.random.split(key, steps))
  return rewards
