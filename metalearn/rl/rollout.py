"""Rollouts as pure functions of a key, a Gaussian MLP policy, returns and the linear baseline.

`rollout` runs `N` trajectories of one task (one `EnvParams`) as a `vmap` over
trajectories of a `lax.scan` over time, so under a `vmap` over tasks a whole
meta-batch (tasks x trajectories x time steps) is one jitted computation with
no Python in the loop. Every trajectory has the static length `horizon`;
steps after the episode ended (gymnax resets the environment there) have
`mask = 0` and count for nothing.

References:
  Duan, Chen, Houthooft, Schulman, Abbeel. Benchmarking Deep Reinforcement
  Learning for Continuous Control. ICML 2016 (the Gaussian MLP policy and the
  linear feature baseline, as in rllab and pytorch-maml-rl).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import linalg
from metalearn.types import Params, PRNGKey

ActFn = Callable[[jax.Array, PRNGKey], jax.Array]  # (obs [d], key) -> action [a]


class GaussianMLP(nn.Module):
  """`obs [..., d] -> (mean [..., a], log_std [..., a])`: a tanh MLP mean, a learned log-std.

  The log standard deviation is a parameter vector independent of the
  observation (initialised to `log(init_std)`), as in rllab's
  `GaussianMLPPolicy` and pytorch-maml-rl's `NormalMLPPolicy`; weights are
  Glorot-uniform with zero biases, as there.
  """

  action_dim: int
  hidden: Sequence[int] = (64, 64)
  init_std: float = 1.0

  @nn.compact
  def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = obs
    for width in self.hidden:
      x = jnp.tanh(nn.Dense(width, kernel_init=nn.initializers.xavier_uniform())(x))
    mean = nn.Dense(self.action_dim, kernel_init=nn.initializers.xavier_uniform())(x)
    log_std = self.param(
      "log_std", nn.initializers.constant(jnp.log(self.init_std)), (self.action_dim,)
    )
    return mean, jnp.broadcast_to(log_std, mean.shape)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array) -> jax.Array:
  """`log N(action; mean, diag(exp(log_std))^2)` summed over the last axis: `[...]`."""
  z = (action - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def gaussian_kl(
  mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array, log_std_q: jax.Array
) -> jax.Array:
  """`KL(N_p || N_q)` of diagonal Gaussians, summed over the last axis: `[...]`."""
  var_p, var_q = jnp.exp(2 * log_std_p), jnp.exp(2 * log_std_q)
  kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5
  return jnp.sum(kl, axis=-1)


class Policy(NamedTuple):
  """A Gaussian policy as pure functions of its parameters.

  Attributes:
    init: `(key, obs [d]) -> params`.
    distribution: `(params, obs [..., d]) -> (mean, log_std)`, each `[..., a]`.
  """

  init: Callable[[PRNGKey, jax.Array], Params]
  distribution: Callable[[Params, jax.Array], tuple[jax.Array, jax.Array]]

  def log_prob(self, params: Params, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """`[...]` log-densities of `actions [..., a]` at `obs [..., d]`."""
    return gaussian_log_prob(*self.distribution(params, obs), actions)

  def sample(self, params: Params, obs: jax.Array, key: PRNGKey) -> jax.Array:
    """One action `[a]` drawn at `obs [d]` (no gradient flows into it)."""
    mean, log_std = self.distribution(jax.lax.stop_gradient(params), obs)
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_mlp(
  action_dim: int, hidden: Sequence[int] = (64, 64), init_std: float = 1.0
) -> Policy:
  """The Gaussian MLP policy of MAML-RL (64x64 tanh for 2-D navigation)."""
  if not isinstance(action_dim, int) or action_dim < 1:
    raise ValueError(f"action_dim must be an int >= 1, got {action_dim!r}")
  if not init_std > 0:
    raise ValueError(f"init_std must be > 0, got {init_std!r}")
  module = GaussianMLP(action_dim, tuple(hidden), init_std)
  return Policy(
    init=lambda key, obs: module.init(key, obs),
    distribution=lambda params, obs: module.apply(params, obs),
  )


class Trajectories(NamedTuple):
  """`N` trajectories of one task, each `H` steps long (padded after the episode ends).

  Attributes:
    obs: `[N, H, d]` observation at each step (before the action).
    actions: `[N, H, a]` the actions taken (as sampled, before the env clips them).
    rewards: `[N, H]`.
    mask: `[N, H]` 1.0 for the steps of the episode (up to and including its
      last), 0.0 after it ended.
  """

  obs: jax.Array
  actions: jax.Array
  rewards: jax.Array
  mask: jax.Array


def rollout(
  env: Any,
  env_params: Any,
  act: ActFn,
  key: PRNGKey,
  num_trajectories: int,
  horizon: int | None = None,
) -> Trajectories:
  """`num_trajectories` episodes of one task in gymnax's interface: `vmap` x `lax.scan`.

  Trajectory `i` uses `k_i = split(key, N)[i]`: `reset_key, steps_key = split(k_i)`,
  and step `t` splits `split(steps_key, H)[t]` into the action's key and the
  environment's key (`env.step`).

  Args:
    env: a gymnax `Environment`.
    env_params: one task's `EnvParams`.
    act: `(obs [d], key) -> action [a]`, e.g. `partial(policy.sample, params)`.
    key: PRNG key.
    num_trajectories: N, a static int >= 1.
    horizon: H, steps per trajectory (default `env_params.max_steps_in_episode`).

  Returns:
    `Trajectories` with leading axes `[N, H]`, free of gradients.
  """
  if not isinstance(num_trajectories, int) or num_trajectories < 1:
    raise ValueError(f"num_trajectories must be an int >= 1, got {num_trajectories!r}")
  horizon = env_params.max_steps_in_episode if horizon is None else horizon
  if not isinstance(horizon, int) or horizon < 1:
    raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")

  def one(key):
    reset_key, steps_key = jax.random.split(key)
    obs, state = env.reset(reset_key, env_params)

    def step(carry, key):
      obs, state, alive = carry
      act_key, env_key = jax.random.split(key)
      action = act(obs, act_key)
      next_obs, state, reward, terminated, truncated, _ = env.step(
        env_key, state, action, env_params
      )
      ended = jnp.logical_or(terminated, truncated).astype(jnp.float32)
      return (next_obs, state, alive * (1.0 - ended)), (obs, action, reward, alive)

    carry = (obs, state, jnp.ones([], jnp.float32))
    _, out = jax.lax.scan(step, carry, jax.random.split(steps_key, horizon))
    return out

  out = jax.vmap(one)(jax.random.split(key, num_trajectories))
  obs, actions, rewards, mask = jax.lax.stop_gradient(out)
  return Trajectories(obs, actions, rewards * mask, mask)


def episode_returns(traj: Trajectories) -> jax.Array:
  """`[N]` undiscounted return of each trajectory."""
  return jnp.sum(traj.rewards * traj.mask, axis=-1)


def discounted_returns(rewards: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
  """`R_t = sum_{k >= t} gamma^(k-t) r_k` over the masked steps: `[..., H]` from `[..., H]`."""

  def back(acc, x):
    r, m = x
    acc = (r + gamma * acc) * m
    return acc, acc

  xs = (jnp.moveaxis(rewards * mask, -1, 0), jnp.moveaxis(mask, -1, 0))
  _, out = jax.lax.scan(back, jnp.zeros(rewards.shape[:-1], rewards.dtype), xs, reverse=True)
  return jnp.moveaxis(out, 0, -1)


def baseline_features(obs: jax.Array, mask: jax.Array) -> jax.Array:
  """`[N, H, 2d + 4]` features `(o, o^2, t/100, (t/100)^2, (t/100)^3, 1)`, zero where masked."""
  t = jnp.broadcast_to(
    jnp.arange(obs.shape[-2], dtype=obs.dtype)[:, None] / 100.0, mask[..., None].shape
  )
  features = jnp.concatenate([obs, obs**2, t, t**2, t**3, jnp.ones_like(t)], axis=-1)
  return features * mask[..., None]


def linear_baseline(
  obs: jax.Array, returns: jax.Array, mask: jax.Array, reg: float = 1e-5
) -> jax.Array:
  """Values `[N, H]` of the linear feature baseline fitted by ridge regression to `returns`.

  Solves `(F'F + reg I) w = F'R` over one task's steps; where the solution is
  not finite the regulariser is multiplied by 10, up to four times (rllab's
  and pytorch-maml-rl's `LinearFeatureBaseline`).
  """
  f = baseline_features(obs, mask).reshape(-1, 2 * obs.shape[-1] + 4)
  ftf, ftr = f.T @ f, f.T @ (returns * mask).reshape(-1)
  eye = jnp.eye(f.shape[-1], dtype=f.dtype)
  solve = lambda a: linalg.cho_solve(linalg.cholesky(a), ftr)  # no LAPACK: see metalearn.linalg
  ws = jnp.stack([solve(ftf + reg * 10.0**i * eye) for i in range(5)])
  ok = jnp.all(jnp.isfinite(ws), axis=-1)
  w = ws[jnp.argmax(ok)]
  return (baseline_features(obs, mask) @ w) * mask


def normalize(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
  """`(x - mean) / (std + eps)` over the masked entries, zero elsewhere."""
  n = jnp.maximum(jnp.sum(mask), 1.0)
  mean = jnp.sum(x * mask) / n
  std = jnp.sqrt(jnp.sum(((x - mean) * mask) ** 2) / n)
  return (x - mean) / (std + eps) * mask


def advantages(
  traj: Trajectories, *, gamma: float, baseline: str = "linear", normalized: bool = True
) -> jax.Array:
  """`[N, H]` advantages `R_t - b(s_t)` (GAE with lambda = 1), optionally normalised.

  Args:
    traj: one task's trajectories.
    gamma: discount of the returns `R_t`.
    baseline: `"linear"` (fitted to this task's returns) or `"none"`.
    normalized: centre and scale over the task's steps (as rllab and pytorch-maml-rl).
  """
  if baseline not in ("linear", "none"):
    raise ValueError(f"baseline must be 'linear' or 'none', got {baseline!r}")
  returns = discounted_returns(traj.rewards, traj.mask, gamma)
  if baseline == "linear":
    returns = returns - linear_baseline(traj.obs, returns, traj.mask)
  return normalize(returns, traj.mask) if normalized else returns * traj.mask
