"""Matching Networks: attention over the support set with cosine similarity.

A query x is labelled by y_hat = sum_i a(x, x_i) y_i, with attention
a(x, x_i) = softmax_i(s * cos(f(x), g(x_i))) over the support examples (x_i, y_i),
y_i one-hot. The meta-loss is the negative log-probability of the true label
under y_hat.

The paper's form has s = 1. Its bound: when the embeddings are non-negative
(Conv4's are, after ReLU and max-pooling), every cosine lies in [0, 1], so in
an N-way 1-shot task the right class gets at most e / (e + N - 1) of the
attention (0.405 for 5-way, 0.125 for 20-way) and the query loss cannot go
below -log of it. `learn_scale=True` learns s = exp(theta["log_scale"])
(started at `init_scale`), which lifts the bound; s = 1 is the paper's form
exactly.

Embeddings: f = g = the embedding network (the paper's form without
full-context embeddings), or with `fce=True` the full-context embeddings of
Appendix A (`metalearn/models/fce.py`): g is a bidirectional LSTM over the
support embeddings with a skip connection, f an attention LSTM over g(S) with
`fce_steps` processing steps. Then g depends on the order of the support set,
and f depends on it only through g.

References:
  Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. Matching Networks for
  One Shot Learning. NeurIPS 2016, Eq. 1-2 and Appendix A.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import episodes as ep
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model
from metalearn.models import fce as fce_lib


def _unit(z: jax.Array, eps: float = 1e-8) -> jax.Array:
  return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + eps)


def attention(
  queries: jax.Array, keys: jax.Array, mask: jax.Array, scale: jax.Array | float = 1.0
) -> jax.Array:
  """Attention `[m, n]` of queries `[m, d]` over keys `[n, d]`: softmax of `scale` * cosine.

  Masked-out keys (`mask [n]` False) get zero weight; each row sums to one.
  `scale` 1 is the paper's form.
  """
  sims = scale * (_unit(queries) @ _unit(keys).T)
  return jax.nn.softmax(jnp.where(mask[None, :], sims, -jnp.inf), axis=-1)


def matching(
  embedding: nn.Module | Model,
  *,
  ways: int,
  eps: float = 1e-6,
  learn_scale: bool = False,
  init_scale: float = 10.0,
  fce: bool = False,
  fce_steps: int = 5,
) -> MetaLearner:
  """Matching Networks over an embedding network.

  Args:
    embedding: maps `x [n, ...]` to embeddings `[n, d]` (e.g. `Conv4(ways=None)`).
    ways: N, classes per task.
    eps: added to probabilities before the log (a class with no attention).
    learn_scale: learn the inverse temperature s of the attention (theta's
      scalar `log_scale`); False: s = 1, the paper's form.
    init_scale: s at initialisation when learned, > 0.
    fce: full-context embeddings (theta's `fce`: the LSTMs of g and f).
    fce_steps: K, processing steps of f's attention LSTM, >= 1.

  Returns:
    A `MetaLearner`; `adapt` gives a predictor of log-probabilities `[n, ways]`.
  """
  common.check_ways(ways)
  if not init_scale > 0:
    raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
  if not isinstance(fce_steps, int) or isinstance(fce_steps, bool) or fce_steps < 1:
    raise ValueError(f"fce_steps must be an int >= 1, got {fce_steps!r}")
  model, objective = as_model(embedding), ep.get_objective("cross_entropy")

  def init(key, episode):
    params = model.init(key, episode.support.x)
    theta = {"params": params}
    if learn_scale:
      theta["log_scale"] = jnp.asarray(math.log(init_scale), jnp.float32)
    if fce:
      dim = jax.eval_shape(model.apply, params, episode.support.x).shape[-1]
      theta["fce"] = fce_lib.init(jax.random.fold_in(key, 1), dim)
    return theta

  def log_probs(theta, keys, labels, mask, x):
    queries = model.apply(theta["params"], x)
    if fce:
      queries = fce_lib.query_context(theta["fce"], queries, keys, mask, fce_steps)
    scale = jnp.exp(theta["log_scale"]) if learn_scale else 1.0
    return jnp.log(attention(queries, keys, mask, scale) @ labels + eps)

  def adapt(theta, support, key):
    del key
    keys = model.apply(theta["params"], support.x)
    if fce:
      keys = fce_lib.support_context(theta["fce"], keys, support.mask)
    labels = jax.nn.one_hot(support.y, ways)
    return predictor(log_probs, theta, keys, labels, support.mask)

  return common.scored_learner("matching", init, adapt, objective)
