"""PLATIPUS: probabilistic MAML, a distribution over initialisations fitted by a variational bound.

Finn, Xu and Levine read MAML's initialisation as a latent variable theta of
each task, with a prior that depends on the task's training data and an
amortised posterior that also sees its test data, both Gaussian with the
means given by one gradient step from a learned mean mu:

  prior      p(theta | D_tr)         = N(mu - gamma_p grad_mu L(mu, D_tr),   sigma^2)
  posterior  q(theta | D_tr, D_test) = N(mu - gamma_q grad_mu L(mu, D_test), v_q^2)

(diagonal, one scale per weight; gamma_p and gamma_q learned scalars). A task
is adapted as in MAML from a sample of theta, phi = theta - alpha grad L(theta,
D_tr) repeated `inner_steps` times, and predicts y ~ N(f(x; phi), s^2) with a
learned homoscedastic noise s. Meta-training (Algorithm 1) samples theta from
q by the reparameterisation theta = mu_q + v_q * eps, and minimises the
negative evidence lower bound

  E_q[-log p(D_test | phi(theta))] / n_test + kl_weight * KL(q || p),

the first term averaged over `train_samples` samples of theta and over the
real test points, the KL summed over every weight. At test time (Algorithm 2)
theta is drawn from the prior (the test data are not seen), so `adapt`
returns the mixture over `eval_samples` adapted functions,
`(1/S) sum_s N(f(x; phi_s), s^2)`, a `metalearn.probabilistic.Predictive`
scored by the same evaluator as LLAMA's and the neural processes'. Inner
losses are the support MSE, as MAML's; the gradients through the inner loop
and the two mean shifts are exact (second order).

With sigma = v_q = 0 and gamma_p = gamma_q = 0 this is MAML with a learned
noise (`llama(laplace=False)`), a fact the tests check.

References:
  Finn, Xu, Levine. Probabilistic Model-Agnostic Meta-Learning. NeurIPS 2018,
  Sec. 4 (Eq. 2-4, Algorithms 1 and 2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model
from metalearn.types import Params

_tree = jax.tree_util


def gaussian_kl(mean_q: Params, scale_q: Params, mean_p: Params, scale_p: Params) -> jax.Array:
  """`KL(N(mean_q, scale_q^2) || N(mean_p, scale_p^2))`, diagonal Gaussians over a PyTree: `[]`."""

  def leaf(mq, sq, mp, sp):
    return jnp.sum(jnp.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2.0 * sp**2) - 0.5)

  return sum(_tree.tree_leaves(_tree.tree_map(leaf, mean_q, scale_q, mean_p, scale_p)))


def _mixture(model: Model, phis, noise, x):
  """The equal mixture of `N(f(x; phi_s), noise^2)` over the stacked samples `phis`: `[S, m]`."""
  from metalearn import probabilistic  # distrax: imported when a probabilistic learner runs

  mean = jax.vmap(lambda p: model.apply(p, x)[:, 0])(phis)
  return probabilistic.Predictive(mean, jnp.broadcast_to(noise, mean.shape))


def platipus(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  kl_weight: float = 0.1,
  init_scale: float = 0.03,
  init_gamma: float = 0.01,
  init_noise: float = 0.5,
  train_samples: int = 1,
  eval_samples: int = 10,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """PLATIPUS on regression tasks with scalar outputs (`model` outputs `[n, 1]`).

  Args:
    model: a network with one output (flax module with params only, or a `Model`).
    inner_lr: alpha, the inner SGD step from a sampled theta (> 0).
    inner_steps: inner SGD steps, a static int >= 0.
    kl_weight: weight of `KL(q || p)` in the meta-loss (>= 0).
    init_scale: sigma and v_q at initialisation, every weight (> 0).
    init_gamma: gamma_p and gamma_q at initialisation (>= 0).
    init_noise: the noise standard deviation s at initialisation (> 0).
    train_samples: samples of theta per task in the meta-loss (>= 1).
    eval_samples: samples of theta per task in `adapt`'s predictive (>= 1).
    objective: must be `"mse"` (the Gaussian likelihood's inner loss).

  Returns:
    A `MetaLearner` whose theta is `{"params": mu, "log_sigma": ..., "log_v_q":
    ... (both shaped like mu), "gamma_p": [], "gamma_q": [], "log_noise": []}`.
    `meta_loss` reports `query_nll`, `query_mse`, `kl`, `noise`, `sigma` (the
    mean prior scale), `gamma_p` and `gamma_q`.

  Raises:
    ValueError: naming the argument, for a value out of its range or another objective.
  """
  for name, value, ok in (
    ("kl_weight", kl_weight, float(kl_weight) >= 0),
    ("init_scale", init_scale, float(init_scale) > 0),
    ("init_gamma", init_gamma, float(init_gamma) >= 0),
    ("init_noise", init_noise, float(init_noise) > 0),
  ):
    if not ok:
      raise ValueError(f"platipus: {name} out of range, got {value!r}")
  for name, value in (("train_samples", train_samples), ("eval_samples", eval_samples)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"platipus: {name} must be an int >= 1, got {value!r}")
  objective = ep.get_objective(objective)
  if objective != ep.get_objective("mse"):
    raise ValueError("platipus models a Gaussian likelihood: objective must be 'mse'")
  model = as_model(model)
  run = common.inner_loop(
    model, objective, update=inner.as_learned_update(inner.sgd(inner_lr)), inner_steps=inner_steps
  )

  def init(key, episode):
    params = model.init(key, episode.support.x)
    log_scale = _tree.tree_map(lambda p: jnp.full_like(p, jnp.log(init_scale)), params)
    gamma = jnp.asarray(init_gamma, jnp.float32)
    return {
      "params": params,
      "log_sigma": log_scale,
      "log_v_q": log_scale,
      "gamma_p": gamma,
      "gamma_q": gamma,
      "log_noise": jnp.log(jnp.asarray(init_noise, jnp.float32)),
    }

  def shifted(mu, gamma, split):
    """`mu - gamma grad_mu L(mu, split)`: the mean of the prior (support) or posterior (query)."""
    grad = jax.grad(lambda p: objective.loss(model.apply(p, split.x), split))(mu)
    return _tree.tree_map(lambda m, g: m - gamma * g, mu, grad)

  def sample_adapted(mean, log_scale, support, key, num):
    """`num` samples theta ~ N(mean, exp(log_scale)^2), each adapted on the support: stacked."""
    leaves, treedef = _tree.tree_flatten(mean)
    keys = _tree.tree_unflatten(treedef, list(jax.random.split(key, len(leaves))))

    def one(i):
      theta = _tree.tree_map(
        lambda m, s, k: m + jnp.exp(s) * jax.random.normal(jax.random.fold_in(k, i), m.shape),
        mean,
        log_scale,
        keys,
      )
      return run({"params": theta}, support)

    return jax.vmap(one)(jnp.arange(num))

  def adapt(theta, support, key):
    mu_p = shifted(theta["params"], theta["gamma_p"], support)
    phis = sample_adapted(mu_p, theta["log_sigma"], support, key, eval_samples)
    return predictor(_mixture, model, phis, jnp.exp(theta["log_noise"]))

  def meta_loss(theta, episode, key):
    from metalearn import probabilistic

    ep.check_episode(episode, batched=False)
    support, query = episode.support, episode.query
    mu = theta["params"]
    mu_q = shifted(mu, theta["gamma_q"], query)
    mu_p = shifted(mu, theta["gamma_p"], support)
    phis = sample_adapted(mu_q, theta["log_v_q"], support, key, train_samples)
    noise = jnp.exp(theta["log_noise"])
    n = jnp.maximum(jnp.sum(query.mask), 1)

    preds = jax.vmap(lambda p: model.apply(p, query.x))(phis)  # [S, m, 1], once per sample

    def nll(pred):
      gauss = probabilistic.gaussian(pred[:, 0], jnp.full_like(pred[:, 0], noise))
      return -probabilistic.log_likelihood(gauss, query) / n

    nlls = jax.vmap(nll)(preds)
    kl = gaussian_kl(
      mu_q,
      _tree.tree_map(jnp.exp, theta["log_v_q"]),
      mu_p,
      _tree.tree_map(jnp.exp, theta["log_sigma"]),
    )
    mse = jnp.mean(jax.vmap(lambda pred: ep.mse(pred, query))(preds))
    scales = [jnp.exp(s).ravel() for s in _tree.tree_leaves(theta["log_sigma"])]
    sigma = jnp.mean(jnp.concatenate(scales))
    metrics = {
      "query_nll": jnp.mean(nlls),
      "query_mse": mse,
      "kl": kl,
      "noise": noise,
      "sigma": sigma,
      "gamma_p": theta["gamma_p"],
      "gamma_q": theta["gamma_q"],
    }
    return jnp.mean(nlls) + kl_weight * kl, metrics

  return MetaLearner(init, adapt, meta_loss, name="platipus")
