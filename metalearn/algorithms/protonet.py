"""Prototypical Networks: classify by squared Euclidean distance to class means.

For a task with N classes, the prototype of class k is the mean embedding of
its support examples, c_k = mean_{(x, y) in S, y = k} f_theta(x), and a query
x is classified by softmax over -||f_theta(x) - c_k||^2. The meta-loss is the
query cross-entropy; there is no inner loop, so `adapt` computes prototypes.

References:
  Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning.
  NeurIPS 2017, Eq. 1-2.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import episodes as ep
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model


def class_means(z: jax.Array, split: ep.Split, ways: int) -> jax.Array:
  """Masked mean of embeddings `z [n, d]` per label: `[ways, d]` (zeros for empty classes)."""
  onehot = jax.nn.one_hot(split.y, ways, dtype=z.dtype) * split.mask[:, None].astype(z.dtype)
  return (onehot.T @ z) / jnp.maximum(onehot.sum(axis=0), 1.0)[:, None]


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[n, m]` squared Euclidean distances between rows of `a [n, d]` and `b [m, d]`."""
  return jnp.sum(a * a, axis=-1)[:, None] - 2.0 * a @ b.T + jnp.sum(b * b, axis=-1)[None, :]


def protonet(embedding: nn.Module | Model, *, ways: int) -> MetaLearner:
  """Prototypical Networks over an embedding network.

  Args:
    embedding: maps `x [n, ...]` to embeddings `[n, d]` (e.g. `Conv4(ways=None)`).
    ways: N, classes per task (labels are `0..N-1`).

  Returns:
    A `MetaLearner`; theta is `{"params": embedding params}`; `adapt` gives a
    predictor holding the params and the prototypes `[ways, d]`, whose
    outputs are logits `[n, ways]`.
  """
  common.check_ways(ways)
  model, objective = as_model(embedding), ep.get_objective("cross_entropy")

  def init(key, episode):
    return {"params": model.init(key, episode.support.x)}

  def logits(params, prototypes, x):
    return -squared_distances(model.apply(params, x), prototypes)

  def adapt(theta, support, key):
    del key
    z = model.apply(theta["params"], support.x)
    return predictor(logits, theta["params"], class_means(z, support, ways))

  return common.scored_learner("protonet", init, adapt, objective)
