"""RL²: a recurrent policy whose hidden state is the state of a learned RL algorithm.

A trial is `num_episodes` episodes of ONE task (an environment's `EnvParams`).
At every step the GRU reads x_t = [o_t, onehot(a_{t-1}), r_{t-1}, d_{t-1}]
(observation, previous action, reward and done flag) and updates
h_t = GRU(h_{t-1}, x_t); the policy is pi(a_t | h_t) = softmax(W_pi h_t) and
the value V(h_t) = w_v h_t. The hidden state is zero at the start of a trial
and is NOT reset at episode boundaries, so what the agent learned about the
task in one episode shapes the next. The slow learner maximises the expected
total reward of the trial (episode boundaries are not discount boundaries):

  A_t = sum_l (gamma lambda)^l delta_{t+l},  delta_t = r_t + gamma V_{t+1} - V_t,  V_T = 0 (GAE)
  L(theta) = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)
             + c_v mean_t (V_t - (A_t + V_t))^2 - c_H mean_t H[pi(. | h_t)]

with rho_t = pi_theta(a_t | h_t) / pi_old(a_t | h_t) (PPO's clipped surrogate).
GAE, the clipped surrogate and the entropy term are rlax's.

Why `meta_loss` and not `meta_grad`: the interface gives one task and the
current theta, and the meta-step batches tasks and applies one update. The
trial is rolled out inside `meta_loss` under theta, so pi_old is theta itself
(`stop_gradient`): rho_t = 1 and its gradient is grad log pi(a_t | h_t)
through the recurrence (back-propagation through the trial). This is PPO's
first epoch on each fresh batch of trials: the clipped objective's value and
gradient equal the GAE policy gradient's there, and the clip would only bind in
later epochs on the same data. PPO's further epochs need the policy that
collected the data held fixed while theta moves across several updates over
the whole batch of tasks; neither `meta_loss` nor a per-task `meta_grad` sees
more than one task, so they are left out rather than imitated per task. The
outer optimizer (Adam) takes one step per batch of fresh trials.

`adapt(theta, env_params, key)` rolls out one trial and returns it (`Trial`):
the task parameters of RL² are its recurrent state, `trial.hidden[-1]`, and
the trial's rewards are what the task family scores.

References:
  Duan, Schulman, Chen, Bartlett, Sutskever, Abbeel. RL²: Fast reinforcement
  learning via slow reinforcement learning. arXiv:1611.02779, 2016.
  Wang, Kurth-Nelson, Tirumala, Soyer, Leibo, Munos, Blundell, Kumaran,
  Botvinick. Learning to reinforcement learn. arXiv:1611.05763, 2016.
  Schulman, Wolski, Dhariwal, Radford, Klimov. Proximal policy optimization
  algorithms. arXiv:1707.06347, 2017.
  Schulman, Moritz, Levine, Jordan, Abbeel. High-dimensional continuous
  control using generalized advantage estimation. ICLR 2016.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import rlax

from metalearn.core import MetaLearner


class RecurrentPolicy(nn.Module):
  """GRU core with a softmax policy head and a value head.

  `(h [H], x [d]) -> (h' [H], logits [A], value [])`.
  """

  num_actions: int
  hidden: int = 128

  @nn.compact
  def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    h, y = nn.GRUCell(self.hidden, name="gru")(h, x)
    logits = nn.Dense(self.num_actions, kernel_init=nn.initializers.zeros, name="pi")(y)
    value = nn.Dense(1, name="v")(y)[..., 0]
    return h, logits, value


class Trial(NamedTuple):
  """One trial of T = num_episodes x horizon steps (arrays `[T, ...]`).

  Attributes:
    inputs: `[T, d]`, x_t = [o_t, onehot(a_{t-1}), r_{t-1}, d_{t-1}].
    actions: `[T]` int32.
    rewards: `[T]`.
    dones: `[T]` bool, the episode ended with this step.
    logits: `[T, A]`, the policy's logits at each step (functions of theta).
    values: `[T]`, V(h_t).
    hidden: `[T + 1, H]`, h_0 (zeros) then the state after each step.
  """

  inputs: jax.Array
  actions: jax.Array
  rewards: jax.Array
  dones: jax.Array
  logits: jax.Array
  values: jax.Array
  hidden: jax.Array


def gae(rewards: jax.Array, values: jax.Array, gamma: float, lam: float) -> jax.Array:
  """GAE advantages `[T]` of one trial: `values [T]`, bootstrap 0 after the last step (rlax)."""
  discounts = jnp.full_like(rewards, gamma).at[-1].set(0.0)
  return rlax.truncated_generalized_advantage_estimation(
    rewards, discounts, lam, jnp.append(values, 0.0)
  )


def rl2(
  env: Any,
  *,
  num_episodes: int,
  hidden: int = 128,
  gamma: float = 0.99,
  gae_lambda: float = 0.3,
  clip_epsilon: float = 0.2,
  entropy_coef: float = 0.01,
  value_coef: float = 0.5,
  normalize_advantages: bool = False,
) -> MetaLearner:
  """RL² with a GRU policy trained by PPO's clipped objective with GAE.

  Args:
    env: a gymnax environment with discrete actions whose episodes last
      `max_steps_in_episode` steps of its `EnvParams` (the task).
    num_episodes: episodes per trial (n pulls for a bandit, n episodes for an MDP).
    hidden: GRU width.
    gamma: discount over the whole trial.
    gae_lambda: GAE's lambda.
    clip_epsilon: PPO's clip range eps.
    entropy_coef: c_H.
    value_coef: c_v.
    normalize_advantages: standardise the GAE advantages over the trial's
      steps (zero mean, unit deviation) in the policy term, as PPO
      implementations do over a batch; the value target keeps the raw
      advantages. Makes the policy term's scale independent of the trial's
      return (about 6 at n = 10 pulls, 50-80 at n = 100).

  Returns:
    A `MetaLearner` on tasks `EnvParams`; `adapt` returns the `Trial`.
  """
  if not isinstance(num_episodes, int) or num_episodes < 1:
    raise ValueError(f"num_episodes must be a positive int, got {num_episodes!r}")
  if not 0.0 <= gamma <= 1.0 or not 0.0 <= gae_lambda <= 1.0:
    raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {gamma}, {gae_lambda}")
  policy = RecurrentPolicy(env.num_actions, hidden)
  num_actions = env.num_actions

  def first_input(obs):
    return jnp.concatenate([obs, jnp.zeros([num_actions + 1]), jnp.ones([1])])

  def init(key, env_params):
    obs, _ = env.reset(key, env_params)
    return policy.init(key, jnp.zeros([hidden]), first_input(obs))

  def adapt(theta, env_params, key) -> Trial:
    steps = num_episodes * env_params.max_steps_in_episode
    reset_key, key = jax.random.split(key)
    obs, state = env.reset(reset_key, env_params)

    def step(carry, key):
      state, x, h = carry
      act_key, env_key = jax.random.split(key)
      h, logits, value = policy.apply(theta, h, x)
      action = jax.random.categorical(act_key, logits)
      obs, state, reward, terminated, truncated, _ = env.step(env_key, state, action, env_params)
      done = jnp.logical_or(terminated, truncated)
      x_next = jnp.concatenate(
        [obs, jax.nn.one_hot(action, num_actions), reward[None], done[None].astype(jnp.float32)]
      )
      return (state, x_next, h), (x, action, reward, done, logits, value, h)

    h0 = jnp.zeros([hidden])
    _, (x, a, r, d, logits, v, h) = jax.lax.scan(
      step, (state, first_input(obs), h0), jax.random.split(key, steps)
    )
    return Trial(x, a, r, d, logits, v, jnp.concatenate([h0[None], h]))

  def meta_loss(theta, env_params, key):
    trial = adapt(theta, env_params, key)
    values = jax.lax.stop_gradient(trial.values)
    advantages = gae(trial.rewards, values, gamma, gae_lambda)
    policy_advantages = advantages
    if normalize_advantages:
      centred = advantages - jnp.mean(advantages)
      policy_advantages = centred / (jnp.std(advantages) + 1e-8)
    log_pi = jax.nn.log_softmax(trial.logits)
    log_pi_a = jnp.take_along_axis(log_pi, trial.actions[:, None], axis=-1)[:, 0]
    ratios = jnp.exp(log_pi_a - jax.lax.stop_gradient(log_pi_a))
    policy_loss = rlax.clipped_surrogate_pg_loss(ratios, policy_advantages, clip_epsilon)
    value_loss = jnp.mean(jnp.square(trial.values - (advantages + values)))
    entropy = -rlax.entropy_loss(trial.logits, jnp.ones_like(trial.rewards))
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
    metrics = {
      "total_reward": jnp.sum(trial.rewards),
      "policy_loss": policy_loss,
      "value_loss": value_loss,
      "entropy": entropy,
    }
    return loss, metrics

  return MetaLearner(init, adapt, meta_loss, None, "rl2")
