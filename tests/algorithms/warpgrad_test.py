"""WarpGrad against first-order MAML, against its meta-objective written out, and in closed form.

Float64 throughout. The linear task network is `y = x W + b` with a warp after it,
`y = (x W + b) Omega`; the mse loss is the masked mean over rows of the squared error.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import algorithms
from metalearn import episodes as ep
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP, Model, warped

pytestmark = pytest.mark.usefixtures("x64")

D_IN, D_OUT, LR, STEPS = 3, 2, 0.05, 3
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _close(a, b, rtol=1e-10, atol=1e-12):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


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
    mask[2] = False  # a padded row of garbage
    x = rng.normal(size=(n, D_IN))
    x[2] *= 100.0
    return ep.Split(x, rng.normal(size=(n, D_OUT)), mask)

  return ep.Episode(split(n_s), split(n_q))


def _warped_theta(learner, episode, seed=0):
  theta = learner.init(jax.random.key(seed), episode)
  rng = np.random.default_rng(seed)
  theta["warp"] = {"layer": np.eye(D_OUT) + 0.5 * rng.normal(size=(D_OUT, D_OUT))}
  return theta


def _mapped_loss(w, omega, split):
  """The warped linear network's loss, written out: `((x W + b) Omega)`."""
  pred = (split.x @ w["layer"]["kernel"] + w["layer"]["bias"]) @ omega["layer"]
  return ep.mse(pred, split)


def _trajectory(w, omega, split):
  """`[W_0, ..., W_K]` of warped SGD, by a Python loop."""
  points = [w]
  for _ in range(STEPS):
    g = jax.grad(_mapped_loss)(points[-1], omega, split)
    points.append(jax.tree_util.tree_map(lambda p, d: p - LR * d, points[-1], g))
  return points


def _outputs(learner):
  return _jit(lambda t, e, k: jax.value_and_grad(learner.meta_loss, has_aux=True)(t, e, k))


def test_identity_warps_give_first_order_maml():
  batch = Sinusoid(shots=5, queries=6).sample(np.random.default_rng(0), 1)
  f64 = lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a
  episode = jax.tree_util.tree_map(f64, ep.task(batch, 0))
  model = MLP(hidden=(6, 5))
  learner = algorithms.warpgrad(model, inner_lr=0.02, inner_steps=STEPS)
  fomaml = algorithms.fomaml(model, inner_lr=0.02, inner_steps=STEPS)
  key = jax.random.key(0)
  theta = learner.init(key, episode)
  _close(theta["warp"], warped.identity_maps(theta["params"]))
  (loss, metrics), grad = _outputs(learner)(theta, episode, key)
  (want_loss, want_metrics), want_grad = _outputs(fomaml)({"params": theta["params"]}, episode, key)
  assert float(metrics.pop("warp_objective")) > 0
  _close((loss, metrics, grad["params"]), (want_loss, want_metrics, want_grad["params"]))
  x = episode.query.x
  _close(
    learner.adapt(theta, episode.support, key)(x), fomaml.adapt(theta, episode.support, key)(x)
  )
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grad["warp"]))


def test_warp_gradient_is_the_trajectory_agnostic_objective():
  """grad_Omega of 1/K sum_k L_q(W_k - alpha grad L_s(W_k; Omega); Omega), the W_k constants."""
  episode = _linear_episode()
  learner = algorithms.warpgrad(_linear_model(), inner_lr=LR, inner_steps=STEPS)
  theta = _warped_theta(learner, episode)
  (loss, metrics), grad = _outputs(learner)(theta, episode, jax.random.key(0))

  points = [jax.device_get(p) for p in _trajectory(theta["params"], theta["warp"], episode.support)]

  def objective(omega, points):
    total = 0.0
    for w in points[:-1]:
      g = jax.grad(_mapped_loss)(w, omega, episode.support)
      stepped = jax.tree_util.tree_map(lambda p, d: p - LR * d, w, g)
      total = total + _mapped_loss(stepped, omega, episode.query)
    return total / STEPS

  want_j, want_warp = jax.value_and_grad(objective)(theta["warp"], points)
  _close((metrics["warp_objective"], grad["warp"]), (want_j, want_warp))
  # The query loss is scored at W_K, and the initialisation gets its gradient there (first order).
  want_loss, want_init = jax.value_and_grad(_mapped_loss)(points[-1], theta["warp"], episode.query)
  _close((loss, grad["params"]), (want_loss, want_init))

  # Backpropagating through the trajectory would give another gradient: the stop-gradient matters.
  def through(omega):
    return objective(omega, _trajectory(theta["params"], omega, episode.support))

  assert not np.allclose(jax.grad(through)(theta["warp"])["layer"], want_warp["layer"], rtol=1e-3)


def test_inner_loop_adapts_task_weights_only_a_preconditioned_step():
  """adapt = transform_layers(W_K, Omega), Omega as given; per step A' = A - a G_A O^T O."""
  episode = _linear_episode(1)
  learner = algorithms.warpgrad(_linear_model(), inner_lr=LR, inner_steps=STEPS)
  theta = _warped_theta(learner, episode, seed=1)
  got = _jit(learner.adapt)(theta, episode.support, jax.random.key(0)).args[0]
  w_k = _trajectory(theta["params"], theta["warp"], episode.support)[-1]
  _close(got, warped.transform_layers(w_k, theta["warp"]))

  # The same K steps as preconditioned SGD on the unwarped network (T-Net's closed form).
  omega = theta["warp"]["layer"]
  a = theta["params"]["layer"]["kernel"] @ omega
  c = theta["params"]["layer"]["bias"] @ omega
  x, y = episode.support.x[episode.support.mask], episode.support.y[episode.support.mask]
  for _ in range(STEPS):
    r = x @ a + c - y
    a, c = (
      a - LR * 2 / len(x) * x.T @ r @ omega.T @ omega,
      c - LR * 2 / len(x) * r.sum(0) @ omega.T @ omega,
    )
  _close((got["layer"]["kernel"], got["layer"]["bias"]), (a, c))


def test_zero_steps_and_bad_arguments():
  episode = _linear_episode(2)
  learner = algorithms.warpgrad(_linear_model(), inner_steps=0)
  theta = _warped_theta(learner, episode, seed=2)
  (loss, metrics), grad = _outputs(learner)(theta, episode, jax.random.key(0))
  assert float(metrics["warp_objective"]) == 0.0
  assert not np.any(grad["warp"]["layer"])  # no trajectory point, no signal for the warps
  _close(loss, _mapped_loss(theta["params"], theta["warp"], episode.query))
  with pytest.raises(ValueError, match="inner_lr"):
    algorithms.warpgrad(_linear_model(), inner_lr=0.0)
  with pytest.raises(ValueError, match="inner_steps"):
    algorithms.warpgrad(_linear_model(), inner_steps=1.5)
