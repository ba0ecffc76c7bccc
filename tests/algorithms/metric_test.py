"""Prototypical, Matching and Relation networks against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import algorithms
from metalearn import episodes as ep
from metalearn.algorithms.matching import attention
from metalearn.models import Conv4, Model

IDENTITY = Model(lambda key, x: {}, lambda params, x: x)  # embedding f(x) = x


def _split(x, y, mask=None):
  x = np.asarray(x, np.float32)
  return ep.Split(x, np.asarray(y, np.int32), np.ones(len(x), bool) if mask is None else mask)


def test_protonet_logits_equal_hand_computation():
  support = _split(
    [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [9.0, 9.0]],
    [0, 0, 1, 1],
    np.array([True, True, True, False]),
  )
  query = _split([[1.0, 1.0], [0.0, 2.0]], [0, 1])
  learner = algorithms.protonet(IDENTITY, ways=2)
  task = learner.adapt({"params": {}}, support, jax.random.PRNGKey(0))
  _, prototypes = task.args  # the predictor holds the embedding's params and the prototypes
  # Prototypes: mean of class 0 = (1, 0); class 1 = (0, 3) (the masked row is ignored).
  np.testing.assert_allclose(prototypes, [[1.0, 0.0], [0.0, 3.0]])
  logits = task(query.x)
  want = -np.array([[1.0, 1.0 + 4.0], [1.0 + 4.0, 1.0]])
  np.testing.assert_allclose(logits, want, rtol=1e-6)
  loss, metrics = learner.meta_loss({"params": {}}, ep.Episode(support, query), None)
  log_p = want - np.log(np.exp(want).sum(axis=1, keepdims=True))
  np.testing.assert_allclose(loss, -np.mean([log_p[0, 0], log_p[1, 1]]), rtol=1e-5)
  assert metrics["query_accuracy"] == 1.0


def test_matching_attention_sums_to_one_and_ignores_masked_support():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
  mask = np.array([True, False, True, True, False])
  a = np.asarray(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask)))
  np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)
  assert np.all(a[:, ~mask] == 0)
  cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
    k / np.linalg.norm(k, axis=1, keepdims=True)
  ).T
  e = np.exp(cos) * mask
  np.testing.assert_allclose(a, e / e.sum(axis=1, keepdims=True), rtol=1e-5)


def test_matching_predicts_attention_weighted_labels():
  support = _split([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0, 1, 1])
  query = _split([[2.0, 0.1]], [0])
  learner = algorithms.matching(IDENTITY, ways=2, eps=0.0)
  log_p = learner.adapt({"params": {}}, support, None)(query.x)
  a = attention(jnp.asarray(query.x), jnp.asarray(support.x), support.mask)[0]
  np.testing.assert_allclose(np.exp(log_p[0]), [a[0], a[1] + a[2]], rtol=1e-6)


def test_relation_sums_class_features_and_scores_every_pair():
  seen = []

  def score(params, pairs):
    seen.append(pairs)
    return jnp.sum(pairs, axis=-1) * params["w"]

  module = Model(lambda key, pairs: {"w": jnp.ones([])}, score)
  learner = algorithms.relation(IDENTITY, ways=2, relation_module=module)
  support = _split([[1.0], [2.0], [5.0]], [0, 0, 1])
  query = _split([[10.0], [20.0]], [1, 0])
  theta = {"embedding": {}, "relation": {"w": jnp.ones([])}}
  task = learner.adapt(theta, support, None)
  _, classes = task.args
  np.testing.assert_allclose(classes, [[3.0], [5.0]])  # sums, not means
  # The predictor gives logits, the logarithms of the relation scores.
  np.testing.assert_allclose(np.exp(task(query.x)), [[13.0, 15.0], [23.0, 25.0]], rtol=1e-6)
  np.testing.assert_allclose(seen[-1], [[3, 10], [5, 10], [3, 20], [5, 20]])
  # Relation loss: squared error to the one-hot label, summed over classes, mean over rows.
  want = np.mean([(13 - 0) ** 2 + (15 - 1) ** 2, (23 - 1) ** 2 + (25 - 0) ** 2])
  np.testing.assert_allclose(learner.meta_loss(theta, ep.Episode(support, query), None)[0], want)


def test_conv4_embedding_without_head():
  x = jnp.zeros((3, 28, 28, 1))
  params = Conv4(ways=None).init(jax.random.PRNGKey(0), x)
  assert "head" not in params["params"]
  assert Conv4(ways=None).apply(params, x).shape == (3, 64)


@pytest.mark.parametrize("name", ["protonet", "matching", "relation"])
def test_ways_must_be_at_least_two(name):
  with pytest.raises(ValueError, match="ways"):
    algorithms.REGISTRY[name](IDENTITY, ways=1)


def test_relation_default_module_scores_like_the_generic_pair_path():
  """The default RelationModule goes through `score`; wrapped as a plain Model it scores pairs."""
  from metalearn.models import as_model
  from metalearn.models.relation import RelationEmbedding, RelationModule

  module = RelationModule(channels=8, hidden=4)
  fast = algorithms.relation(RelationEmbedding(channels=8), ways=3, relation_module=module)
  generic = algorithms.relation(
    RelationEmbedding(channels=8), ways=3, relation_module=as_model(module)
  )
  rng = np.random.default_rng(0)
  support = _split(rng.random((6, 28, 28, 1)), [0, 1, 2, 0, 1, 2])
  query = _split(rng.random((5, 28, 28, 1)), [0, 1, 2, 0, 1])
  theta = fast.init(jax.random.PRNGKey(0), ep.Episode(support, query))
  want = generic.adapt(theta, support, None)(query.x)
  got = fast.adapt(theta, support, None)(query.x)
  assert got.shape == (5, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
