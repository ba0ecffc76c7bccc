"""Classical baselines for the RL² task families, in JAX, each acting on ONE task.

Bandits (`bandit_trial(policy, env, params, key, num_pulls)` runs one trial):

- `random_policy`: uniform over arms.
- `ucb1()`: pull each arm once, then argmax_a mean_a + sqrt(2 ln t / n_a)
  (Auer, Cesa-Bianchi, Fischer 2002).
- `thompson()`: Beta(1 + successes, 1 + failures) posterior per arm, pull the
  argmax of one draw from each (Thompson 1933; the Beta(1, 1) prior is the
  U[0, 1] distribution the arm means are drawn from).
- `optimistic_thompson()`: Thompson sampling whose draws are raised to at
  least the posterior mean (OTS, May et al. 2012).
- `epsilon_greedy(eps)`: with probability eps a uniform arm, else the arm of
  highest empirical mean, untried arms first (eps = 0 is greedy).
- `gittins(num_pulls)`: the finite-horizon Gittins index of each arm's
  Beta posterior with the pulls left (`gittins_indices` computes the table,
  `gittins_policy(table)` plays it; Gittins 1979, Niño-Mora 2011, Lattimore
  2016): the arm whose one-armed problem against a known arm of rate
  lambda is worth playing for the largest lambda.

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
multiarmed bandit problem"; Thompson 1933; May, Korda, Lee, Leslie 2012,
"Optimistic Bayesian sampling in contextual-bandit problems"; Gittins 1979,
"Bandit processes and dynamic allocation indices"; Niño-Mora 2011,
"Computing a classic index for finite-horizon bandits"; Lattimore 2016,
"Regret analysis of the finite-horizon Gittins index strategy"; Sutton & Barto 2018 (Sec. 2.2-2.7,
4.4); Duan et al. 2016, arXiv:1611.02779 (the baselines of Tables 1 and 2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def thompson(
  prior_a: float = 1.0, prior_b: float = 1.0, *, optimistic: bool = False
) -> BanditPolicy:
  """Beta-Bernoulli Thompson sampling with a Beta(prior_a, prior_b) prior per arm.

  With `optimistic`, each draw is raised to at least its posterior mean (OTS, May et al.).
  """

  def policy(key, t, counts, successes):
    draw_key, tie_key = jax.random.split(key)
    a, b = prior_a + successes, prior_b + counts - successes
    draws = jax.random.beta(draw_key, a, b)
    if optimistic:
      draws = jnp.maximum(draws, a / (a + b))
    return _argmax_random_ties(tie_key, draws)

  return policy


def optimistic_thompson(prior_a: float = 1.0, prior_b: float = 1.0) -> BanditPolicy:
  """OTS: `thompson(..., optimistic=True)`."""
  return thompson(prior_a, prior_b, optimistic=True)


def gittins_indices(
  horizon: int, prior_a: float = 1.0, prior_b: float = 1.0, grid: int = 101
) -> np.ndarray:
  """Finite-horizon Gittins indices of a Beta-Bernoulli arm, `[horizon, horizon + 1, horizon + 1]`.

  Entry `[m - 1, s, f]` is the index of an arm with `s` successes and `f`
  failures when `m` pulls remain: the retirement rate lambda at which the
  one-armed problem "pull this arm, or stop for good and earn lambda per
  remaining pull" is indifferent about pulling once more,

    Q_m(s, f; lambda) = mu - lambda + mu W_{m-1}(s + 1, f) + (1 - mu) W_{m-1}(s, f + 1) = 0,
    W_m = max(0, Q_m),  W_0 = 0,  mu = (prior_a + s) / (prior_a + prior_b + s + f).

  Q is solved by backward induction over m for `grid` evenly spaced lambdas in
  [0, 1] at once (numpy, float64), and its root located by linear
  interpolation between the two grid points that bracket it (Q is piecewise
  linear in lambda). Entries with s, f <= horizon - m are computed (they hold
  every state s + f <= horizon - m a trial of `horizon` pulls can reach); the
  others are 0. With m = 1 the index is the posterior mean; it grows with m
  (the value of information). Cost: about grid * horizon^3 / 3 operations.
  """
  if horizon < 1 or grid < 3:
    raise ValueError(f"need horizon >= 1 and grid >= 3, got {horizon=}, {grid=}")
  lam = np.linspace(0.0, 1.0, grid)[:, None, None]
  table = np.zeros([horizon, horizon + 1, horizon + 1], np.float32)
  w = np.zeros([grid, horizon + 1, horizon + 1])  # W_{m-1} over (s, f), s + f <= horizon - m + 1
  for m in range(1, horizon + 1):
    size = horizon - m + 1  # s, f in [0, size): s + f <= horizon - m
    s = np.arange(size)[:, None]
    f = np.arange(size)[None, :]
    mu = (prior_a + s) / (prior_a + prior_b + s + f)
    q = mu - lam + mu * w[:, 1 : size + 1, :size] + (1 - mu) * w[:, :size, 1 : size + 1]
    last = np.clip(np.sum(q > 0, axis=0) - 1, 0, grid - 2)  # Q decreases in lambda
    q_lo = np.take_along_axis(q, last[None], 0)[0]
    q_hi = np.take_along_axis(q, last[None] + 1, 0)[0]
    frac = np.clip(q_lo / np.maximum(q_lo - q_hi, 1e-12), 0.0, 1.0)
    table[m - 1, :size, :size] = (last + frac) / (grid - 1)
    w = np.maximum(q, 0.0)
  return table


def gittins_policy(table: jax.Array) -> BanditPolicy:
  """Plays the arm of largest index `table[num_pulls - t - 1, s_a, f_a]` (`gittins_indices`).

  The table may be a traced argument: pass it into `jax.jit` rather than
  closing over it when it is large (horizon 500: 500 MB).
  """
  num_pulls = table.shape[0]

  def policy(key, t, counts, successes):
    s = successes.astype(jnp.int32)
    f = (counts - successes).astype(jnp.int32)
    return _argmax_random_ties(key, table[num_pulls - t - 1, s, f])

  return policy


@functools.lru_cache(maxsize=8)
def gittins(num_pulls: int, prior_a: float = 1.0, prior_b: float = 1.0) -> BanditPolicy:
  """The finite-horizon Gittins index policy for trials of `num_pulls` pulls.

  Cached: the index table is computed once per (num_pulls, prior), however
  often the baselines are built (once per evaluation batch in the RL² runs).
  """
  return gittins_policy(jnp.asarray(gittins_indices(num_pulls, prior_a, prior_b)))


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


def bandit_baselines(epsilon: float = 0.1, num_pulls: int | None = None) -> dict[str, BanditPolicy]:
  """The bandit table's baselines by name; with `num_pulls`, also the Gittins index policy.

  The Gittins policy closes over its index table (`num_pulls`^3 floats: fine for the
  hundreds of pulls of the RL² tables; pass the table into `jax.jit` beyond that).
  """
  out = {
    "random": random_policy,
    "thompson": thompson(),
    "optimistic_thompson": optimistic_thompson(),
    "ucb1": ucb1(),
    f"epsilon_greedy_{epsilon:g}": epsilon_greedy(epsilon),
    "greedy": epsilon_greedy(0.0),
  }
  if num_pulls is not None:
    out["gittins"] = gittins(num_pulls)
  return out


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
