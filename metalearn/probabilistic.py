"""Probabilistic regression: predictive distributions, their likelihood, calibration, KL to a GP.

Every probabilistic learner's `adapt` returns a predictor `x [T, d] ->
Predictive`, an equally weighted mixture of K diagonal Gaussians over the
target outputs (K = 1 for a conditional NP or a GP's marginals; K samples of
the latent variable for a latent NP). One evaluator scores them all:

- `loglik`: log p(y_T | context) = logsumexp_k sum_t log N(y_t; mu_kt, sigma_kt) - log K,
  the joint log-likelihood of the targets (for K > 1 a Monte-Carlo estimate,
  biased low, as the `neuralprocesses` benchmark computes it);
- `kl` (GP tasks): (exact GP log-density of the targets - loglik) / number of
  targets, the benchmark's "KL to the true posterior per target point";
- `coverage@p`: the fraction of targets inside the central p-interval of the
  marginal predictive, read from the probability integral transform
  `F(y) = mean_k Phi((y - mu_k) / sigma_k)` (inside iff |F(y) - 1/2| <= p/2),
  exact for mixtures.

References: Bruinsma (2022), thesis ch. 6 and the `neuralprocesses`
benchmark's evaluation (`train.py`, `scripts/synthetic_extra.py`); Gneiting,
Balabdaoui & Raftery (2007), Probabilistic forecasts, calibration and sharpness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from metalearn import core
from metalearn.data import gp
from metalearn.episodes import Split

LEVELS = (0.5, 0.9, 0.95)
CURVE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95


class Predictive(NamedTuple):
  """An equally weighted mixture of K diagonal Gaussians over T target outputs."""

  mean: jax.Array  # [K, T]
  scale: jax.Array  # [K, T], > 0


def gaussian(mean: jax.Array, scale: jax.Array) -> Predictive:
  """A single Gaussian predictive from `mean [T]` and `scale [T]` (K = 1)."""
  return Predictive(mean[None], scale[None])


def log_likelihood(pred: Predictive, target: Split) -> jax.Array:
  """`log mean_k prod_t N(y_t; mu_kt, sigma_kt)` over the real targets (mask True): `[]`."""
  logp = distrax.Normal(pred.mean, pred.scale).log_prob(target.y[None, :, 0])  # [K, T]
  joint = jnp.sum(jnp.where(target.mask[None], logp, 0.0), axis=1)
  return jax.nn.logsumexp(joint) - jnp.log(joint.shape[0])


def marginal_cdf(pred: Predictive, y: jax.Array) -> jax.Array:
  """`F(y_t)` of each target's marginal mixture, `y [T]` -> `[T]`."""
  return jnp.mean(distrax.Normal(pred.mean, pred.scale).cdf(y[None]), axis=0)


def moments(pred: Predictive) -> tuple[jax.Array, jax.Array]:
  """Mean `[T]` and standard deviation `[T]` of each target's marginal mixture."""
  mean = jnp.mean(pred.mean, axis=0)
  var = jnp.mean(pred.scale**2 + pred.mean**2, axis=0) - mean**2
  return mean, jnp.sqrt(jnp.maximum(var, 0.0))


def coverage(pred: Predictive, target: Split, levels: Sequence[float] = LEVELS) -> dict:
  """`{"coverage@p": fraction of real targets inside the central p-interval}` for each level."""
  pit = marginal_cdf(pred, target.y[:, 0])
  n = jnp.maximum(jnp.sum(target.mask), 1)
  return {
    f"coverage@{round(100 * p)}": jnp.sum(target.mask & (jnp.abs(pit - 0.5) <= p / 2)) / n
    for p in levels
  }


def calibration_curve(
  pred: Predictive, target: Split, levels: Sequence[float] = CURVE_LEVELS
) -> tuple[jax.Array, jax.Array]:
  """Observed coverage of the central p-interval at each nominal level p: one task's curve.

  The same test as `coverage` (inside iff `|F(y) - 1/2| <= p/2`), at many
  levels; a calibrated predictive lies on the diagonal, one too narrow below
  it. Counts are returned, not fractions, so that tasks pool by summing.

  Args:
    pred: the predictive at the T targets.
    target: `y [T, 1]`, `mask [T]`.
    levels: nominal levels in (0, 1), `[L]`.

  Returns:
    `(inside [L], n [])`: the number of real targets inside each central
    interval, and the number of real targets; `inside / n` is the observed
    coverage.

  References: Gneiting, Balabdaoui & Raftery (2007), section 3 (probability
  integral transform); Kuleshov, Fenner & Ermon (2018), calibration curves.
  """
  pit = marginal_cdf(pred, target.y[:, 0])
  p = jnp.asarray(levels, jnp.float32)
  inside = target.mask[None] & (jnp.abs(pit - 0.5)[None] <= p[:, None] / 2)  # [L, T]
  return jnp.sum(inside, axis=1).astype(jnp.float32), jnp.sum(target.mask).astype(jnp.float32)


def scores(pred: Predictive, target: Split, levels: Sequence[float] = LEVELS) -> dict:
  """Log-likelihood per target point and interval coverage of one task's predictive."""
  n = jnp.maximum(jnp.sum(target.mask), 1)
  return {"loglik": log_likelihood(pred, target) / n, **coverage(pred, target, levels)}


def gp_evaluator(
  learner: core.MetaLearner,
  kernel: gp.Kernel,
  *,
  noise: float = gp.NOISE,
  levels: Sequence[float] = LEVELS,
) -> core.EvaluateFn:
  """`(theta, task, key) -> metrics` of one GP `Task`: `kl`, `loglik`, `gp_loglik`, coverage.

  `kl` is (exact GP log-density of the targets given the context, float64
  dense Cholesky, minus the model's log-likelihood of them) divided by the
  number of real targets; 0 for a model that is the GP posterior, and >= 0 in
  expectation for any model. `loglik` and `gp_loglik` are per target point.
  """

  def evaluate(theta, task: gp.Task, key) -> dict:
    pred = learner.adapt(theta, task.context, key)(task.target.x)
    n = jnp.maximum(jnp.sum(task.target.mask), 1)
    model = log_likelihood(pred, task.target)
    exact = gp.log_density(kernel, task, noise)
    with jax.enable_x64(True):  # the difference in float64, then reported in float32
      kl = (exact - model.astype(jnp.float64)) / n
      kl, exact = kl.astype(jnp.float32), (exact / n).astype(jnp.float32)
    return {
      "kl": kl,
      "loglik": model / n,
      "gp_loglik": exact,
      **coverage(pred, task.target, levels),
    }

  return evaluate


def _constant_predict(mean, scale, x):
  shape = (1, x.shape[0])
  return Predictive(jnp.broadcast_to(mean, shape), jnp.broadcast_to(scale, shape))


def constant(mean: float, scale: float) -> core.MetaLearner:
  """The benchmark's trivial baseline: N(mean, scale^2) at every target, whatever the context.

  With `mean` and `scale` the empirical mean and standard deviation of all
  test targets (`empirical_moments`) it is the "trivial" row of the
  `neuralprocesses` benchmark ("predicting the empirical mean and variance of
  the test data"). theta is `{"mean", "log_scale"}`; its `meta_loss` is the
  negative log-likelihood per target, so it can also be fitted.

  Raises:
    ValueError: for `scale <= 0`.
  """
  if not scale > 0:
    raise ValueError(f"scale must be > 0, got {scale!r}")

  def init(key, task):
    del key, task
    return {"mean": jnp.asarray(mean, jnp.float32), "log_scale": jnp.log(jnp.float32(scale))}

  def adapt(theta, context, key):
    del context, key
    return core.predictor(_constant_predict, theta["mean"], jnp.exp(theta["log_scale"]))

  def meta_loss(theta, task, key):
    pred = adapt(theta, task.context, key)(task.target.x)
    n = jnp.maximum(jnp.sum(task.target.mask), 1)
    return -log_likelihood(pred, task.target) / n, {}

  return core.MetaLearner(init, adapt, meta_loss, name="trivial")


def empirical_moments(batches: Iterable[Any]) -> tuple[float, float]:
  """Mean and standard deviation of every real target output of `batches` (batched `gp.Task`s)."""
  ys = []
  for batch in batches:
    y, mask = jax.device_get((batch.target.y[..., 0], batch.target.mask))
    ys.append(np.asarray(y, np.float64)[np.asarray(mask)])
  y = np.concatenate(ys)
  return float(y.mean()), float(y.std())


def _gp_marginals(kernel, noise, context, x):
  mean, cov = gp.posterior(kernel, context, x, noise)
  return gaussian(mean, jnp.sqrt(jnp.maximum(jnp.diag(cov), 1e-12)))


def diagonal_gp(kernel: gp.Kernel, noise: float = gp.NOISE) -> core.MetaLearner:
  """The true GP's marginal predictive at each target, without correlations (nothing learned).

  Its `kl` is the benchmark's "Diagonal GP" row: the best any model that
  predicts targets independently (a CNP) can reach; its coverage is the
  nominal level up to sampling error.
  """
  init = lambda key, task: {}
  adapt = lambda theta, context, key: core.predictor(
    lambda c, x: _gp_marginals(kernel, noise, c, x), context
  )

  def meta_loss(theta, task, key):
    return jnp.zeros([]), {}

  return core.MetaLearner(init, adapt, meta_loss, name="diagonal_gp")
