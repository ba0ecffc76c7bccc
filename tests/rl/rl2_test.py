"""RL²: trials, the recurrent state across episodes and trials, the PPO/GAE loss, configs."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import rl2_bandit, rl2_mdp
from experiments.train import ConfigError, train_and_evaluate
from metalearn import core
from metalearn.algorithms import rl2 as rl2_lib
from metalearn.rl import bandits, tabular_mdp


def _mdp_learner(horizon=3, episodes=2, hidden=8):
  env = tabular_mdp.TabularMDP(num_states=4, num_actions=3, horizon=horizon)
  learner = rl2_lib.rl2(env, num_episodes=episodes, hidden=hidden)
  params = env.sample_params(jax.random.PRNGKey(0))
  return env, learner, learner.init(jax.random.PRNGKey(1), params), params


def test_trial_layout_inputs_and_done_flags():
  _, learner, theta, params = _mdp_learner()
  trial = learner.adapt(theta, params, jax.random.PRNGKey(2))
  assert trial.inputs.shape == (6, 4 + 3 + 1 + 1) and trial.hidden.shape == (7, 8)
  np.testing.assert_array_equal(trial.dones, [False, False, True, False, False, True])
  x = np.asarray(trial.inputs)
  # x_t = [o_t, onehot(a_{t-1}), r_{t-1}, d_{t-1}]; a trial starts with no action, r 0, done 1.
  np.testing.assert_array_equal(x[0, 4:], [0, 0, 0, 0, 1])
  for t in range(1, 6):
    np.testing.assert_array_equal(x[t, 4:7], np.eye(3)[int(trial.actions[t - 1])])
    np.testing.assert_allclose(x[t, 7], trial.rewards[t - 1])
    assert x[t, 8] == float(trial.dones[t - 1])
  # After the first episode the environment reset itself to state 0.
  np.testing.assert_array_equal(x[3, :4], [1, 0, 0, 0])


def test_hidden_state_carries_across_episodes_within_a_trial():
  _, learner, theta, params = _mdp_learner()
  theta = jax.tree_util.tree_map(lambda a: a + 0.3, theta)  # a policy head that is not zero
  trial = learner.adapt(theta, params, jax.random.PRNGKey(2))
  policy = rl2_lib.RecurrentPolicy(3, 8)
  h3 = trial.hidden[3]  # the state the second episode starts from
  assert float(jnp.abs(h3).max()) > 1e-3
  # Step 3 is computed from the carried state, not from a fresh one.
  _, logits, _ = policy.apply(theta, h3, trial.inputs[3])
  np.testing.assert_allclose(logits, trial.logits[3], rtol=1e-5, atol=1e-6)
  _, fresh, _ = policy.apply(theta, jnp.zeros(8), trial.inputs[3])
  assert float(jnp.abs(fresh - trial.logits[3]).max()) > 1e-4


def test_what_one_episode_paid_changes_the_next_episodes_policy():
  env = bandits.BernoulliBandit(num_arms=3)
  learner = rl2_lib.rl2(env, num_episodes=4, hidden=8)
  lose, win = bandits.EnvParams(means=jnp.zeros(3)), bandits.EnvParams(means=jnp.ones(3))
  theta = learner.init(jax.random.PRNGKey(0), lose)
  # Non-zero policy head so that the state shows in the logits.
  theta = jax.tree_util.tree_map(lambda a: a + 0.3, theta)
  a = learner.adapt(theta, lose, jax.random.PRNGKey(1))
  b = learner.adapt(theta, win, jax.random.PRNGKey(1))
  np.testing.assert_allclose(a.logits[0], b.logits[0])  # same start, same first action
  assert int(a.actions[0]) == int(b.actions[0])
  assert float(a.rewards[0]) == 0.0 and float(b.rewards[0]) == 1.0
  assert float(jnp.abs(a.logits[1] - b.logits[1]).max()) > 1e-4  # episode 2 saw the reward


def test_hidden_state_resets_between_trials():
  env, learner, theta, params = _mdp_learner()
  tasks = jax.vmap(env.sample_params)(jax.random.split(jax.random.PRNGKey(5), 3))
  keys = jax.random.split(jax.random.PRNGKey(6), 3)
  trials = jax.jit(jax.vmap(learner.adapt, in_axes=(None, 0, 0)))(theta, tasks, keys)
  np.testing.assert_array_equal(trials.hidden[:, 0], 0.0)
  # Every trial starts from the same state and input, whatever came before it.
  np.testing.assert_allclose(trials.logits[:, 0], jnp.broadcast_to(trials.logits[0, 0], (3, 3)))
  adapt = jax.jit(learner.adapt)
  first = adapt(theta, params, jax.random.PRNGKey(2))
  again = adapt(theta, params, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(again.actions, first.actions)


def test_batched_trials_equal_a_loop_of_single_trials():
  env, learner, theta, _ = _mdp_learner()
  tasks = jax.vmap(env.sample_params)(jax.random.split(jax.random.PRNGKey(5), 4))
  keys = jax.random.split(jax.random.PRNGKey(6), 4)
  adapt = jax.jit(learner.adapt)
  batched = jax.vmap(adapt, in_axes=(None, 0, 0))(theta, tasks, keys)
  for i in range(4):
    one = adapt(theta, core.task(tasks, i), keys[i])
    np.testing.assert_array_equal(one.actions, batched.actions[i])
    np.testing.assert_allclose(one.rewards, batched.rewards[i], rtol=1e-6)
    np.testing.assert_allclose(one.logits, batched.logits[i], rtol=1e-5, atol=1e-6)


def test_gae_matches_the_backward_recursion():
  rewards = np.array([1.0, 0.0, 2.0, -1.0])
  values = np.array([0.5, 0.2, -0.3, 0.7])
  gamma, lam = 0.9, 0.7
  expected, running = np.zeros(4), 0.0
  for t in reversed(range(4)):
    next_v = values[t + 1] if t + 1 < 4 else 0.0
    running = rewards[t] + gamma * next_v - values[t] + gamma * lam * running
    expected[t] = running
  got = rl2_lib.gae(jnp.asarray(rewards), jnp.asarray(values), gamma, lam)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_loss_is_the_policy_gradient_with_gae_at_the_collecting_policy():
  env, _, _, params = _mdp_learner()
  learner = rl2_lib.rl2(env, num_episodes=2, hidden=8, entropy_coef=0.1, value_coef=0.5)
  theta = learner.init(jax.random.PRNGKey(1), params)
  theta = jax.tree_util.tree_map(lambda a: a + 0.05, theta)
  key = jax.random.PRNGKey(3)

  def terms(theta):
    trial = learner.adapt(theta, params, key)
    v = jax.lax.stop_gradient(trial.values)
    adv = rl2_lib.gae(trial.rewards, v, 0.99, 0.3)
    log_pi = jax.nn.log_softmax(trial.logits)
    log_pi_a = log_pi[jnp.arange(6), trial.actions]
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_pi) * log_pi, -1))
    value = jnp.mean((trial.values - (adv + v)) ** 2)
    return log_pi_a, adv, value, entropy

  def reinforce(theta):  # the GAE policy gradient's surrogate: same gradient, another value
    log_pi_a, adv, value, entropy = terms(theta)
    return -jnp.mean(log_pi_a * adv) + 0.5 * value - 0.1 * entropy

  loss, metrics = jax.jit(learner.meta_loss)(theta, params, key)
  _, adv, value, entropy = jax.jit(terms)(theta)
  # At the collecting policy every ratio is 1: the clipped surrogate is -mean(A).
  np.testing.assert_allclose(loss, -jnp.mean(adv) + 0.5 * value - 0.1 * entropy, rtol=1e-5)
  np.testing.assert_allclose(value, jnp.mean(adv**2), rtol=1e-5)
  g = jax.jit(jax.grad(lambda t: learner.meta_loss(t, params, key)[0]))(theta)
  g_hand = jax.jit(jax.grad(reinforce))(theta)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_hand), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(metrics["total_reward"]) == pytest.approx(
    float(jax.jit(learner.adapt)(theta, params, key).rewards.sum()), rel=1e-5
  )


def test_normalized_advantages_standardise_the_policy_term_only():
  env, _, _, params = _mdp_learner()
  key = jax.random.PRNGKey(3)
  plain = rl2_lib.rl2(env, num_episodes=2, hidden=8, entropy_coef=0.0, value_coef=0.5)
  normed = rl2_lib.rl2(
    env, num_episodes=2, hidden=8, entropy_coef=0.0, value_coef=0.5, normalize_advantages=True
  )
  theta = jax.tree_util.tree_map(lambda a: a + 0.05, plain.init(jax.random.PRNGKey(1), params))
  _, m_plain = plain.meta_loss(theta, params, key)
  loss, m_normed = normed.meta_loss(theta, params, key)
  # Ratios are 1 at the collecting policy, so the clipped surrogate is -mean(A): zero once
  # A is centred (and not zero before); the value term is unchanged.
  assert abs(float(m_plain["policy_loss"])) > 1e-3
  np.testing.assert_allclose(m_normed["policy_loss"], 0.0, atol=1e-6)
  np.testing.assert_allclose(m_normed["value_loss"], m_plain["value_loss"], rtol=1e-6)
  np.testing.assert_allclose(loss, 0.5 * m_plain["value_loss"], rtol=1e-5)

  # Its gradient is that of -mean(log pi(a) * (A - mean A) / std A).
  def surrogate(t):
    trial = plain.adapt(t, params, key)
    v = jax.lax.stop_gradient(trial.values)
    adv = rl2_lib.gae(trial.rewards, v, 0.99, 0.3)
    z = (adv - adv.mean()) / (adv.std() + 1e-8)
    log_pi_a = jax.nn.log_softmax(trial.logits)[jnp.arange(6), trial.actions]
    return -jnp.mean(log_pi_a * z) + 0.5 * jnp.mean((trial.values - (adv + v)) ** 2)

  g = jax.grad(lambda t: normed.meta_loss(t, params, key)[0])(theta)
  g_hand = jax.grad(surrogate)(theta)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_hand), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_meta_training_learns_to_exploit_within_a_trial():
  # Two arms, one pays always, the other never: a learned algorithm finds and keeps the good one.
  env = bandits.BernoulliBandit(num_arms=2)
  learner = rl2_lib.rl2(env, num_episodes=6, hidden=16, gamma=0.9, entropy_coef=0.0)

  def sample(key, n):
    good = jax.random.bernoulli(key, 0.5, [n]).astype(jnp.int32)
    return bandits.EnvParams(means=jax.nn.one_hot(good, 2))

  optimizer = optax.adam(3e-2)
  state = core.init_state(
    learner, optimizer, jax.random.PRNGKey(0), core.task(sample(jax.random.PRNGKey(0), 1), 0)
  )
  step = jax.jit(core.make_meta_step(learner, optimizer))
  rewards = []
  for i in range(150):
    state, metrics = step(state, sample(jax.random.PRNGKey(100 + i), 32))
    rewards.append(float(metrics["total_reward"]))
  # Random play earns 3 of 6; find-and-stay earns 5.5 in expectation.
  assert np.mean(rewards[:10]) < 3.6
  assert np.mean(rewards[-20:]) > 4.8, rewards[-20:]


def test_bad_arguments_are_refused():
  env = bandits.BernoulliBandit(2)
  with pytest.raises(ValueError, match="num_episodes"):
    rl2_lib.rl2(env, num_episodes=0)
  with pytest.raises(ValueError, match="gamma"):
    rl2_lib.rl2(env, num_episodes=3, gamma=1.5)


def test_mdp_smoke_config_trains_and_scores_against_baselines(tmp_path):
  out = train_and_evaluate(rl2_mdp.get_config("smoke"), str(tmp_path))
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["metrics"].keys() == out["metrics"].keys() == {"rl2", "random", "value_iteration"}
  m = {k: v["total_reward"] for k, v in saved["metrics"].items()}
  assert all(s["n"] == 32 and np.isfinite(s["mean"]) for s in m.values())
  # The optimum of the true MDP is worth more than random play (2 episodes of 10 steps).
  assert m["value_iteration"]["mean"] > m["random"]["mean"]
  assert (tmp_path / "learning_curve.png").stat().st_size > 0


def test_bandit_smoke_config_runs_through_the_binary(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "experiments.meta_train",
    "--config=experiments/configs/rl2_bandit.py:smoke",
    f"--workdir={tmp_path}",
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["step"] == 4
  assert {"rl2", "random", "thompson", "ucb1", "greedy"} <= set(saved["metrics"])
  for s in saved["metrics"].values():
    assert s["total_reward"]["n"] == 32 and 0 <= s["total_reward"]["mean"] <= 10
  assert (tmp_path / "learning_curve.png").stat().st_size > 0
  # A bad field is refused, the message naming it, before anything is written.
  config = rl2_bandit.get_config("smoke")
  with config.unlocked():
    config.num_pulls = 0
  with pytest.raises(ConfigError, match="num_pulls"):
    train_and_evaluate(config, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()
