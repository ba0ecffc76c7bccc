"""Random tabular MDPs: the RL² paper's priors, transitions, rewards, episode boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn.rl import tabular_mdp


def _tasks(n=500, seed=0):
  env = tabular_mdp.TabularMDP()
  return env, jax.vmap(env.sample_params)(jax.random.split(jax.random.PRNGKey(seed), n))


def test_transitions_are_distributions_and_flat_dirichlet():
  _, params = _tasks()
  p = np.asarray(params.transitions)
  assert p.shape == (500, 10, 5, 10)
  assert p.min() >= 0.0
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  # Dirichlet(1, ..., 1) over 10 states: each coordinate is Beta(1, 9), mean 0.1, var 9/1100.
  np.testing.assert_allclose(p.mean(), 0.1, atol=1e-3)
  np.testing.assert_allclose(p.var(), 9 / 1100, rtol=0.03)


def test_reward_means_are_normal_one_one():
  _, params = _tasks()
  r = np.asarray(params.reward_means)
  np.testing.assert_allclose(r.mean(), 1.0, atol=0.02)
  np.testing.assert_allclose(r.std(), 1.0, atol=0.02)


def test_step_reward_and_next_state_follow_the_task():
  env = tabular_mdp.TabularMDP(num_states=3, num_actions=2, horizon=5)
  params = tabular_mdp.EnvParams(
    reward_means=jnp.array([[2.0, -1.0], [0.0, 0.0], [0.0, 0.0]]),
    transitions=jnp.array(
      [[[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], [[1 / 3] * 3] * 2, [[1 / 3] * 3] * 2]
    ),
    max_steps_in_episode=5,
  )
  _, state = env.reset(jax.random.PRNGKey(0), params)
  assert int(state.state) == 0
  n = 20_000
  obs, states, rewards, *_ = jax.vmap(lambda k: env.step(k, state, 0, params))(
    jax.random.split(jax.random.PRNGKey(1), n)
  )
  freq = np.bincount(np.asarray(states.state), minlength=3) / n
  np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=4 * np.sqrt(0.25 / n))
  np.testing.assert_allclose(np.asarray(obs).argmax(-1), np.asarray(states.state))
  assert abs(float(rewards.mean()) - 2.0) < 4 / np.sqrt(n)  # N(2, 1)
  assert abs(float(rewards.std()) - 1.0) < 0.03


def test_episodes_end_after_horizon_and_restart_in_state_zero():
  env = tabular_mdp.TabularMDP(horizon=10)
  params = env.sample_params(jax.random.PRNGKey(0))
  _, state = env.reset(jax.random.PRNGKey(1), params)
  dones, starts = [], []
  for t in range(25):
    _, state, _, terminated, truncated, _ = env.step(jax.random.PRNGKey(t), state, t % 5, params)
    assert not bool(terminated)
    dones.append(bool(truncated))
    starts.append(int(state.time) == 0 and int(state.state) == 0)
  expected = [(t + 1) % 10 == 0 for t in range(25)]
  assert dones == expected
  assert all(s for s, d in zip(starts, dones, strict=True) if d)  # reset to state 0 at time 0


def test_bad_sizes_are_refused():
  with pytest.raises(ValueError, match="horizon"):
    tabular_mdp.TabularMDP(horizon=0)
  with pytest.raises(ValueError, match="num_states"):
    tabular_mdp.TabularMDP(num_states=0)
