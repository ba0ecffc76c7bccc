"""The coordinatewise LSTM optimizer: preprocessing, optax's contract, per-coordinate state, SGD.

Reference values are written by hand (Appendix A's formula), computed one
coordinate at a time with `lstm_step` (the function the optimizer maps over
coordinates), or taken from `optax.sgd` and MAML with SGD, which an LSTM read
out as SGD (`as_sgd`) must reproduce exactly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import algorithms
from metalearn import episodes as ep
from metalearn.learned_optim import (
  LSTMState,
  as_sgd,
  lstm_init,
  lstm_optimizer,
  lstm_step,
  lstm_update,
  preprocess_gradient,
)
from metalearn.models import MLP

H = 20  # the paper's hidden size, lstm_init's default


def _params():
  return {"w": jnp.full((3, 2), 0.5), "b": jnp.zeros(4)}


def _grads(seed):
  k_w, k_b = jax.random.split(jax.random.key(seed))
  return {"w": jax.random.normal(k_w, (3, 2)), "b": jax.random.normal(k_b, (4,))}


def test_preprocessing_is_appendix_a():
  p = 10.0
  g = jnp.array([1.0, -2.0, 0.5, 1e-6, -2e-5, 0.0])  # exp(-10) = 4.54e-5
  expected = np.array(
    [
      [0.0, 1.0],
      [math.log(2.0) / p, -1.0],
      [math.log(0.5) / p, 1.0],
      [-1.0, math.exp(p) * 1e-6],
      [-1.0, -math.exp(p) * 2e-5],
      [-1.0, 0.0],
    ]
  )
  np.testing.assert_allclose(preprocess_gradient(g, p), expected, rtol=1e-6, atol=1e-7)
  # Derivatives are finite at g = 0 (second-order meta-gradients pass through it):
  # the small-gradient branch (-1, e^p g) has derivative (0, e^p).
  np.testing.assert_allclose(
    jax.jacfwd(lambda x: preprocess_gradient(x, p))(0.0), [0.0, math.exp(p)], rtol=1e-6
  )
  np.testing.assert_allclose(
    jax.jacfwd(lambda x: preprocess_gradient(x, p))(2.0), [1 / (p * 2.0), 0.0], rtol=1e-6
  )


def test_init_state_and_update_shapes_follow_the_params():
  theta = lstm_init(jax.random.key(0))
  opt = lstm_optimizer(theta)
  params = _params()
  state = opt.init(params)
  assert isinstance(state, LSTMState) and len(state.hidden) == len(state.cell) == 2
  for per_layer in (*state.hidden, *state.cell):
    assert per_layer["w"].shape == (3, 2, H) and per_layer["b"].shape == (4, H)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(per_layer))
  updates, state = opt.update(_grads(1), state, params)
  assert jax.tree_util.tree_map(jnp.shape, updates) == jax.tree_util.tree_map(jnp.shape, params)
  assert state.hidden[1]["w"].shape == (3, 2, H)


def test_each_coordinate_is_the_one_coordinate_lstm():
  """The update and state of every coordinate equal `lstm_step` run on it alone."""
  theta = lstm_init(jax.random.key(0))
  opt = lstm_optimizer(theta)
  state = opt.init(_params())
  # Per coordinate by hand: a Python loop over the 10 coordinates, over 3 steps.
  hand = {name: [] for name in ("w", "b")}
  for name, shape in (("w", (3, 2)), ("b", (4,))):
    for idx in np.ndindex(*shape):
      h = c = (jnp.zeros(H), jnp.zeros(H))
      us = []
      for seed in range(3):
        u, h, c = lstm_step(theta, _grads(seed)[name][idx], h, c)
        us.append(u)
      hand[name].append((us, h, c))
  for seed in range(3):
    updates, state = opt.update(_grads(seed), state)
    for name, shape in (("w", (3, 2)), ("b", (4,))):
      for k, idx in enumerate(np.ndindex(*shape)):
        np.testing.assert_allclose(updates[name][idx], hand[name][k][0][seed], rtol=1e-5)
  for name, shape in (("w", (3, 2)), ("b", (4,))):
    for k, idx in enumerate(np.ndindex(*shape)):
      for layer in range(2):
        np.testing.assert_allclose(state.hidden[layer][name][idx], hand[name][k][1][layer], 1e-5)
        np.testing.assert_allclose(state.cell[layer][name][idx], hand[name][k][2][layer], 1e-5)


def test_state_is_per_coordinate():
  """Two coordinates with different gradient histories end in different states, same ones not."""
  opt = lstm_optimizer(lstm_init(jax.random.key(0)))
  state = opt.init(jnp.zeros(3))
  for g in ([1.0, 1.0, -0.3], [0.2, 0.2, 0.2], [-1.0, -1.0, 0.0]):
    _, state = opt.update(jnp.array(g), state)
  for layer in range(2):
    for s in (state.hidden[layer], state.cell[layer]):
      np.testing.assert_array_equal(s[0], s[1])  # the same history: the same state
      assert float(jnp.abs(s[0] - s[2]).max()) > 1e-3  # a different one: a different state
  # The last coordinate's update now differs from the first's for the same gradient.
  updates, _ = opt.update(jnp.array([0.5, 0.5, 0.5]), state)
  assert updates[0] == updates[1] and abs(float(updates[0] - updates[2])) > 1e-6


def test_jit_equals_eager():
  opt = lstm_optimizer(lstm_init(jax.random.key(0)))
  params = _params()
  s_eager = s_jit = opt.init(params)
  update = jax.jit(opt.update)
  for seed in range(3):
    u_eager, s_eager = opt.update(_grads(seed), s_eager, params)
    u_jit, s_jit = update(_grads(seed), s_jit, params)
    for a, b in zip(
      jax.tree_util.tree_leaves((u_eager, s_eager)),
      jax.tree_util.tree_leaves((u_jit, s_jit)),
      strict=True,
    ):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_inside_optax_chain():
  """`chain(scale(3), lstm, scale(0.5))` is the LSTM fed 3 g, its update halved."""
  lstm = lstm_optimizer(lstm_init(jax.random.key(0)))
  chained = optax.chain(optax.scale(3.0), lstm, optax.scale(0.5))
  params = _params()
  s_chain, s_lstm = chained.init(params), lstm.init(params)
  for seed in range(3):
    g = _grads(seed)
    u_chain, s_chain = jax.jit(chained.update)(g, s_chain, params)
    u_lstm, s_lstm = lstm.update(jax.tree_util.tree_map(lambda x: 3.0 * x, g), s_lstm, params)
    for a, b in zip(
      jax.tree_util.tree_leaves(u_chain), jax.tree_util.tree_leaves(u_lstm), strict=True
    ):
      np.testing.assert_allclose(a, 0.5 * b, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(s_chain[1].hidden[0]["w"], s_lstm.hidden[0]["w"], rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("preprocess", [True, False])
def test_an_lstm_read_out_as_sgd_is_sgd_bit_for_bit(preprocess, jit):
  """`as_sgd(theta, lr)` (w = 0, b = 0, skip = -lr): every step equals `optax.sgd(lr)`'s."""
  lr = 0.05
  lstm = lstm_optimizer(
    as_sgd(lstm_init(jax.random.key(0), preprocess=preprocess), lr), preprocess=preprocess
  )
  sgd = optax.sgd(lr)
  target = _grads(7)
  loss = lambda p: sum(jnp.sum(jnp.sin(p[k]) * target[k] + jnp.square(p[k] - target[k])) for k in p)
  p_lstm = p_sgd = _params()
  s_lstm, s_sgd = lstm.init(p_lstm), sgd.init(p_sgd)
  wrap = jax.jit if jit else (lambda f: f)
  lstm, sgd = (
    optax.GradientTransformation(lstm.init, wrap(lstm.update)),
    optax.GradientTransformation(sgd.init, wrap(sgd.update)),
  )
  for _ in range(5):
    u_lstm, s_lstm = lstm.update(jax.grad(loss)(p_lstm), s_lstm, p_lstm)
    u_sgd, s_sgd = sgd.update(jax.grad(loss)(p_sgd), s_sgd, p_sgd)
    p_lstm, p_sgd = optax.apply_updates(p_lstm, u_lstm), optax.apply_updates(p_sgd, u_sgd)
    for a, b in zip(
      jax.tree_util.tree_leaves(p_lstm), jax.tree_util.tree_leaves(p_sgd), strict=True
    ):
      np.testing.assert_array_equal(a, b)
  # The LSTM did run: its state moved away from zero.
  assert float(jnp.abs(s_lstm.hidden[1]["w"]).max()) > 1e-3


def test_lstm_update_options_reach_the_params_and_the_optimizer():
  update = lstm_update(hidden=5, layers=3, preprocess=False, name="opt")
  theta = update.init(jax.random.key(0), _params())
  assert update.name == "opt" and sorted(theta) == ["layer_0", "layer_1", "layer_2", "output"]
  assert theta["layer_0"]["w_x"].shape == (1, 20) and theta["layer_2"]["w_h"].shape == (5, 20)
  assert update.transform(theta).init(_params()).hidden[2]["w"].shape == (3, 2, 5)
  with pytest.raises(ValueError, match="reads 1 input"):
    lstm_optimizer(theta, preprocess=True)
  with pytest.raises(ValueError, match="p must be > 0"):
    lstm_optimizer(theta, preprocess=False, p=0.0)


# MAML with the LSTM as its inner update (float64, so the comparisons are tight).


def _episode(seed=0, n=6):
  rng = np.random.default_rng(seed)

  def split():
    x = rng.uniform(-5, 5, size=(n, 1))
    return ep.Split(jnp.asarray(x), jnp.asarray(2.0 * np.sin(x - 0.5)), jnp.ones(n, bool))

  return ep.Episode(split(), split())


def _as_f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.mark.usefixtures("x64")
def test_maml_with_the_lstm_meta_gradient_is_finite_shaped_and_matches_finite_differences():
  episode = _episode()
  learner = algorithms.maml(MLP(hidden=(8,)), inner_steps=2, inner_optimizer=lstm_update())
  theta = _as_f64(learner.init(jax.random.key(0), episode))
  assert sorted(theta) == ["lstm", "params"]
  loss = lambda t: learner.meta_loss(t, episode, jax.random.key(1))[0]
  grads = jax.jit(jax.grad(loss))(theta)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(theta)
  for (path, g), t in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(theta), strict=True
  ):
    name = jax.tree_util.keystr(path)
    assert g.shape == t.shape, name
    assert bool(jnp.all(jnp.isfinite(g))), name
    assert float(jnp.abs(g).max()) > 0.0, name  # every weight group gets a gradient
  # The directional derivative along a random direction of the LSTM's weights
  # equals central finite differences of the meta-loss.
  leaves, treedef = jax.tree_util.tree_flatten(theta["lstm"])
  keys = jax.random.split(jax.random.key(2), len(leaves))
  v = treedef.unflatten(
    [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
  )
  along = lambda eps: loss(
    {**theta, "lstm": jax.tree_util.tree_map(lambda a, b: a + eps * b, theta["lstm"], v)}
  )
  eps = 1e-5
  fd = (jax.jit(along)(eps) - jax.jit(along)(-eps)) / (2 * eps)
  exact = sum(
    jnp.vdot(a, b)
    for a, b in zip(
      jax.tree_util.tree_leaves(grads["lstm"]), jax.tree_util.tree_leaves(v), strict=True
    )
  )
  np.testing.assert_allclose(exact, fd, rtol=1e-6)


def _sinusoid_learner(arg):
  """The sinusoid config's learner (`:maml`, `:maml_lstm`) with a small network, 3 inner steps."""
  from experiments import train
  from experiments.configs import sinusoid

  config = sinusoid.get_config(arg)
  with config.unlocked():
    config.hidden = (8,)
  return train.build_learner(config, inner_steps=3)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("built_by", ["factory", "config"])
def test_maml_with_an_lstm_read_out_as_sgd_is_maml_with_sgd(built_by):
  """Same meta-loss and same meta-gradient for the initialisation as `maml(inner_lr=lr)`.

  Built by the factories, or through the sinusoid config's `:maml_lstm` and `:maml`
  (whose inner_lr is 0.01).
  """
  lr, episode = 0.01, _episode(1)
  if built_by == "factory":
    model = MLP(hidden=(8,))
    with_lstm = algorithms.maml(model, inner_steps=3, inner_optimizer=lstm_update())
    with_sgd = algorithms.maml(model, inner_steps=3, inner_lr=lr)
  else:
    with_lstm, with_sgd = _sinusoid_learner("maml_lstm,smoke"), _sinusoid_learner("maml,smoke")
  theta = _as_f64(with_lstm.init(jax.random.key(0), episode))
  theta["lstm"] = as_sgd(theta["lstm"], lr)
  key = jax.random.key(1)
  (l_lstm, _), g_lstm = jax.value_and_grad(with_lstm.meta_loss, has_aux=True)(theta, episode, key)
  (l_sgd, _), g_sgd = jax.value_and_grad(with_sgd.meta_loss, has_aux=True)(
    {"params": theta["params"]}, episode, key
  )
  np.testing.assert_allclose(l_lstm, l_sgd, rtol=1e-12)
  for a, b in zip(
    jax.tree_util.tree_leaves(g_lstm["params"]), jax.tree_util.tree_leaves(g_sgd), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
