"""Classical baselines: UCB1 and Thompson sampling regret orders, value iteration's optimum."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from metalearn.rl import bandits, tabular_mdp
from metalearn.rl import baselines as bl

MEANS = jnp.array([0.9, 0.6, 0.5, 0.3, 0.1])  # a fixed instance: gaps 0.3 .. 0.8
RUNS = 100


def _mean_regret(policy, n, means=MEANS):
  """Average pseudo-regret over RUNS independent trials of n pulls on one bandit."""
  env = bandits.BernoulliBandit(means.shape[0])
  params = bandits.EnvParams(means=means)
  run = jax.jit(jax.vmap(lambda k: bl.bandit_trial(policy, env, params, k, n).regret))
  return float(run(jax.random.split(jax.random.PRNGKey(n), RUNS)).mean())


def test_ucb1_regret_within_auer_bound_and_logarithmic():
  gaps = np.asarray(MEANS.max() - MEANS)[1:]
  regrets = {n: _mean_regret(bl.ucb1(), n) for n in (500, 5000)}
  for n, regret in regrets.items():
    # Auer, Cesa-Bianchi, Fischer (2002), Theorem 1.
    bound = 8 * np.sum(np.log(n) / gaps) + (1 + np.pi**2 / 3) * np.sum(gaps)
    assert regret <= bound, (n, regret, bound)
  # Ten times the pulls: linear regret grows 10x, sqrt(n) 3.2x, log n 1.37x (UCB1 reaches
  # its asymptotic log n rate slowly: 2.1x measured here).
  assert regrets[5000] / regrets[500] < 2.5, regrets
  random = _mean_regret(bl.random_policy, 500)
  np.testing.assert_allclose(random, 500 * float(jnp.mean(MEANS.max() - MEANS)), rtol=0.05)
  assert regrets[5000] < 0.1 * 5000 * float(jnp.mean(MEANS.max() - MEANS))


def test_thompson_regret_sublinear_and_far_below_random():
  regrets = {n: _mean_regret(bl.thompson(), n) for n in (500, 5000)}
  assert regrets[5000] / regrets[500] < 1.8, regrets  # log n: 1.37x
  assert regrets[5000] < 0.01 * 5000 * float(jnp.mean(MEANS.max() - MEANS))  # random's regret
  # Thompson sampling beats UCB1 with the same pulls on this instance (as in Chapelle & Li 2011).
  assert regrets[500] < _mean_regret(bl.ucb1(), 500)


def test_epsilon_greedy_regret_grows_linearly_with_exploration():
  # Exploring uniformly a fixed fraction eps of the time costs eps * mean gap per pull.
  eps = 0.2
  regret = _mean_regret(bl.epsilon_greedy(eps), 2000)
  explore_cost = 2000 * eps * float(jnp.mean(MEANS.max() - MEANS))
  assert explore_cost * 0.9 < regret < explore_cost * 1.6


def test_bandit_baselines_batched_equal_a_loop():
  env = bandits.BernoulliBandit(5)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = jax.vmap(env.sample_params)(keys)
  for policy in (bl.thompson(), bl.epsilon_greedy(0.3)):  # the ones that draw the most keys
    trial = jax.jit(lambda p, k, policy=policy: bl.bandit_trial(policy, env, p, k, 20))
    batched = jax.vmap(trial)(params, keys)
    for i in range(3):
      one = trial(jax.tree_util.tree_map(lambda a, i=i: a[i], params), keys[i])
      np.testing.assert_array_equal(one.actions, batched.actions[i])
      np.testing.assert_array_equal(one.rewards, batched.rewards[i])


def _chain():
  """S=2, A=2: in s0 action 0 pays 1 and stays, action 1 pays 0 and moves on; s1 pays 2."""
  return tabular_mdp.EnvParams(
    reward_means=jnp.array([[1.0, 0.0], [2.0, 2.0]]),
    transitions=jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]),
    max_steps_in_episode=3,
  )


def test_value_iteration_known_answer():
  values = bl.value_iteration(_chain())
  # H=3 from s0: stay (1+1+1 = 3) or move (0+2+2 = 4); V_1(s0) = max(1 + 1, 0 + 2) = 2.
  np.testing.assert_allclose(values.v[:, 0], [4.0, 2.0, 1.0, 0.0])
  np.testing.assert_allclose(values.v[:, 1], [6.0, 4.0, 2.0, 0.0])
  assert int(values.policy[0, 0]) == 1 and int(values.policy[2, 0]) == 0


def test_value_iteration_is_the_bellman_fixed_point_and_beats_every_policy():
  env = tabular_mdp.TabularMDP(num_states=2, num_actions=2, horizon=3)
  params = env.sample_params(jax.random.PRNGKey(3))
  values = bl.value_iteration(params)
  r, p = np.asarray(params.reward_means), np.asarray(params.transitions)
  for h in range(3):  # Q_h = R + P V_{h+1}, V_h = max_a Q_h, V_H = 0
    np.testing.assert_allclose(values.q[h], r + p @ np.asarray(values.v[h + 1]), rtol=1e-5)
    np.testing.assert_allclose(values.v[h], np.asarray(values.q[h]).max(-1), rtol=1e-5)
  np.testing.assert_allclose(values.v[3], 0.0)
  # Brute force over all 4^3 deterministic time-dependent policies.
  best = -np.inf
  for choice in itertools.product(range(4), repeat=3):
    pi = np.zeros([3, 2, 2])
    for h, c in enumerate(choice):
      pi[h, 0, c % 2] = pi[h, 1, c // 2] = 1.0
    best = max(best, float(bl.policy_value(params, jnp.asarray(pi))[0, 0]))
  np.testing.assert_allclose(values.v[0, 0], best, rtol=1e-5)


def test_simulated_trials_match_exact_policy_values():
  env = tabular_mdp.TabularMDP()
  params = env.sample_params(jax.random.PRNGKey(0))
  optimal = jax.nn.one_hot(bl.value_iteration(params).policy, 5)
  keys = jax.random.split(jax.random.PRNGKey(1), 2000)
  for pi in (optimal, bl.uniform_policy(params)):
    totals = jax.vmap(lambda k, pi=pi: bl.mdp_trial(pi, env, params, k, 2).sum())(keys)
    exact = 2 * float(bl.policy_value(params, pi)[0, 0])
    assert abs(float(totals.mean()) - exact) < 4 * float(totals.std()) / np.sqrt(2000)
  # The optimum is worth more than acting at random.
  assert float(bl.policy_value(params, optimal)[0, 0]) > float(
    bl.policy_value(params, bl.uniform_policy(params))[0, 0]
  )


def _bayes_value(num_pulls, num_arms, rule, table=None):
  """Exact expected total reward under the U[0, 1] prior of a posterior-state policy (recursion).

  rule: "optimal" (Bayes-optimal: max over arms), "gittins" (argmax of `table`, ties averaged)
  or "greedy" (argmax of the posterior mean, ties averaged).
  """

  @functools.lru_cache(None)
  def value(state):
    m = num_pulls - sum(state)
    if m == 0:
      return 0.0
    arms = [(state[2 * a], state[2 * a + 1]) for a in range(num_arms)]
    means = [(s + 1) / (s + f + 2) for s, f in arms]
    q = []
    for a, mu in enumerate(means):
      up, down = list(state), list(state)
      up[2 * a] += 1
      down[2 * a + 1] += 1
      q.append(mu * (1 + value(tuple(up))) + (1 - mu) * value(tuple(down)))
    if rule == "optimal":
      return max(q)
    scores = np.array([table[m - 1, s, f] for s, f in arms] if rule == "gittins" else means)
    return float(np.mean([q[a] for a in np.flatnonzero(scores >= scores.max() - 1e-9)]))

  return value((0,) * (2 * num_arms))


def _index_by_bisection(m, s, f):
  """The finite-horizon Gittins index from its definition: bisection on the calibration rate."""

  def q(lam):
    @functools.lru_cache(None)
    def w(m, s, f):
      return 0.0 if m == 0 else max(0.0, cont(m, s, f))

    def cont(m, s, f):
      mu = (s + 1) / (s + f + 2)
      return mu - lam + mu * w(m - 1, s + 1, f) + (1 - mu) * w(m - 1, s, f + 1)

    return cont(m, s, f)

  lo, hi = 0.0, 1.0
  for _ in range(40):
    lo, hi = ((lo + hi) / 2, hi) if q((lo + hi) / 2) > 0 else (lo, (lo + hi) / 2)
  return lo


def test_gittins_indices_match_their_definition_and_known_properties():
  n = 8
  table = bl.gittins_indices(n)
  for m, s, f in itertools.product(range(1, n + 1), range(n), range(n)):
    if s + f <= n - m:
      # The grid's linear interpolation is within 1e-3 of the bisection (3e-4 measured).
      np.testing.assert_allclose(table[m - 1, s, f], _index_by_bisection(m, s, f), atol=1e-3)
  s, f = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  np.testing.assert_allclose(table[0, :n, :n], (s + 1) / (s + f + 2), atol=1e-6)  # one pull: mean
  valid = s + f <= 3
  for m in range(1, 5):  # information is worth more with more pulls left
    assert np.all(table[m, :n, :n][valid] >= table[m - 1, :n, :n][valid] - 1e-6)
  assert np.all(np.diff(table[4, :4, 0]) > 0) and np.all(np.diff(table[4, 0, :4]) < 0)


def test_gittins_is_nearly_bayes_optimal_and_beats_greedy_exactly():
  # Exact expectations under the prior (no sampling): 2 arms x 20 pulls and 3 arms x 10.
  for n, k in ((20, 2), (10, 3)):
    table = bl.gittins_indices(n)
    optimal = _bayes_value(n, k, "optimal")
    gittins = _bayes_value(n, k, "gittins", table)
    greedy = _bayes_value(n, k, "greedy")
    # measured: 12.4313 / 12.4294 / 12.3654 (n = 20) and 6.4096 / 6.4096 / 6.3831 (n = 10)
    assert optimal - 0.005 < gittins <= optimal + 1e-9, (n, k, optimal, gittins)
    assert gittins > greedy + 0.02, (n, k, gittins, greedy)


def test_gittins_policy_plays_the_table_and_jits_with_a_traced_table():
  n = 30
  env = bandits.BernoulliBandit(5)
  params = bandits.EnvParams(means=MEANS)
  table = jnp.asarray(bl.gittins_indices(n))
  run = jax.jit(lambda tab, k: bl.bandit_trial(bl.gittins_policy(tab), env, params, k, n))
  keys = jax.random.split(jax.random.PRNGKey(0), 200)
  trials = jax.vmap(run, in_axes=(None, 0))(table, keys)
  closed = jax.vmap(lambda k: bl.bandit_trial(bl.gittins(n), env, params, k, n))(keys)
  np.testing.assert_array_equal(trials.actions, closed.actions)
  # Replay one trial: each pull is the argmax of the index with the pulls left.
  counts, succ = np.zeros(5), np.zeros(5)
  actions, rewards = np.asarray(trials.actions[0]), np.asarray(trials.rewards[0])
  for t, (arm, r) in enumerate(zip(actions, rewards, strict=True)):
    scores = np.asarray(table)[n - t - 1, succ.astype(int), (counts - succ).astype(int)]
    assert scores[arm] >= scores.max() - 1e-7
    counts[arm] += 1
    succ[arm] += r
  assert float(trials.regret.mean()) < _mean_regret(bl.epsilon_greedy(0.0), n)


def test_optimistic_thompson_draws_at_least_the_posterior_mean():
  policy = bl.optimistic_thompson()
  # A tight arm at mean 0.6 beside a wide one at 0.5: a plain draw of the tight arm falls
  # below 0.6 half the time, an optimistic one never does.
  counts, successes = jnp.array([1000.0, 2.0]), jnp.array([600.0, 1.0])
  a, b = 1 + successes, 1 + counts - successes
  for key in jax.random.split(jax.random.PRNGKey(0), 200):
    draws = np.asarray(jax.random.beta(jax.random.split(key)[0], a, b))
    expected = np.argmax(np.maximum(draws, np.asarray(a / (a + b))))
    assert int(policy(key, 20, counts, successes)) == expected
  assert _mean_regret(policy, 500) < _mean_regret(bl.random_policy, 500) / 5
