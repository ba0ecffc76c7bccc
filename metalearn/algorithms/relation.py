"""Relation Networks: a learned similarity between query and class feature maps.

The class representation is the sum of its support embeddings,
r_k = sum_{(x, y) in S, y = k} f(x); the relation score of query x to class k is
s_k = g([r_k, f(x)]) in (0, 1), with [.,.] channel concatenation and g a small
conv net. Training regresses the scores onto the one-hot label with a mean
squared error (Sung et al., Eq. 3); prediction is the arg-max score.

References:
  Sung, Yang, Zhang, Xiang, Torr, Hospedales. Learning to Compare: Relation
  Network for Few-Shot Learning. CVPR 2018, Eq. 1-3.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import episodes as ep
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model
from metalearn.models.relation import RelationEmbedding, RelationModule


def relation_mse(scores: jax.Array, split: ep.Split) -> jax.Array:
  """Masked mean over rows of the squared error of `scores [n, ways]` to one-hot labels."""
  target = jax.nn.one_hot(split.y, scores.shape[-1], dtype=scores.dtype)
  return ep.masked_mean(jnp.sum(jnp.square(scores - target), axis=-1), split.mask)


OBJECTIVE = ep.Objective(relation_mse, {"loss": relation_mse, "accuracy": ep.accuracy})


def relation(
  embedding: nn.Module | Model | None = None,
  *,
  ways: int,
  relation_module: nn.Module | Model | None = None,
) -> MetaLearner:
  """Relation Networks.

  Args:
    ways: N, classes per task.
    embedding: `x [n, ...] -> feature maps [n, h, w, c]` (default: the paper's
      Omniglot embedding, `RelationEmbedding()`).
    relation_module: `pairs [n, h, w, 2c] -> scores [n]` (default `RelationModule()`;
      a `RelationModule` is called through its `score` method, which gives the
      same scores at a fraction of the first convolution's cost).

  Returns:
    A `MetaLearner`; theta is `{"embedding", "relation"}`. The meta-loss is
    the paper's squared error of the relation scores `[n, ways]` (in [0, 1])
    to one-hot labels; `adapt` gives a predictor of their logarithms, logits
    like every classifier's (the arg-max is the same, and the softmax is the
    scores normalised over classes).
  """
  common.check_ways(ways)
  f = as_model(embedding or RelationEmbedding())
  relation_module = relation_module or RelationModule()
  g = as_model(relation_module)

  def pairs(classes, z):
    m = z.shape[0]
    rep_classes = jnp.broadcast_to(classes[None], (m, *classes.shape))
    rep_queries = jnp.broadcast_to(z[:, None], (m, ways, *z.shape[1:]))
    return jnp.concatenate([rep_classes, rep_queries], axis=-1).reshape(
      m * ways, *z.shape[1:-1], -1
    )

  def init(key, episode):
    k1, k2 = jax.random.split(key)
    params_f = f.init(k1, episode.support.x)
    z = f.apply(params_f, episode.support.x)
    return {"embedding": params_f, "relation": g.init(k2, pairs(z[:ways], z))}

  def scores(theta, classes, x):
    z = f.apply(theta["embedding"], x)
    if isinstance(relation_module, RelationModule):  # same scores, first conv per map
      return relation_module.apply(
        {"params": theta["relation"]}, classes, z, method=RelationModule.score
      )
    return g.apply(theta["relation"], pairs(classes, z)).reshape(x.shape[0], ways)

  def class_features(theta, support):
    z = f.apply(theta["embedding"], support.x)
    onehot = jax.nn.one_hot(support.y, ways, dtype=z.dtype) * support.mask[:, None]
    return jnp.tensordot(onehot.T, z, axes=1)  # [ways, h, w, c]: sum per class

  def log_scores(theta, classes, x):
    return jnp.log(jnp.maximum(scores(theta, classes, x), jnp.finfo(jnp.float32).tiny))

  def adapt(theta, support, key):
    del key
    return predictor(log_scores, theta, class_features(theta, support))

  def meta_loss(theta, episode, key):
    del key
    ep.check_episode(episode, batched=False)
    s = scores(theta, class_features(theta, episode.support), episode.query.x)
    metrics = {f"query_{n}": fn(s, episode.query) for n, fn in OBJECTIVE.metrics.items()}
    return OBJECTIVE.loss(s, episode.query), metrics

  return MetaLearner(init, adapt, meta_loss, name="relation")
