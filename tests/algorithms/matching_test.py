"""Matching Networks: the attention bound, the learned scale, full-context embeddings.

The bound: with non-negative embeddings every cosine lies in [0, 1], so the
paper's softmax puts at most e / (e + N - 1) on the right class of an N-way
1-shot task; a learned scale s > 1 lifts it to e^s / (e^s + N - 1). The
full-context embeddings (Vinyals et al. 2016, Appendix A) are checked against
the appendix's equations written out in numpy, for masking (padded support
points change nothing) and for their permutation behaviour: f is invariant to
the order of g's output, g is not invariant to the order of the support set,
and running g on the reversed set with its two LSTMs swapped gives g's output
reversed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import algorithms
from metalearn import episodes as ep
from metalearn.models import MLP, Conv4, Model
from metalearn.models import fce as fce_lib

IDENTITY = Model(lambda key, x: {}, lambda params, x: x)


def _episode(xs, ys, xq, yq, ms=None):
  support = ep.make_split(jnp.asarray(xs), jnp.asarray(ys), None if ms is None else jnp.asarray(ms))
  return ep.Episode(support, ep.make_split(jnp.asarray(xq), jnp.asarray(yq)))


def _right_class_probability(learner, theta, episode):
  log_p = learner.adapt(theta, episode.support, None)(episode.query.x)
  return np.exp(np.asarray(log_p))[np.arange(len(episode.query.y)), np.asarray(episode.query.y)]


@pytest.mark.parametrize("ways", [5, 20])
def test_paper_form_cannot_exceed_the_bound_on_conv4_embeddings(ways):
  """Conv4's embeddings are >= 0 (ReLU, max-pooling), so p(right class) <= e / (e + N - 1)."""
  rng = np.random.default_rng(ways)
  images = rng.uniform(size=(ways, 16, 16, 1)).astype(np.float32)
  noisy = np.clip(images + 0.05 * rng.normal(size=images.shape), 0, 1).astype(np.float32)
  episode = _episode(
    images, np.arange(ways), np.concatenate([images, noisy]), np.tile(np.arange(ways), 2)
  )
  embedding = Conv4(ways=None, channels=8, blocks=2)
  bound = math.e / (math.e + ways - 1)
  plain = algorithms.matching(embedding, ways=ways, eps=0.0)
  scaled = algorithms.matching(embedding, ways=ways, eps=0.0, learn_scale=True, init_scale=30.0)
  theta = scaled.init(jax.random.PRNGKey(0), episode)
  z = embedding.apply({"params": theta["params"]}, episode.query.x)
  assert float(jnp.min(z)) >= 0.0
  p_plain = _right_class_probability(plain, {"params": theta["params"]}, episode)
  assert np.all(p_plain <= bound + 1e-6)
  loss, _ = plain.meta_loss({"params": theta["params"]}, episode, None)
  assert float(loss) >= -math.log(bound) - 1e-5
  # The same embeddings under a scale of 30 put most of the attention on the right class.
  p_scaled = _right_class_probability(scaled, theta, episode)
  assert np.all(p_scaled > bound + 0.4)


def test_bound_is_reached_by_orthogonal_embeddings_and_the_scale_lifts_it():
  """One-hot embeddings, each query its class's key: exactly e^s / (e^s + N - 1)."""
  ways = 5
  x = np.eye(ways, dtype=np.float32)
  episode = _episode(x, np.arange(ways), x, np.arange(ways))
  plain = algorithms.matching(IDENTITY, ways=ways, eps=0.0)
  p = _right_class_probability(plain, plain.init(None, episode), episode)
  np.testing.assert_allclose(p, math.e / (math.e + ways - 1), rtol=1e-5)
  for s in (1.0, 3.0, 10.0):
    scaled = algorithms.matching(IDENTITY, ways=ways, eps=0.0, learn_scale=True, init_scale=s)
    theta = scaled.init(None, episode)
    assert float(theta["log_scale"]) == pytest.approx(math.log(s))
    p = _right_class_probability(scaled, theta, episode)
    np.testing.assert_allclose(p, math.exp(s) / (math.exp(s) + ways - 1), rtol=1e-5)


def test_scale_one_is_the_paper_form_and_its_gradient_raises_the_scale():
  rng = np.random.default_rng(0)
  xs, xq = rng.uniform(size=(6, 4)), rng.uniform(size=(9, 4))
  episode = _episode(xs, np.arange(6) % 3, xq, np.arange(9) % 3)
  plain = algorithms.matching(IDENTITY, ways=3)
  scaled = algorithms.matching(IDENTITY, ways=3, learn_scale=True, init_scale=1.0)
  theta = scaled.init(None, episode)
  np.testing.assert_allclose(
    plain.adapt({"params": {}}, episode.support, None)(episode.query.x),
    scaled.adapt(theta, episode.support, None)(episode.query.x),
    rtol=1e-6,
  )
  # Queries equal to support images, all cosines to the others below 1: sharpening helps.
  episode = _episode(xs, np.arange(6) % 3, xs, np.arange(6) % 3)
  grad = jax.grad(lambda t: scaled.meta_loss(t, episode, None)[0])(theta)
  assert float(grad["log_scale"]) < 0.0


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="init_scale"):
    algorithms.matching(IDENTITY, ways=2, learn_scale=True, init_scale=0.0)
  with pytest.raises(ValueError, match="fce_steps"):
    algorithms.matching(IDENTITY, ways=2, fce=True, fce_steps=0)


# --- Full-context embeddings -------------------------------------------------------------


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_lstm(p, x, state, c):
  z = x @ p["wx"] + state @ p["ws"] + p["b"]
  i, f, g, o = np.split(z, 4, axis=-1)
  c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
  return _sigmoid(o) * np.tanh(c), c


def _np_g(p, z):
  """Appendix A.2 by hand: g(x_i) = h_fwd_i + h_bwd_i + g'(x_i)."""
  n, d = z.shape
  fwd, bwd = np.zeros((n, d)), np.zeros((n, d))
  h, c = np.zeros(d), np.zeros(d)
  for i in range(n):
    h, c = _np_lstm(p["g_fwd"], z[i], h, c)
    fwd[i] = h
  h, c = np.zeros(d), np.zeros(d)
  for i in reversed(range(n)):
    h, c = _np_lstm(p["g_bwd"], z[i], h, c)
    bwd[i] = h
  return fwd + bwd + z


def _np_f(p, q, g, steps):
  """Appendix A.1 by hand, one query at a time: K steps of attention over g."""
  out = []
  for x in q:
    h, c = np.zeros_like(x), np.zeros_like(x)
    for _ in range(steps):
      a = np.exp(g @ h - np.max(g @ h))
      r = (a / a.sum()) @ g
      h_hat, c = _np_lstm(p["f"], x, np.concatenate([h, r]), c)
      h = h_hat + x
    out.append(h)
  return np.stack(out)


def _fce_params(d=4, seed=0):
  p = fce_lib.init(jax.random.PRNGKey(seed), d)
  # Non-zero biases so that the check covers them.
  return jax.tree.map(lambda a: a + 0.1 * jnp.arange(a.size).reshape(a.shape) / a.size, p)


def test_fce_shapes_and_the_appendix_equations():
  d, n, m, steps = 4, 5, 3, 3
  rng = np.random.default_rng(1)
  z, q = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)
  p = _fce_params(d)
  shapes = jax.tree.map(jnp.shape, p)
  assert shapes["g_fwd"] == shapes["g_bwd"] == {"wx": (d, 4 * d), "ws": (d, 4 * d), "b": (4 * d,)}
  assert shapes["f"] == {"wx": (d, 4 * d), "ws": (2 * d, 4 * d), "b": (4 * d,)}
  mask = jnp.ones(n, bool)
  g = fce_lib.support_context(p, jnp.asarray(z), mask)
  f = fce_lib.query_context(p, jnp.asarray(q), g, mask, steps)
  assert g.shape == (n, d) and f.shape == (m, d)
  p_np = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  g_np = _np_g(p_np, z.astype(np.float64))
  np.testing.assert_allclose(g, g_np, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    f, _np_f(p_np, q.astype(np.float64), g_np, steps), rtol=1e-4, atol=1e-5
  )


def _fce_learner(ways=3, **kw):
  return algorithms.matching(MLP(hidden=(6,), out=4), ways=ways, fce=True, fce_steps=2, **kw)


def _fce_episode(seed=0, ways=3, shots=2, queries=2):
  rng = np.random.default_rng(seed)
  n, m = ways * shots, ways * queries
  return _episode(
    rng.normal(size=(n, 5)), np.arange(n) % ways, rng.normal(size=(m, 5)), np.arange(m) % ways
  )


def test_fce_learner_shapes_and_gradients():
  learner = _fce_learner(learn_scale=True)
  episode = _fce_episode()
  theta = learner.init(jax.random.PRNGKey(0), episode)
  assert set(theta) == {"params", "log_scale", "fce"}
  log_p = learner.adapt(theta, episode.support, None)(episode.query.x)
  assert log_p.shape == (6, 3)
  np.testing.assert_allclose(jnp.sum(jnp.exp(log_p), axis=-1), 1.0, atol=1e-4)
  grads = jax.grad(lambda t: learner.meta_loss(t, episode, None)[0])(theta)
  for name in ("g_fwd", "g_bwd", "f"):
    assert float(jnp.max(jnp.abs(grads["fce"][name]["wx"]))) > 0.0


def test_fce_padded_support_points_change_nothing():
  learner = _fce_learner()
  episode = _fce_episode()
  theta = learner.init(jax.random.PRNGKey(0), episode)
  reference = learner.adapt(theta, episode.support, None)(episode.query.x)
  rng = np.random.default_rng(5)
  s = episode.support
  # Padding rows with arbitrary inputs and labels, at the start, in the middle and at the end.
  order = [None, 0, 1, 2, None, 3, None, 4, 5, None]
  x = np.stack([rng.normal(size=5) * 10 if i is None else np.asarray(s.x[i]) for i in order])
  y = np.array([rng.integers(3) if i is None else int(s.y[i]) for i in order])
  mask = np.array([i is not None for i in order])
  padded = ep.make_split(jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(mask))
  out = learner.adapt(theta, padded, None)(episode.query.x)
  np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
  z = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)), jnp.float32)
  g = fce_lib.support_context(theta["fce"], z, jnp.ones(6, bool))
  z_pad = jnp.concatenate([z[:3], jnp.full((2, 4), 7.0), z[3:]])
  mask_pad = jnp.asarray([True] * 3 + [False] * 2 + [True] * 3)
  g_pad = fce_lib.support_context(theta["fce"], z_pad, mask_pad)
  np.testing.assert_allclose(g_pad[mask_pad], g, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(g_pad[~mask_pad], 0.0)


def test_f_is_invariant_to_the_order_of_g_and_g_depends_on_the_support_order():
  p = _fce_params(4)
  rng = np.random.default_rng(3)
  z = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  q = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  mask = jnp.asarray([True, True, False, True, True, True])
  perm = jnp.asarray([4, 2, 0, 5, 1, 3])
  g = fce_lib.support_context(p, z, mask)
  # f given g's output: a sum over the support set, so any order of g's rows gives the same f.
  np.testing.assert_allclose(
    fce_lib.query_context(p, q, g[perm], mask[perm], 3),
    fce_lib.query_context(p, q, g, mask, 3),
    rtol=1e-5,
    atol=1e-6,
  )
  # g itself is a sequence model: embedding the permuted set is not permuting the embeddings.
  g_perm = fce_lib.support_context(p, z[perm], mask[perm])
  assert float(jnp.max(jnp.abs(g_perm - g[perm]))) > 1e-2
  # What does hold: the reversed set with the forward and backward LSTMs swapped.
  swapped = {**p, "g_fwd": p["g_bwd"], "g_bwd": p["g_fwd"]}
  np.testing.assert_allclose(
    fce_lib.support_context(swapped, z[::-1], mask[::-1]), g[::-1], rtol=1e-5, atol=1e-6
  )


def test_without_fce_the_support_order_does_not_matter_with_fce_it_does():
  episode = _fce_episode(seed=4)
  perm = jnp.asarray([3, 0, 5, 1, 4, 2])
  s = episode.support
  shuffled = ep.make_split(s.x[perm], s.y[perm], s.mask[perm])
  for fce, invariant in ((False, True), (True, False)):
    learner = algorithms.matching(MLP(hidden=(6,), out=4), ways=3, fce=fce)
    theta = learner.init(jax.random.PRNGKey(0), episode)
    a = learner.adapt(theta, s, None)(episode.query.x)
    b = learner.adapt(theta, shuffled, None)(episode.query.x)
    if invariant:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
      assert float(jnp.max(jnp.abs(a - b))) > 1e-4
