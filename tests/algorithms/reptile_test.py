"""Reptile against closed forms on linear least squares (float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import algorithms, core
from metalearn import episodes as ep
from metalearn.models import Model

pytestmark = pytest.mark.usefixtures("x64")

D_IN, D_OUT = 3, 2
RTOL = 1e-9
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

LINEAR = Model(
  init=lambda key, x: {"w": jax.random.normal(key, (x.shape[-1], D_OUT), dtype=x.dtype)},
  apply=lambda params, x: x @ params["w"],
)


def _episodes(num_tasks, seed=0, n_s=8, n_q=5):
  """Linear-regression tasks `[T, n, ...]`; support rows 2 and 5 are masked-out garbage."""
  rng = np.random.default_rng(seed)

  def split(n, masked):
    x = rng.normal(size=(num_tasks, n, D_IN))
    y = rng.normal(size=(num_tasks, n, D_OUT))
    mask = np.ones((num_tasks, n), bool)
    mask[:, masked] = False
    x[:, masked] *= 100.0
    return ep.Split(x, y, mask)

  return ep.Episode(split(n_s, [2, 5]), split(n_q, []))


def _np_sgd(w, split, lr, steps):
  """`steps` steps of gradient descent on the masked mse of a linear model."""
  x, y = split.x[split.mask], split.y[split.mask]
  for _ in range(steps):
    w = w - lr * 2.0 / len(x) * x.T @ (x @ w - y)
  return w


def _np_mse(w, split):
  x, y = split.x[split.mask], split.y[split.mask]
  return np.sum((x @ w - y) ** 2) / len(x)


def test_meta_grad_is_theta_minus_k_sgd_steps():
  lr, k = 0.1, 4
  episode = ep.task(_episodes(1), 0)
  w0 = np.random.default_rng(1).normal(size=(D_IN, D_OUT))
  learner = algorithms.reptile(LINEAR, inner_lr=lr, inner_steps=k)
  theta = {"params": {"w": jnp.asarray(w0)}}
  grad, metrics = _jit(lambda t, e: learner.meta_grad(t, e, None))(theta, episode)

  w_k = _np_sgd(w0, episode.support, lr, k)
  np.testing.assert_allclose(grad["params"]["w"], w0 - w_k, rtol=RTOL)
  # The same from the closed form w_k = w* + (I - lr H)^k (w_0 - w*), w* the least-squares fit.
  x, y = episode.support.x[episode.support.mask], episode.support.y[episode.support.mask]
  w_star = np.linalg.lstsq(x, y, rcond=None)[0]
  contraction = np.linalg.matrix_power(np.eye(D_IN) - lr * 2.0 / len(x) * x.T @ x, k)
  np.testing.assert_allclose(
    grad["params"]["w"], (w0 - w_star) - contraction @ (w0 - w_star), rtol=1e-8
  )
  assert np.linalg.norm(w0 - w_k) > 0.1  # the inner loop really moved

  # The reported loss is the query loss after adaptation, and equals meta_loss.
  np.testing.assert_allclose(metrics["loss"], _np_mse(w_k, episode.query), rtol=RTOL)
  loss, _ = _jit(lambda t, e: learner.meta_loss(t, e, None))(theta, episode)
  np.testing.assert_allclose(loss, metrics["loss"], rtol=RTOL)


def test_outer_sgd_step_moves_theta_towards_mean_phi():
  lr, k, eps, num_tasks = 0.1, 3, 0.25, 3
  episodes = _episodes(num_tasks, seed=2)
  learner = algorithms.reptile(LINEAR, inner_lr=lr, inner_steps=k)
  optimizer = optax.sgd(eps)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(episodes, 0))
  w0 = np.asarray(state.theta["params"]["w"])
  assert w0.dtype == np.float64

  new_state, metrics = _jit(core.make_meta_step(learner, optimizer))(state, episodes)

  phis = [_np_sgd(w0, ep.task(episodes, t).support, lr, k) for t in range(num_tasks)]
  want = w0 + eps * np.mean([phi - w0 for phi in phis], axis=0)
  np.testing.assert_allclose(new_state.theta["params"]["w"], want, rtol=RTOL)
  want_loss = np.mean([_np_mse(phi, ep.task(episodes, t).query) for t, phi in enumerate(phis)])
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=RTOL)
  assert float(metrics["nonfinite"]) == 0.0
