r"""MAML for reinforcement learning: a policy-gradient inner step, a TRPO outer step.

For a task `T` (an environment's `EnvParams`) the inner loop samples `N`
trajectories `D ~ pi_theta` and takes one vanilla policy-gradient step,

  theta'(theta, D) = theta + alpha * grad_theta J_in(theta; D),
  J_in(theta; D) = mean_{i,t} w_t(theta) A_t              (advantages A from a linear baseline),

and the meta-objective is the return of the adapted policy, estimated from
trajectories `D' ~ pi_theta'`. Its gradient has a term that autodiff of
`J_in` with `D` held fixed misses: `D`'s distribution depends on theta. Two
estimators account for it (`estimator`, `exploration`):

- `"lvc"` (ProMP's low-variance curvature, the default): `w_t = pi_theta(a_t|s_t)
  / pi_theta_old(a_t|s_t)`, DiCE's magic box `exp(log pi - stop_grad(log pi))`
  applied per step. Its value and gradient at theta_old are REINFORCE's; its
  Hessian is `E[(grad^2 log pi + grad log pi grad log pi') A]`, an estimate of
  the true Hessian of the expected return (the second term is the sampling
  dependence), so `(I + alpha H) grad J_out` estimates the gradient of MAML's
  objective `J_out(theta + alpha grad J_in(theta))` (ProMP's formulation I).
- `"fixed"`: `w_t = log pi_theta(a_t|s_t)` (what differentiating a REINFORCE
  loss gives, as in the released MAML-RL code): Hessian `E[grad^2 log pi A]`
  only, biased. With `exploration = 1` it gains E-MAML's term
  `J_out(theta') grad log pi_theta(D)` and becomes the exact (unbiased) gradient
  of the expected return after a sampled adaptation step,
  `E_D[J_out(theta'(theta, D))]` (formulation II).

`exploration = lambda > 0` adds `lambda * J_out * sum_{i,t} log pi_theta(a_it|s_it)`
(E-MAML's exploration term, `J_out` the mean reward per step of `D'`); it is
exact with unnormalised advantages (`normalized=False`, `baseline="none"`)
and a weight otherwise. Combine it with `"fixed"`: with `"lvc"` the
sampling dependence is counted twice (measured in docs/meta_rl.md).

The outer step is TRPO (`outer="trpo"`, the paper's): the natural-gradient
step of the meta-surrogate `L(theta) = mean_T mean_{j,t} pi_theta'(a|s) /
pi_theta'_old(a|s) A'` under `mean_T KL(pi_theta'_old || pi_theta')` <= 0.01 on the
post-adaptation states, the KL's Hessian taken through the adaptation
(`metalearn.rl.trpo`). A trust-region step is a constrained optimisation
over the whole meta-batch: its Fisher is the mean over tasks and its line
search evaluates the mean surrogate at trial points, so it cannot be formed
from per-task gradients averaged by `core.make_meta_step`. Here the
learner's one task is therefore a *meta-batch of goals* (`EnvParams` with
arrays `[M, ...]`); `core.batch_over_tasks` maps the one-goal functions over
it; and `meta_grad` returns `theta - theta_TRPO`, so that `meta_train` with
`meta_batch_size=1` and `optax.sgd(1.0)` takes exactly the TRPO step (skipping
it, as any step, when it is not finite). With `outer="gradient"` the task
is one goal and `meta_loss` is minus the meta-surrogate, for any optax
optimizer over a meta-batch of `meta_batch_size` goals.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning. ICML 2017, Sec. 3.2
  and 5.3. Foerster, Farquhar, Al-Shedivat, Rocktaeschel, Xing, Whiteson.
  DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML 2018.
  Rothfuss, Lee, Clavera, Asfour, Abbeel. ProMP: Proximal Meta-Policy Search.
  ICLR 2019, Sec. 4-5 (formulations I/II, the LVC objective). Stadie, Yang,
  Houthooft, Chen, Duan, Wu, Abbeel, Sutskever. Some Considerations on
  Learning to Explore via Meta-Reinforcement Learning (E-MAML). 2018.
  Schulman et al. Trust Region Policy Optimization. ICML 2015.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metalearn import core
from metalearn.rl import rollout as ro
from metalearn.rl import trpo
from metalearn.types import Params, PRNGKey

LogProbFn = Callable[[Params, jax.Array, jax.Array], jax.Array]  # (params, obs, actions) -> logp
ESTIMATORS = ("lvc", "fixed")
OUTERS = ("trpo", "gradient")


class PolicyBatch(NamedTuple):
  """One task's trajectories ready for a policy-gradient loss; arrays `[N, H, ...]`.

  Attributes:
    obs, actions, mask: as in `rollout.Trajectories`.
    log_probs: `[N, H]` log-densities under the policy that sampled them.
    mean, log_std: `[N, H, a]` that policy's distribution at `obs` (for the KL).
    advantages: `[N, H]`.
    rewards: `[N, H]`.
  """

  obs: jax.Array
  actions: jax.Array
  mask: jax.Array
  log_probs: jax.Array
  mean: jax.Array
  log_std: jax.Array
  advantages: jax.Array
  rewards: jax.Array


def policy_batch(policy: ro.Policy, params: Params, traj: ro.Trajectories, **adv) -> PolicyBatch:
  """Labels `traj` with the sampling policy's distribution and the advantages (`**adv`)."""
  mean, log_std = jax.lax.stop_gradient(policy.distribution(params, traj.obs))
  logp = ro.gaussian_log_prob(mean, log_std, traj.actions)
  a = ro.advantages(traj, **adv)
  return PolicyBatch(traj.obs, traj.actions, traj.mask, logp, mean, log_std, a, traj.rewards)


def _mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def inner_objective(log_prob: LogProbFn, params: Params, batch: PolicyBatch, estimator: str):
  """`J_in`: mean over steps of `w_t A_t`, `w` by `estimator` (module docstring); `[]`."""
  logp = log_prob(params, batch.obs, batch.actions)
  w = jnp.exp(logp - batch.log_probs) if estimator == "lvc" else logp
  return _mean(w * batch.advantages, batch.mask)


def adapt_step(log_prob: LogProbFn, params: Params, batch: PolicyBatch, *, lr: float, estimator):
  """`params + lr * grad J_in(params)`: one policy-gradient step, differentiable in `params`."""
  g = jax.grad(inner_objective, argnums=1)(log_prob, params, batch, estimator)
  return jax.tree_util.tree_map(lambda p, d: p + lr * d, params, g)


def meta_objective(
  log_prob: LogProbFn,
  theta: Params,
  inner: tuple[PolicyBatch, ...],
  outer: PolicyBatch,
  *,
  lr: float,
  estimator: str,
  exploration: float = 0.0,
) -> jax.Array:
  """The meta-surrogate of one task: its gradient at theta_old is the meta-gradient estimate.

  `theta' = ` the inner steps on `inner` (batch k sampled by the k-th
  adapted policy); the surrogate is `mean_{j,t} pi_theta'(a|s) /
  pi_theta'_old(a|s) A'` on `outer`, plus the exploration term.
  """
  phi, explore = theta, 0.0
  for batch in inner:
    if exploration:
      logp = log_prob(phi, batch.obs, batch.actions)
      explore = explore + jnp.sum((logp - batch.log_probs) * batch.mask)
    phi = adapt_step(log_prob, phi, batch, lr=lr, estimator=estimator)
  ratio = jnp.exp(log_prob(phi, outer.obs, outer.actions) - outer.log_probs)
  objective = _mean(ratio * outer.advantages, outer.mask)
  if exploration:
    objective = objective + exploration * _mean(outer.rewards, outer.mask) * explore
  return objective


def _kl(policy: ro.Policy, phi: Params, batch: PolicyBatch) -> jax.Array:
  mean, log_std = policy.distribution(phi, batch.obs)
  return _mean(ro.gaussian_kl(batch.mean, batch.log_std, mean, log_std), batch.mask)


def maml_rl(
  env: Any,
  policy: ro.Policy,
  *,
  inner_lr: float = 0.1,
  inner_steps: int = 1,
  num_trajectories: int = 20,
  gamma: float = 0.99,
  baseline: str = "linear",
  normalized: bool = True,
  estimator: str = "lvc",
  exploration: float = 0.0,
  outer: str = "trpo",
  max_kl: float = 0.01,
  cg_steps: int = 10,
  cg_damping: float = 1e-5,
  ls_steps: int = 15,
  ls_backtrack: float = 0.8,
  fisher: str = "gauss_newton",
) -> core.MetaLearner:
  """MAML-RL (E-MAML with `exploration > 0`) on a gymnax environment; see the module docstring.

  Args:
    env: a gymnax `Environment`; a task is one of its `EnvParams`.
    policy: a Gaussian policy (`rollout.gaussian_mlp`).
    inner_lr: alpha, the inner policy-gradient step size.
    inner_steps: inner steps (static, >= 0; 0 = a policy trained on all tasks).
    num_trajectories: trajectories per inner step and for the outer objective.
    gamma: discount of the returns inside the advantages.
    baseline: `"linear"` (fitted per task and step) or `"none"`.
    normalized: normalise advantages per task and step.
    estimator: `"lvc"` or `"fixed"`.
    exploration: weight of E-MAML's term (0: MAML).
    outer: `"trpo"` (a task is a meta-batch of goals) or `"gradient"` (a task is one goal).
    max_kl, cg_steps, cg_damping, ls_steps, ls_backtrack: TRPO's (`rl.trpo.trpo_step`).
    fisher: how TRPO forms Fisher-vector products through the adaptation:
      `"gauss_newton"` (`J' M J`, linearised once: faster) or `"kl_hessian"`
      (forward-over-reverse of the KL); the same matrix.

  Returns:
    A `core.MetaLearner`; `adapt(theta, task, key)` gives the adapted policy
    parameters (batched over the goals for `outer="trpo"`).
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  if fisher not in ("gauss_newton", "kl_hessian"):
    raise ValueError(f"fisher must be 'gauss_newton' or 'kl_hessian', got {fisher!r}")
  if outer not in OUTERS:
    raise ValueError(f"outer must be one of {OUTERS}, got {outer!r}")
  if not isinstance(inner_steps, int) or inner_steps < 0:
    raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
  if not inner_lr > 0:
    raise ValueError(f"inner_lr must be > 0, got {inner_lr!r}")
  if not exploration >= 0:
    raise ValueError(f"exploration must be >= 0, got {exploration!r}")
  adv = dict(gamma=gamma, baseline=baseline, normalized=normalized)
  if baseline not in ("linear", "none"):
    raise ValueError(f"baseline must be 'linear' or 'none', got {baseline!r}")
  step = functools.partial(adapt_step, policy.log_prob, lr=inner_lr, estimator=estimator)

  def sample(phi, env_params, key):
    act = functools.partial(policy.sample, phi)
    traj = ro.rollout(env, env_params, act, key, num_trajectories)
    return policy_batch(policy, phi, traj, **adv), ro.episode_returns(traj).mean()

  def task_data(theta, env_params, key):
    """One goal's rollouts at theta: the inner batches, the outer batch, returns before/after."""
    theta = jax.lax.stop_gradient(theta)
    keys, phi, inner, returns = jax.random.split(key, inner_steps + 1), theta, [], []
    for k in range(inner_steps):
      batch, ret = sample(phi, env_params, keys[k])
      inner.append(batch)
      returns.append(ret)
      phi = step(phi, batch)
    outer_batch, ret = sample(phi, env_params, keys[-1])
    metrics = {"return_before": (returns or [ret])[0], "return_after": ret}
    return (tuple(inner), outer_batch), metrics

  def surrogate(theta, data):
    inner, outer_batch = data
    return meta_objective(
      policy.log_prob, theta, inner, outer_batch, lr=inner_lr, estimator=estimator,
      exploration=exploration,
    )  # fmt: skip

  def adapted(theta, data):
    phi = theta
    for batch in data[0]:
      phi = step(phi, batch)
    return phi

  def kl(theta, data):
    return _kl(policy, adapted(theta, data), data[1])

  def init(key, task):
    del task
    return policy.init(key, jnp.zeros(env.observation_space(None).shape, jnp.float32))

  def adapt_one(theta, env_params, key):
    phi = theta
    for k in jax.random.split(key, inner_steps):
      phi = step(phi, sample(jax.lax.stop_gradient(phi), env_params, k)[0])
    return phi

  def loss_one(theta, env_params, key):
    data, metrics = task_data(theta, env_params, key)
    return -surrogate(theta, data), metrics

  if outer == "gradient":
    return core.MetaLearner(init, adapt_one, loss_one, name="maml_rl")

  over_goals = lambda fn: core.batch_over_tasks(fn, "vmap")
  split = lambda key, goals: jax.random.split(key, core.num_tasks(goals))

  def adapt(theta, goals, key):
    return over_goals(adapt_one)(theta, goals, split(key, goals))

  def meta_loss(theta, goals, key):
    losses, metrics = over_goals(loss_one)(theta, goals, split(key, goals))
    return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, metrics)

  def meta_grad(theta, goals, key):
    data, metrics = over_goals(task_data)(theta, goals, split(key, goals))
    mean_of = lambda fn: lambda th: jnp.mean(jax.vmap(fn, in_axes=(None, 0))(th, data))
    fvp = None
    if fisher == "gauss_newton":  # the mean KL's Hessian as J' M J on every goal's outer states
      dist = lambda th, d: policy.distribution(adapted(th, d), d[1].obs)
      mask = data[1].mask
      weights = mask / jnp.maximum(jnp.sum(mask, axis=(1, 2), keepdims=True), 1.0) / mask.shape[0]
      dists = lambda th: jax.vmap(dist, in_axes=(None, 0))(th, data)
      fvp = trpo.gaussian_fisher_vector_product(dists, theta, weights)
    new, info = trpo.trpo_step(
      mean_of(lambda th, d: -surrogate(th, d)), mean_of(kl), theta, max_kl=max_kl,
      cg_steps=cg_steps, cg_damping=cg_damping, ls_steps=ls_steps, ls_backtrack=ls_backtrack,
      fvp=fvp,
    )  # fmt: skip
    metrics = jax.tree_util.tree_map(jnp.mean, metrics)
    metrics = {
      **metrics,
      "loss": -metrics["return_after"],
      "kl": info.kl,
      "step_fraction": info.step_fraction,
      "accepted": info.accepted.astype(jnp.float32),
      "surrogate_gain": info.loss_before - info.loss_after,
    }
    return jax.tree_util.tree_map(jnp.subtract, theta, new), metrics

  return core.MetaLearner(init, adapt, meta_loss, meta_grad, name="maml_trpo")


def adaptation_returns(
  env: Any,
  policy: ro.Policy,
  theta: Params,
  env_params: Any,
  key: PRNGKey,
  *,
  steps: int,
  inner_lr: float = 0.1,
  num_trajectories: int = 20,
  gamma: float = 0.99,
  baseline: str = "linear",
  normalized: bool = True,
) -> jax.Array:
  """`[steps + 1]` mean return of `num_trajectories` episodes after 0..steps policy-gradient steps.

  Step k samples the episodes whose return is entry k and takes the inner
  step on them (as the meta-training inner loop does), so every entry is the
  return of the policy after k steps on one held-out task.
  """
  adv = dict(gamma=gamma, baseline=baseline, normalized=normalized)

  def body(phi, key):
    traj = ro.rollout(env, env_params, functools.partial(policy.sample, phi), key, num_trajectories)
    batch = policy_batch(policy, phi, traj, **adv)
    phi = adapt_step(policy.log_prob, phi, batch, lr=inner_lr, estimator="fixed")
    return phi, ro.episode_returns(traj).mean()

  _, returns = jax.lax.scan(body, theta, jax.random.split(key, steps + 1))
  return returns
