"""T-Net and MT-Net against MAML, against each other and against closed forms (float64).

For a linear layer `y = x A + c` with `A = W T`, `c = b T` and the mse loss on rows X
(real rows only), `G_A = (2 / n) X^T R`, `G_c = (2 / n) 1^T R` with `R = X A + c - Y`,
and one T-Net step is `A' = A - alpha G_A P`, `c' = c - alpha G_c P`, `P = T^T diag(m) T`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import algorithms
from metalearn import episodes as ep
from metalearn.algorithms.tnet import sample_masks
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP, Model, warped

pytestmark = pytest.mark.usefixtures("x64")

D_IN, D_OUT, LR = 3, 2, 0.05
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _close(a, b, rtol=1e-10, atol=1e-12):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _f64(tree):
  return jax.tree_util.tree_map(
    lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a, tree
  )


def _sinusoid_episode(seed=0):
  batch = Sinusoid(shots=5, queries=6).sample(np.random.default_rng(seed), 1)
  return _f64(ep.task(batch, 0))


def _linear_model():
  def init(key, x):
    k1, k2 = jax.random.split(key)
    return {
      "layer": {
        "kernel": jax.random.normal(k1, (x.shape[-1], D_OUT), x.dtype),
        "bias": jax.random.normal(k2, (D_OUT,), x.dtype),
      }
    }

  return Model(init, lambda p, x: x @ p["layer"]["kernel"] + p["layer"]["bias"])


def _linear_episode(seed=0, n_s=6, n_q=5):
  rng = np.random.default_rng(seed)

  def split(n):
    mask = np.ones(n, bool)
    mask[1] = False  # one padded row, with garbage, that must be ignored
    x = rng.normal(size=(n, D_IN))
    x[1] *= 100.0
    return ep.Split(x, rng.normal(size=(n, D_OUT)), mask)

  return ep.Episode(split(n_s), split(n_q))


def _np_step(a, c, split, p):
  x, y = split.x[split.mask], split.y[split.mask]
  r = x @ a + c - y
  return a - LR * (2 / len(x)) * x.T @ r @ p, c - LR * (2 / len(x)) * r.sum(0) @ p


def _outputs(learner):
  """`(theta, episode, key) -> loss, metrics, meta-gradient`, jitted."""
  return _jit(lambda t, e, k: jax.value_and_grad(learner.meta_loss, has_aux=True)(t, e, k))


def test_identity_maps_equal_maml():
  episode = _sinusoid_episode()
  model = MLP(hidden=(6, 5))
  tnet = algorithms.tnet(model, inner_lr=0.02, inner_steps=3)
  maml = algorithms.maml(model, inner_lr=0.02, inner_steps=3)
  key = jax.random.key(0)
  theta = tnet.init(key, episode)
  assert set(theta) == {"params", "tnet"}
  _close(theta["tnet"]["T"], warped.identity_maps(theta["params"]))
  (loss, metrics), grad = _outputs(tnet)(theta, episode, key)
  (want_loss, want_metrics), want_grad = _outputs(maml)({"params": theta["params"]}, episode, key)
  _close((loss, metrics, grad["params"]), (want_loss, want_metrics, want_grad["params"]))
  # The maps are learned: their meta-gradient is not zero, even at the identity.
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grad["tnet"]))
  x = episode.query.x
  _close(tnet.adapt(theta, episode.support, key)(x), maml.adapt(theta, episode.support, key)(x))


def test_all_ones_masks_equal_tnet():
  episode = _sinusoid_episode(1)
  model = MLP(hidden=(6,))
  tnet = algorithms.tnet(model, inner_lr=0.02, inner_steps=2)
  mtnet = algorithms.mtnet(model, inner_lr=0.02, inner_steps=2, logit_init=60.0)
  key = jax.random.key(3)
  theta = mtnet.init(key, episode)
  # Non-identity maps, so the comparison covers P = T^T T.
  rng = np.random.default_rng(0)
  theta["tnet"]["T"] = jax.tree_util.tree_map(
    lambda t: t + 0.3 * rng.normal(size=t.shape), theta["tnet"]["T"]
  )
  (loss, metrics), grad = _outputs(mtnet)(theta, episode, key)
  assert float(metrics.pop("adapted_fraction")) == 1.0
  t_theta = {"params": theta["params"], "tnet": {"T": theta["tnet"]["T"]}}
  (want_loss, want_metrics), want_grad = _outputs(tnet)(t_theta, episode, key)
  _close((loss, metrics), (want_loss, want_metrics))
  _close((grad["params"], grad["tnet"]["T"]), (want_grad["params"], want_grad["tnet"]["T"]))


def _random_maps_theta(learner, episode, seed=0):
  theta = learner.init(jax.random.key(seed), episode)
  rng = np.random.default_rng(seed)
  theta["tnet"]["T"] = {"layer": rng.normal(size=(D_OUT, D_OUT))}
  return theta


def test_inner_steps_are_preconditioned_steps_on_the_unmapped_network():
  """Two steps: A_{k+1} = A_k - alpha G(A_k) T^T T with the same T (the maps do not adapt)."""
  episode = _linear_episode()
  learner = algorithms.tnet(_linear_model(), inner_lr=LR, inner_steps=2)
  theta = _random_maps_theta(learner, episode)
  t = theta["tnet"]["T"]["layer"]
  w, b = theta["params"]["layer"]["kernel"], theta["params"]["layer"]["bias"]
  a, c = w @ t, b @ t
  for _ in range(2):
    a, c = _np_step(a, c, episode.support, t.T @ t)
  got = _jit(learner.adapt)(theta, episode.support, jax.random.key(0)).args[0]["layer"]
  _close((got["kernel"], got["bias"]), (a, c))

  # The same step taken on W in the mapped network `x (W T) + b T`, as the paper writes it.
  def mapped_loss(wb, split):
    pred = split.x @ (wb[0] @ t) + wb[1] @ t
    return ep.mse(pred, split)

  wb = (w, b)
  for _ in range(2):
    wb = jax.tree_util.tree_map(
      lambda p, g: p - LR * g, wb, jax.grad(mapped_loss)(wb, episode.support)
    )
  _close((wb[0] @ t, wb[1] @ t), (a, c))


def test_masked_step_adapts_only_selected_units():
  episode = _linear_episode(2)
  learner = algorithms.mtnet(_linear_model(), inner_lr=LR, inner_steps=1)
  theta = _random_maps_theta(learner, episode, seed=1)
  theta["tnet"]["logits"] = {"layer": np.array([4.0, -4.0])}
  key = jax.random.key(7)
  masks = sample_masks(theta["tnet"]["logits"], key, 1.0)
  m = np.asarray(masks["layer"])
  assert set(m.tolist()) <= {0.0, 1.0}
  t = theta["tnet"]["T"]["layer"]
  w, b = theta["params"]["layer"]["kernel"], theta["params"]["layer"]["bias"]
  a, c = _np_step(w @ t, b @ t, episode.support, t.T @ (m[:, None] * t))
  got = _jit(learner.adapt)(theta, episode.support, key).args[0]["layer"]
  _close((got["kernel"], got["bias"]), (a, c))
  # In W's coordinates, the columns (output units) with mask 0 did not move.
  w_new, b_new = a @ np.linalg.inv(t), c @ np.linalg.inv(t)
  off = m == 0
  np.testing.assert_allclose(w_new[:, off], w[:, off], atol=1e-10)
  np.testing.assert_allclose(b_new[off], b[off], atol=1e-10)
  assert np.all(np.abs(w_new[:, ~off] - w[:, ~off]) > 1e-8)


def test_masks_are_bernoulli_with_straight_through_gradient():
  zeta = jnp.array([-1.0, 0.0, 2.0])
  keys = jax.random.split(jax.random.key(0), 4000)
  draws = jax.vmap(lambda k: sample_masks({"l": zeta}, k, 1.0)["l"])(keys)
  assert set(np.unique(draws).tolist()) == {0.0, 1.0}
  p = jax.nn.sigmoid(zeta)
  se = np.sqrt(p * (1 - p) / len(keys))
  np.testing.assert_array_less(np.abs(draws.mean(0) - p), 4 * se)
  # Gradient of the soft sample at the same noise, at temperature 0.5.
  key = jax.random.key(5)
  grad = jax.grad(lambda z: sample_masks({"l": z}, key, 0.5)["l"].sum())(zeta)
  g = jax.random.gumbel(jax.random.split(key, 1)[0], (2, 3), zeta.dtype)
  soft = lambda z: jax.nn.sigmoid((z + g[0] - g[1]) / 0.5).sum()
  _close(grad, jax.grad(soft)(zeta))


def test_meta_gradient_of_maps_matches_finite_differences():
  episode = _linear_episode(3)
  learner = algorithms.mtnet(_linear_model(), inner_lr=LR, inner_steps=2, logit_init=1.0)
  theta = _random_maps_theta(learner, episode, seed=2)
  key = jax.random.key(1)
  grad = _outputs(learner)(theta, episode, key)[1]
  loss = _jit(lambda t: learner.meta_loss(t, episode, key)[0])
  eps = 1e-6
  for i, j in [(0, 0), (0, 1), (1, 0)]:
    bump = np.zeros((D_OUT, D_OUT))
    bump[i, j] = eps

    def at(delta):
      return {
        **theta,
        "tnet": {**theta["tnet"], "T": {"layer": theta["tnet"]["T"]["layer"] + delta}},
      }

    fd = (float(loss(at(bump))) - float(loss(at(-bump)))) / (2 * eps)
    np.testing.assert_allclose(grad["tnet"]["T"]["layer"][i, j], fd, rtol=1e-6, atol=1e-9)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="temperature"):
    algorithms.mtnet(MLP(hidden=(4,)), temperature=0.0)
  with pytest.raises(ValueError, match="inner_lr"):
    algorithms.tnet(MLP(hidden=(4,)), inner_lr=-1.0)
  with pytest.raises(ValueError, match="inner_steps"):
    algorithms.tnet(MLP(hidden=(4,)), inner_steps=-1)
  with pytest.raises(ValueError, match="no layer"):
    model = Model(lambda k, x: {"scale": jnp.ones(())}, lambda p, x: p["scale"] * x)
    algorithms.tnet(model).init(jax.random.key(0), _linear_episode())
