"""LLAMA: MAML as hierarchical Bayes, with a Laplace approximation of each task's posterior.

Grant et al. read MAML's inner loop as maximum a posteriori inference of a
task's weights phi under a prior centred at theta, and its meta-objective as
an estimate of the marginal likelihood -log p(X | theta) of the tasks. The
Laplace approximation around the adapted weights phi_hat adds the curvature
of the task's log-posterior,

  -log p(X_j | theta) ~ -log p(X_j^query | phi_hat_j) + eta * log det H_j,
  H_j = grad^2_phi [-log p(X_j^support | phi)] + tau I    at phi_hat_j,

with tau the precision of the Gaussian prior p(phi | theta) = N(theta, I / tau).
Here the likelihood is Gaussian with a learned homoscedastic noise
(theta["log_noise"]), and H is the generalised Gauss-Newton matrix of the
support likelihood, `J'J / sigma^2 + tau I` with J `[n, P]` the Jacobian of
the n support outputs: the exact Hessian for a model linear in phi, positive
definite always, and cheap through the n x n matrix `K = J J'` (the matrix
determinant lemma for log det H, Woodbury for H^-1), so no P x P matrix is
formed. (The paper uses a K-FAC approximation of the Hessian for its
convolutional networks; for these small regression networks the exact GGN
needs none.)

The posterior N(phi_hat, H^-1) gives a predictive distribution: the
linearised (GLM) predictive `N(f(x; phi_hat), J_x H^-1 J_x' + sigma^2)` at
each target x, returned by `adapt`'s predictor as a
`metalearn.probabilistic.Predictive` (one Gaussian per target, as the
neural processes'), so one evaluator scores every probabilistic learner.
`laplace=False` drops the curvature (the objective's log det and the
predictive's epistemic term): MAML with a learned noise, the point-estimate
baseline.

References:
  Grant, Finn, Levine, Darrell, Griffiths. Recasting Gradient-Based
  Meta-Learning as Hierarchical Bayes. ICLR 2018 (Sec. 3-4, the LLAMA
  algorithm). MacKay. A Practical Bayesian Framework for Backpropagation
  Networks. Neural Computation 4(3), 1992 (the Laplace/GGN predictive).
  Immer, Korzepa, Bauer. Improving predictions of Bayesian neural nets via
  local linearization. AISTATS 2021 (the linearised predictive).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metalearn import episodes as ep
from metalearn import inner, linalg
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model
from metalearn.types import Params


def jacobian(model: Model, params: Params, x: jax.Array) -> jax.Array:
  """`[n, P]`: the Jacobian of the scalar outputs `model.apply(params, x)[:, 0]`, flat params."""
  flat, unravel = ravel_pytree(params)
  return jax.jacrev(lambda v: model.apply(unravel(v), x)[:, 0])(flat)


class Laplace(NamedTuple):
  """The Gaussian N(phi_hat, H^-1), H = J'J / sigma^2 + tau I, held through K = J J' (n x n).

  Attributes:
    jac: `[n, P]` Jacobian of the support outputs at phi_hat (masked rows zero).
    chol: `[n, n]` lower Cholesky factor of `A = I + J J' / (tau sigma^2)`.
    scale: `[]`, `tau sigma^2`.
    tau: `[]`, the prior precision.
  """

  jac: jax.Array
  chol: jax.Array
  scale: jax.Array
  tau: jax.Array


def laplace_posterior(jac: jax.Array, noise: jax.Array, tau: float) -> Laplace:
  """The Laplace posterior from the support Jacobian `jac [n, P]`, noise sigma `[]` and tau > 0."""
  scale = tau * noise**2
  eye = jnp.eye(jac.shape[0], dtype=jac.dtype)
  chol = linalg.cholesky(eye + jac @ jac.T / scale)
  return Laplace(jac, chol, scale, jnp.asarray(tau, jac.dtype))


def log_det(post: Laplace) -> jax.Array:
  """`log det H - P log tau` (= log det A by the matrix determinant lemma), `[]`."""
  return 2.0 * jnp.sum(jnp.log(jnp.diagonal(post.chol)))


def variance(post: Laplace, jac_x: jax.Array) -> jax.Array:
  """`[m]`: diag(J_x H^-1 J_x') for target Jacobians `jac_x [m, P]` (Woodbury's identity)."""
  cross = jac_x @ post.jac.T  # [m, n]
  w = linalg.cho_solve(post.chol, cross.T)  # A^-1 J J_x'  [n, m]
  return (jnp.sum(jac_x**2, axis=1) - jnp.sum(cross.T * w, axis=0) / post.scale) / post.tau


def _predictive(model: Model, params, post: Laplace | None, noise, x):
  """`metalearn.probabilistic.Predictive` at `x`: plug-in noise, plus the posterior's variance."""
  from metalearn import probabilistic  # distrax: imported when a probabilistic learner runs

  mean = model.apply(params, x)[:, 0]
  var = jnp.broadcast_to(noise**2, mean.shape)
  if post is not None:
    var = var + variance(post, jacobian(model, params, x))
  return probabilistic.gaussian(mean, jnp.sqrt(var))


def _log_likelihood(pred, split):
  from metalearn import probabilistic

  return probabilistic.log_likelihood(pred, split)


def llama(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  eta: float = 0.5,
  prior_precision: float = 0.0,
  init_noise: float = 0.5,
  laplace: bool = True,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """LLAMA on regression tasks with scalar outputs (`model` outputs `[n, 1]`).

  `adapt(theta, support, key)` takes `inner_steps` SGD steps on the support
  MSE from theta (MAML's inner loop) and returns a predictor `x [m, ...] ->
  Predictive` (the linearised Laplace predictive; the plug-in one when
  `laplace=False`). `meta_loss` is the query negative log-likelihood per
  point under N(f(x; phi_hat), sigma^2) plus `eta * log det H / n_query`
  (the Laplace term; the constant `P log tau` left out), with the metrics
  `query_mse`, `query_nll` and `log_det`.

  Args:
    model: a network with one output (flax module with params only, or a `Model`).
    inner_lr: inner SGD step (> 0).
    inner_steps: inner SGD steps, a static int >= 0.
    eta: weight of the log-determinant (>= 0); 0.5 is the Laplace approximation's own.
    prior_precision: tau, the prior's precision around theta; 0 (the default)
      takes `1 / (inner_lr * inner_steps)`, the precision of the Gaussian prior
      that K early-stopped gradient steps of size alpha implement (Grant et
      al., Sec. 3.2, after Santos 1996). A tau far below it makes the log
      determinant penalise the sensitivity the inner step needs: measured on
      the sinusoid with tau = 1, theta stops adapting (docs/llama.md).
    init_noise: the noise standard deviation theta starts from (> 0).
    laplace: False for MAML with a learned noise (no curvature anywhere).
    objective: must be `"mse"` (the Gaussian likelihood's inner loss).

  Returns:
    A `MetaLearner` whose theta is `{"params": ..., "log_noise": []}`.

  Raises:
    ValueError: naming the argument, for `eta < 0`, `prior_precision < 0`,
      `init_noise <= 0`, another objective, or a bad `inner_lr`/`inner_steps`.
  """
  if not float(eta) >= 0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  if not float(prior_precision) >= 0:
    raise ValueError(
      f"prior_precision must be >= 0 (0: 1 / (inner_lr * inner_steps)), got {prior_precision}"
    )
  if not float(init_noise) > 0:
    raise ValueError(f"init_noise must be > 0, got {init_noise}")
  objective = ep.get_objective(objective)
  if objective != ep.get_objective("mse"):
    raise ValueError("llama models a Gaussian likelihood: objective must be 'mse'")
  model = as_model(model)
  update = inner.as_learned_update(inner.sgd(inner_lr))
  run = common.inner_loop(model, objective, update=update, inner_steps=inner_steps)
  tau = float(prior_precision) or 1.0 / (float(inner_lr) * max(int(inner_steps), 1))
  predict = functools.partial(_predictive, model)  # one static function for every predictor

  def init(key, episode):
    params = model.init(key, episode.support.x)
    return {"params": params, "log_noise": jnp.log(jnp.asarray(init_noise, jnp.float32))}

  def posterior(theta, phi, support):
    if not laplace:
      return None
    jac = jacobian(model, phi, support.x) * support.mask[:, None]
    return laplace_posterior(jac, jnp.exp(theta["log_noise"]), tau)

  def adapt(theta, support, key):
    del key
    phi = run(theta, support)
    post = posterior(theta, phi, support)
    return predictor(predict, phi, post, jnp.exp(theta["log_noise"]))

  def meta_loss(theta, episode, key):
    del key
    ep.check_episode(episode, batched=False)
    phi = run(theta, episode.support)
    query = episode.query
    noise = jnp.exp(theta["log_noise"])
    pred = _predictive(model, phi, None, noise, query.x)
    n = jnp.maximum(jnp.sum(query.mask), 1)
    nll = -_log_likelihood(pred, query) / n
    post = posterior(theta, phi, episode.support)
    logdet = log_det(post) if post is not None else jnp.zeros([])
    mse = ep.mse(model.apply(phi, query.x), query)
    metrics = {"query_mse": mse, "query_nll": nll, "log_det": logdet, "noise": noise}
    return nll + eta * logdet / n, metrics

  return MetaLearner(init, adapt, meta_loss, name="llama")
