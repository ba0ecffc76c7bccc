"""Bernoulli bandit environment: task distribution, reward law, episode boundaries, auto-reset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn.rl import bandits


def test_arm_means_are_uniform_on_unit_interval():
  env = bandits.BernoulliBandit(num_arms=10)
  params = jax.vmap(env.sample_params)(jax.random.split(jax.random.PRNGKey(0), 2000))
  means = np.asarray(params.means)
  assert means.shape == (2000, 10)
  assert means.min() >= 0.0 and means.max() <= 1.0
  # U[0, 1]: mean 1/2, variance 1/12, each decile holds a tenth of the draws.
  np.testing.assert_allclose(means.mean(), 0.5, atol=0.01)
  np.testing.assert_allclose(means.var(), 1 / 12, atol=0.003)
  counts = np.histogram(means, bins=10, range=(0, 1))[0] / means.size
  np.testing.assert_allclose(counts, 0.1, atol=0.01)


def test_reward_is_bernoulli_with_the_arm_mean():
  env = bandits.BernoulliBandit(num_arms=3)
  params = bandits.EnvParams(means=jnp.array([0.1, 0.5, 0.9]))
  _, state = env.reset(jax.random.PRNGKey(0), params)
  n = 20_000
  keys = jax.random.split(jax.random.PRNGKey(1), n)
  for arm, mean in enumerate([0.1, 0.5, 0.9]):
    rewards = jax.vmap(lambda k, arm=arm: env.step(k, state, arm, params)[2])(keys)
    assert set(np.unique(rewards)) <= {0.0, 1.0}
    # 4 standard errors of a Bernoulli mean over n draws.
    assert abs(float(rewards.mean()) - mean) < 4 * np.sqrt(mean * (1 - mean) / n)


def test_each_pull_is_an_episode_that_resets_itself():
  env = bandits.BernoulliBandit(num_arms=5)
  params = env.sample_params(jax.random.PRNGKey(0))
  obs, state = env.reset(jax.random.PRNGKey(1), params)
  np.testing.assert_array_equal(obs, np.zeros([1]))
  assert int(state.time) == 0
  for i in range(3):
    obs, state, _, terminated, truncated, info = env.step(
      jax.random.PRNGKey(2 + i), state, i, params
    )
    assert not bool(terminated) and bool(truncated)  # the one-step episode ends by its limit
    assert int(state.time) == 0  # auto-reset: the next pull starts a new episode
    assert int(info["final_observation"].shape[0]) == 1


def test_batched_steps_equal_a_loop_of_single_steps():
  env = bandits.BernoulliBandit(num_arms=5)
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  params = jax.vmap(env.sample_params)(keys)
  _, states = jax.vmap(env.reset)(keys, params)
  actions = jnp.arange(6) % 5
  batched = jax.vmap(env.step)(keys, states, actions, params)[2]
  for i in range(6):
    one = jax.tree_util.tree_map(lambda a, i=i: a[i], (states, params))
    assert float(env.step(keys[i], one[0], int(actions[i]), one[1])[2]) == float(batched[i])


def test_bad_arm_count_is_refused():
  with pytest.raises(ValueError, match="num_arms"):
    bandits.BernoulliBandit(num_arms=1)
