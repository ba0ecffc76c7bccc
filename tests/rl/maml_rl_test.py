"""MAML-RL: the meta-gradient estimators against a closed form, TRPO's step and Fisher, a smoke run.

The closed-form problem: one step, a Gaussian policy `a ~ N(mu, sigma^2)` with
`sigma` fixed, reward `r(a) = -(a - g)^2`, so `J(mu) = -((mu - g)^2 + sigma^2)`.
The inner step takes REINFORCE's estimate from `N` samples (no baseline),
`ghat = mean_i (a_i - mu) / sigma^2 r(a_i)`, and `mu' = mu + alpha ghat`. With
`d = mu - g`, `E ghat = -2 d` and `Var ghat = (d^4 / sigma^2 + 14 d^2 + 15 sigma^2) / N`,
so the expected return after the sampled step is

  J2(mu) = E_D J(mu') = -(d (1 - 2 alpha))^2 - alpha^2 Var(ghat) - sigma^2,
  dJ2/dmu = -2 d (1 - 2 alpha)^2 - alpha^2 / N (4 d^3 / sigma^2 + 28 d).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from metalearn import core
from metalearn.algorithms import maml_rl as mr
from metalearn.rl import navigation as nav
from metalearn.rl import rollout as ro
from metalearn.rl import trpo

MU, GOAL, SIGMA, ALPHA, N, M = 0.0, 1.0, 1.0, 0.1, 5, 5
REPLICAS = 400_000


def analytic_grad(mu=MU, g=GOAL, sigma=SIGMA, alpha=ALPHA, n=N):
  d = mu - g
  return -2 * d * (1 - 2 * alpha) ** 2 - alpha**2 / n * (4 * d**3 / sigma**2 + 28 * d)


def log_prob(params, obs, actions):
  mean = jnp.broadcast_to(params["mu"], actions.shape)
  return ro.gaussian_log_prob(mean, jnp.full_like(mean, jnp.log(SIGMA)), actions)


def batch(mu, actions):
  """A one-step PolicyBatch of actions `[n]` sampled at `mu`, advantages = rewards."""
  a = actions[:, None, None]
  mean = jnp.broadcast_to(mu, a.shape)
  log_std = jnp.full_like(mean, jnp.log(SIGMA))
  r = -((actions - GOAL) ** 2)[:, None]
  ones = jnp.ones_like(r)
  logp = ro.gaussian_log_prob(mean, log_std, a)
  return mr.PolicyBatch(jnp.zeros_like(a), a, ones, logp, mean, log_std, r, r)


def estimate(key, estimator, exploration, n=N):
  """One sample of the estimator of dJ2/dmu at MU: inner samples, adapt, outer samples, grad."""
  inner_key, outer_key = jax.random.split(key)
  theta = {"mu": jnp.asarray(MU)}
  inner = batch(theta["mu"], MU + SIGMA * jax.random.normal(inner_key, (n,)))
  phi = mr.adapt_step(log_prob, theta, inner, lr=ALPHA, estimator=estimator)
  outer = batch(phi["mu"], phi["mu"] + SIGMA * jax.random.normal(outer_key, (M,)))
  objective = lambda th: mr.meta_objective(
    log_prob, th, (inner,), outer, lr=ALPHA, estimator=estimator, exploration=exploration
  )
  return jax.grad(objective)(theta)["mu"]


def mean_and_se(samples):
  samples = np.asarray(samples, np.float64)
  return samples.mean(), samples.std(ddof=1) / np.sqrt(samples.size)


def monte_carlo(estimator, exploration, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), REPLICAS)
  return mean_and_se(jax.jit(jax.vmap(lambda k: estimate(k, estimator, exploration)))(keys))


def test_closed_form_equals_reparameterised_gradient():
  """The formula for dJ2/dmu agrees with the pathwise gradient of J2 (common random numbers)."""
  eps = jax.random.normal(jax.random.PRNGKey(1), (REPLICAS, N))

  def j2(mu):
    a = mu + SIGMA * eps
    ghat = jnp.mean((a - mu) / SIGMA**2 * -((a - GOAL) ** 2), axis=1)
    return -((mu + ALPHA * ghat - GOAL) ** 2) - SIGMA**2

  pathwise = jax.grad(lambda mu: jnp.mean(j2(mu)))(MU)
  assert abs(float(pathwise) - analytic_grad()) < 0.02


def test_exact_estimator_matches_analytic_gradient():
  """Fixed-sample inner step + E-MAML's term (weight 1) is unbiased for dJ2/dmu."""
  mean, se = monte_carlo("fixed", exploration=1.0)
  assert abs(mean - analytic_grad()) < 4 * se + 1e-3, (mean, se, analytic_grad())
  assert se < 0.02  # the check resolves a bias of the size below


def test_ignoring_the_sampling_dependence_is_biased():
  """Differentiating the inner step with its samples held fixed misses E[J(mu') dlogP(D)]."""
  mean, se = monte_carlo("fixed", exploration=0.0)
  assert abs(mean - analytic_grad()) > 20 * se, (mean, se, analytic_grad())


def test_lvc_curvature_is_the_true_hessian_and_fixed_is_not():
  """ProMP's LVC inner objective has Hessian E = J'' = -2; the fixed-sample one (d^2 + s^2)/s^2."""
  keys = jax.random.split(jax.random.PRNGKey(2), REPLICAS)

  def hessian(key, estimator):
    inner = batch(jnp.asarray(MU), MU + SIGMA * jax.random.normal(key, (N,)))
    f = lambda mu: mr.inner_objective(log_prob, {"mu": mu}, inner, estimator)
    return jax.hessian(f)(jnp.asarray(MU))

  lvc, lvc_se = mean_and_se(jax.jit(jax.vmap(lambda k: hessian(k, "lvc")))(keys))
  fixed, fixed_se = mean_and_se(jax.jit(jax.vmap(lambda k: hessian(k, "fixed")))(keys))
  d = MU - GOAL
  assert abs(lvc - (-2.0)) < 4 * lvc_se + 1e-3, (lvc, lvc_se)
  assert abs(fixed - (d**2 + SIGMA**2) / SIGMA**2) < 4 * fixed_se + 1e-3, (fixed, fixed_se)


def test_lvc_meta_gradient_has_its_closed_form_expectation():
  """LVC's mean is MAML's gradient (1 - 2 alpha) J'(mu + alpha J'(mu)) plus the covariance term.

  With sigma = 1 the per-sample step x = s r and curvature h = (s^2 - 1) r
  (s = a - mu) have Cov(h, x) = 8 d^3 + 44 d, so
  E[(1 + alpha H)(-2)(d + alpha ghat)] = -2 d (1 - 2 alpha)^2 - 2 alpha^2 / N (8 d^3 + 44 d).
  """
  assert SIGMA == 1.0
  d = MU - GOAL
  maml_i = -2 * d * (1 - 2 * ALPHA) ** 2
  expected = maml_i - 2 * ALPHA**2 / N * (8 * d**3 + 44 * d)
  mean, se = monte_carlo("lvc", exploration=0.0)
  assert abs(mean - expected) < 4 * se + 1e-3, (mean, se, expected)
  biased, _ = monte_carlo("fixed", exploration=0.0)
  assert abs(biased - maml_i) > 0.3  # the fixed-sample step is far from either objective


def tiny_policy():
  policy = ro.gaussian_mlp(2, hidden=(3,))
  params = policy.init(jax.random.PRNGKey(0), jnp.zeros(2))
  obs = jax.random.normal(jax.random.PRNGKey(1), (7, 2))
  return policy, params, obs


def test_fisher_vector_product_matches_explicit_fisher(x64):
  """FVP = (1/n) sum_s J_s' diag(1/sigma^2, 2) J_s v, J_s the Jacobian of (mean, log_std)."""
  policy, params, obs = tiny_policy()
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  obs = obs.astype(jnp.float64)
  old_mean, old_log_std = policy.distribution(params, obs)

  def kl(p):
    return jnp.mean(ro.gaussian_kl(old_mean, old_log_std, *policy.distribution(p, obs)))

  flat, unravel = jax.flatten_util.ravel_pytree(params)
  outputs = lambda f, s: jnp.concatenate(policy.distribution(unravel(f), s))
  weights = jnp.concatenate([jnp.exp(-2 * old_log_std[0]), jnp.full(2, 2.0)])
  jac = jax.jit(jax.vmap(jax.jacobian(outputs), in_axes=(None, 0)))(flat, obs)  # [n, 4, P]
  fisher = jnp.einsum("nop,o,noq->pq", jac, weights, jac) / obs.shape[0]
  v = jax.random.normal(jax.random.PRNGKey(3), flat.shape, jnp.float64)
  fvp = trpo.fisher_vector_product(kl, params, damping=0.0)(unravel(v))
  np.testing.assert_allclose(
    jax.flatten_util.ravel_pytree(fvp)[0], fisher @ v, rtol=1e-8, atol=1e-10
  )


@pytest.mark.parametrize("max_kl", [1e-4, 1e-2])
def test_trpo_step_respects_the_kl_constraint_and_decreases_the_loss(max_kl):
  policy, params, obs = tiny_policy()
  old_mean, old_log_std = policy.distribution(params, obs)
  actions = old_mean + jax.random.normal(jax.random.PRNGKey(4), old_mean.shape)
  old_logp = ro.gaussian_log_prob(old_mean, old_log_std, actions)
  adv = jax.random.normal(jax.random.PRNGKey(5), old_logp.shape)
  loss = lambda p: -jnp.mean(jnp.exp(policy.log_prob(p, obs, actions) - old_logp) * adv)
  kl = lambda p: jnp.mean(ro.gaussian_kl(old_mean, old_log_std, *policy.distribution(p, obs)))
  new, info = jax.jit(lambda p: trpo.trpo_step(loss, kl, p, max_kl=max_kl))(params)
  assert bool(info.accepted)
  assert float(kl(new)) <= max_kl
  assert float(loss(new)) < float(loss(params))
  np.testing.assert_allclose(float(info.kl), float(kl(new)), rtol=1e-2)  # float32, jit vs eager
  # The full step's quadratic KL model is max_kl, so the accepted KL is of that order.
  assert float(kl(new)) > 0.2 * max_kl * float(info.step_fraction) ** 2


def test_trpo_keeps_theta_when_no_trial_is_accepted():
  policy, params, obs = tiny_policy()
  loss = lambda p: jnp.zeros([])  # nothing to gain: no trial decreases it
  old = policy.distribution(params, obs)
  kl = lambda p: jnp.mean(ro.gaussian_kl(*old, *policy.distribution(p, obs)))
  new, info = trpo.trpo_step(loss, kl, params)
  assert not bool(info.accepted)
  for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_maml_trpo_meta_grad_is_a_kl_bounded_step():
  """meta_grad is theta - theta_TRPO, a step that keeps the post-adaptation KL <= 0.01."""
  env, policy = nav.Navigation2D(), ro.gaussian_mlp(2, hidden=(8,))
  learner = mr.maml_rl(env, policy, num_trajectories=4)
  goals = nav.sample_tasks(jax.random.PRNGKey(0), 3, horizon=20)
  theta = learner.init(jax.random.PRNGKey(1), goals)
  diff, metrics = jax.jit(learner.meta_grad)(theta, goals, jax.random.PRNGKey(2))
  assert float(metrics["kl"]) <= 0.01
  assert float(metrics["accepted"]) in (0.0, 1.0)
  assert set(traverse_util.flatten_dict(diff)) == set(traverse_util.flatten_dict(theta))
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["return_before"]) < 0


def test_bad_arguments_name_themselves():
  env, policy = nav.Navigation2D(), ro.gaussian_mlp(2)
  for kwargs, name in [
    ({"estimator": "dice2"}, "estimator"),
    ({"outer": "adam"}, "outer"),
    ({"inner_steps": -1}, "inner_steps"),
    ({"baseline": "mlp"}, "baseline"),
  ]:
    with pytest.raises(ValueError, match=name):
      mr.maml_rl(env, policy, **kwargs)


def test_config_validation_names_the_flag(tmp_path):
  from experiments import train
  from experiments.configs import maml_rl_navigation
  from experiments.families import navigation as family

  family.validate(maml_rl_navigation.get_config("smoke"), str(tmp_path))
  for field, value in [("meta_batch_size", 0), ("eval_steps", -1), ("method", "rl2")]:
    config = maml_rl_navigation.get_config("smoke")
    config[field] = value
    with pytest.raises(train.ConfigError, match=f"--config.{field}="):
      family.validate(config, str(tmp_path))
  config = maml_rl_navigation.get_config("smoke")
  config.learner.estimator = "dice2"
  with pytest.raises(train.ConfigError, match="estimator"):
    family.validate(config, str(tmp_path))


def test_gradient_outer_loop_is_a_one_goal_learner_for_make_meta_step():
  import optax

  env, policy = nav.Navigation2D(), ro.gaussian_mlp(2, hidden=(8,))
  learner = mr.maml_rl(env, policy, num_trajectories=3, outer="gradient")
  goals = nav.sample_tasks(jax.random.PRNGKey(0), 2, horizon=10)
  state = core.init_state(learner, optax.adam(1e-3), jax.random.PRNGKey(1), core.task(goals, 0))
  new, metrics = jax.jit(core.make_meta_step(learner, optax.adam(1e-3)))(state, goals)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  moved = jax.tree_util.tree_map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), new.theta, state.theta
  )
  assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_gauss_newton_fisher_equals_the_kl_hessian(x64):
  policy, params, obs = tiny_policy()
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  obs = obs.astype(jnp.float64)
  old = policy.distribution(params, obs)
  kl = lambda p: jnp.mean(ro.gaussian_kl(*old, *policy.distribution(p, obs)))
  weights = jnp.full(obs.shape[:1], 1.0 / obs.shape[0])
  gn = trpo.gaussian_fisher_vector_product(lambda p: policy.distribution(p, obs), params, weights)
  v = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size).reshape(a.shape) + 1.0), params)
  expected = trpo.fisher_vector_product(kl, params)(v)
  for a, b in zip(
    jax.tree_util.tree_leaves(gn(v)), jax.tree_util.tree_leaves(expected), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_both_fisher_products_agree_through_the_adaptation_step(x64):
  """J' M J of the adapted policy equals the Hessian of its KL taken through the inner step."""
  policy = ro.gaussian_mlp(2, hidden=(4,))
  theta = policy.init(jax.random.PRNGKey(1), jnp.zeros(2))
  theta = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), theta)
  k = jax.random.split(jax.random.PRNGKey(2), 4)
  obs = jax.random.normal(k[0], (3, 6, 2), jnp.float64)
  mean, log_std = policy.distribution(theta, obs)
  actions = mean + jnp.exp(log_std) * jax.random.normal(k[1], mean.shape, jnp.float64)
  logp = ro.gaussian_log_prob(mean, log_std, actions)
  adv, mask = jax.random.normal(k[2], logp.shape, jnp.float64), jnp.ones_like(logp)
  inner = mr.PolicyBatch(obs, actions, mask, logp, mean, log_std, adv, adv)
  adapted = lambda th: mr.adapt_step(policy.log_prob, th, inner, lr=0.1, estimator="lvc")
  outer = ro.Trajectories(jax.random.normal(k[3], (3, 6, 2), jnp.float64), None, None, mask)
  old = jax.lax.stop_gradient(policy.distribution(adapted(theta), outer.obs))
  weights = outer.mask / jnp.sum(outer.mask)
  dist = lambda th: policy.distribution(adapted(th), outer.obs)
  kl = lambda th: jnp.sum(ro.gaussian_kl(*old, *dist(th)) * weights)
  v = jax.tree_util.tree_map(lambda a: jnp.sin(jnp.arange(a.size).reshape(a.shape) + 1.0), theta)
  gn = jax.jit(lambda v: trpo.gaussian_fisher_vector_product(dist, theta, weights)(v))(v)
  hess = jax.jit(lambda v: trpo.fisher_vector_product(kl, theta)(v))(v)
  flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]
  assert float(jnp.linalg.norm(flat(hess))) > 0
  np.testing.assert_allclose(flat(gn), flat(hess), rtol=1e-7, atol=1e-10)
