"""Matching Networks: attention over the support set with cosine similarity.

A query x is labelled by y_hat = sum_i a(x, x_i) y_i, with attention
a(x, x_i) = softmax_i(cos(f(x), g(x_i))) over the support examples (x_i, y_i),
y_i one-hot. Here f = g (one embedding network; the paper's optional
full-context embeddings are not implemented). The meta-loss is the negative
log-probability of the true label under y_hat.

References:
  Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. Matching Networks for
  One Shot Learning. NeurIPS 2016, Eq. 1-2.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import episodes as ep
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model


def _unit(z: jax.Array, eps: float = 1e-8) -> jax.Array:
  return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + eps)


def attention(queries: jax.Array, keys: jax.Array, mask: jax.Array) -> jax.Array:
  """Cosine-similarity attention `[m, n]` of queries `[m, d]` over keys `[n, d]`.

  Masked-out keys (`mask [n]` False) get zero weight; each row sums to one.
  """
  sims = _unit(queries) @ _unit(keys).T
  return jax.nn.softmax(jnp.where(mask[None, :], sims, -jnp.inf), axis=-1)


def matching(embedding: nn.Module | Model, *, ways: int, eps: float = 1e-6) -> MetaLearner:
  """Matching Networks over an embedding network.

  Args:
    embedding: maps `x [n, ...]` to embeddings `[n, d]` (e.g. `Conv4(ways=None)`).
    ways: N, classes per task.
    eps: added to probabilities before the log (a class with no attention).

  Returns:
    A `MetaLearner`; `adapt` gives a predictor of log-probabilities `[n, ways]`.
  """
  common.check_ways(ways)
  model, objective = as_model(embedding), ep.get_objective("cross_entropy")

  def init(key, episode):
    return {"params": model.init(key, episode.support.x)}

  def log_probs(params, keys, labels, mask, x):
    return jnp.log(attention(model.apply(params, x), keys, mask) @ labels + eps)

  def adapt(theta, support, key):
    del key
    keys = model.apply(theta["params"], support.x)
    labels = jax.nn.one_hot(support.y, ways)
    return predictor(log_probs, theta["params"], keys, labels, support.mask)

  return common.scored_learner("matching", init, adapt, objective)
