"""2-D navigation and rollouts: environment invariants, batched = looped, returns, baseline."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import core
from metalearn.rl import navigation as nav
from metalearn.rl import rollout as ro

ENV = nav.Navigation2D()


def params(goal):
  return nav.EnvParams(goal=jnp.asarray(goal, jnp.float32))


def test_tasks_are_goals_in_the_unit_square_around_the_origin():
  tasks = nav.sample_tasks(jax.random.PRNGKey(0), 1000)
  assert tasks.goal.shape == (1000, 2) and tasks.max_steps_in_episode == nav.HORIZON
  assert core.num_tasks(tasks) == 1000  # the goal is the task's only array
  assert float(jnp.max(jnp.abs(tasks.goal))) <= 0.5
  assert float(jnp.min(tasks.goal)) < -0.45 and float(jnp.max(tasks.goal)) > 0.45
  with pytest.raises(ValueError, match="num_tasks"):
    nav.sample_tasks(jax.random.PRNGKey(0), 0)


def test_reset_is_the_origin_and_step_clips_and_rewards_minus_distance():
  p = params([0.3, -0.4])
  obs, state = ENV.reset(jax.random.PRNGKey(0), p)
  np.testing.assert_array_equal(obs, [0.0, 0.0])
  assert int(state.time) == 0
  rng = np.random.default_rng(0)
  position = np.zeros(2)
  for t in range(10):
    action = rng.normal(size=2) * 0.2
    obs, state, reward, terminated, truncated, _ = ENV.step(
      jax.random.PRNGKey(t), state, jnp.asarray(action, jnp.float32), p
    )
    position = position + np.clip(action, -0.1, 0.1)
    np.testing.assert_allclose(obs, position, atol=1e-6)
    np.testing.assert_allclose(reward, -np.linalg.norm(position - [0.3, -0.4]), rtol=1e-5)
    assert not bool(terminated) and not bool(truncated)
    assert int(state.time) == t + 1


def test_episode_truncates_at_the_horizon_and_resets():
  p = params([0.5, 0.5])
  _, state = ENV.reset(jax.random.PRNGKey(0), p)
  for t in range(nav.HORIZON):
    obs, state, _, terminated, truncated, info = ENV.step(
      jax.random.PRNGKey(t), state, jnp.array([-0.1, 0.0]), p
    )
    assert not bool(terminated)
    assert bool(truncated) == (t == nav.HORIZON - 1)
  # Auto-reset: back at the origin, time 0; the last position is in info.
  np.testing.assert_array_equal(obs, [0.0, 0.0])
  assert int(state.time) == 0
  np.testing.assert_allclose(info["final_observation"], [-0.1 * nav.HORIZON, 0.0], rtol=1e-5)


def test_reaching_the_goal_terminates_and_resets():
  p = params([0.25, -0.05])
  _, state = ENV.reset(jax.random.PRNGKey(0), p)
  done_at = None
  for t in range(10):
    action = nav.oracle_action(state.position, p)
    obs, state, reward, terminated, truncated, info = ENV.step(
      jax.random.PRNGKey(t), state, action, p
    )
    if bool(terminated):
      done_at = t
      break
  assert done_at == 2  # 0.25 is 2.5 steps of 0.1 away: reached on the third step
  np.testing.assert_allclose(info["final_observation"], [0.25, -0.05], atol=1e-6)
  np.testing.assert_allclose(reward, 0.0, atol=1e-6)
  np.testing.assert_array_equal(obs, [0.0, 0.0])
  assert int(state.time) == 0 and not bool(truncated)


def oracle_return(goal):
  """Closed form: each coordinate closes 0.1 a step; the episode ends at the goal."""
  goal = np.asarray(goal, np.float64)
  total = 0.0
  for t in range(1, nav.HORIZON + 1):
    gap = np.maximum(np.abs(goal) - 0.1 * t, 0.0)
    total -= np.linalg.norm(gap)
    if np.all(gap < nav.GOAL_TOLERANCE):
      break
  return total


def test_rollout_masks_after_the_episode_ends_and_oracle_has_its_closed_form():
  p = params([0.33, 0.12])
  act = lambda obs, key: nav.oracle_action(obs, p)
  traj = ro.rollout(ENV, p, act, jax.random.PRNGKey(0), 3)
  assert traj.obs.shape == (3, nav.HORIZON, 2) and traj.mask.shape == (3, nav.HORIZON)
  np.testing.assert_array_equal(traj.mask[:, :4], 1.0)  # ends on the 4th step (0.33 -> 4 steps)
  np.testing.assert_array_equal(traj.mask[:, 4:], 0.0)
  np.testing.assert_allclose(ro.episode_returns(traj), oracle_return([0.33, 0.12]), rtol=1e-5)
  still = ro.rollout(ENV, p, lambda obs, key: jnp.zeros(2), jax.random.PRNGKey(0), 1)
  np.testing.assert_allclose(ro.episode_returns(still), -100 * np.hypot(0.33, 0.12), rtol=1e-5)


def test_batched_rollout_equals_a_loop_of_single_rollouts():
  """vmap over tasks of (vmap over trajectories of scan over time) = Python loops of env.step."""
  policy = ro.gaussian_mlp(2, hidden=(8,))
  theta = policy.init(jax.random.PRNGKey(0), jnp.zeros(2))
  tasks = nav.sample_tasks(jax.random.PRNGKey(1), 3, horizon=12)
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  act = functools.partial(policy.sample, theta)
  batched = jax.jit(jax.vmap(lambda p, k: ro.rollout(ENV, p, act, k, 2)))(tasks, keys)
  for i in range(3):
    p = core.task(tasks, i)
    for j, traj_key in enumerate(jax.random.split(keys[i], 2)):
      reset_key, steps_key = jax.random.split(traj_key)
      obs, state = ENV.reset(reset_key, p)
      alive = 1.0
      for t, key in enumerate(jax.random.split(steps_key, 12)):
        act_key, env_key = jax.random.split(key)
        action = policy.sample(theta, obs, act_key)
        np.testing.assert_allclose(batched.obs[i, j, t], obs, atol=1e-6)
        np.testing.assert_allclose(batched.actions[i, j, t], action, atol=1e-6)
        obs, state, reward, terminated, truncated, _ = ENV.step(env_key, state, action, p)
        np.testing.assert_allclose(batched.rewards[i, j, t], reward * alive, atol=1e-6)
        assert float(batched.mask[i, j, t]) == alive
        alive *= 1.0 - float(terminated | truncated)


def test_discounted_returns_and_linear_baseline_match_numpy():
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(4, 6)).astype(np.float32)
  mask = np.ones((4, 6), np.float32)
  mask[1, 3:] = 0.0
  returns = ro.discounted_returns(jnp.asarray(rewards), jnp.asarray(mask), 0.9)
  expected = np.zeros_like(rewards)
  for i in range(4):
    acc = 0.0
    for t in reversed(range(6)):
      acc = (rewards[i, t] + 0.9 * acc) * mask[i, t]
      expected[i, t] = acc
  np.testing.assert_allclose(returns, expected, rtol=1e-5, atol=1e-6)
  obs = rng.normal(size=(4, 6, 2)).astype(np.float32)
  values = ro.linear_baseline(jnp.asarray(obs), returns, jnp.asarray(mask))
  t = np.broadcast_to(np.arange(6)[:, None] / 100.0, (4, 6, 1))
  f = np.concatenate([obs, obs**2, t, t**2, t**3, np.ones_like(t)], -1) * mask[..., None]
  f2 = f.reshape(-1, 8).astype(np.float64)
  w = np.linalg.solve(f2.T @ f2 + 1e-5 * np.eye(8), f2.T @ (expected * mask).reshape(-1))
  np.testing.assert_allclose(values, (f @ w) * mask, rtol=1e-2, atol=1e-3)
  adv = ro.advantages(
    ro.Trajectories(jnp.asarray(obs), obs, jnp.asarray(rewards), jnp.asarray(mask)), gamma=0.9
  )
  valid = mask > 0
  np.testing.assert_allclose(np.mean(np.asarray(adv)[valid]), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.std(np.asarray(adv)[valid]), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(adv)[~valid], 0.0)
