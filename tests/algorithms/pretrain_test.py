"""The pretraining baseline against closed forms on linear least squares (float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import algorithms, evaluation
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


def _episode(seed=0):
  """One task: 3 real of 5 support rows, 7 real of 8 query rows; masked rows are garbage."""
  rng = np.random.default_rng(seed)

  def split(n, masked):
    x, y = rng.normal(size=(n, D_IN)), rng.normal(size=(n, D_OUT))
    mask = np.ones(n, bool)
    mask[masked] = False
    x[masked] *= 100.0
    return ep.Split(x, y, mask)

  return ep.Episode(split(5, [0, 3]), split(8, [6]))


def _rows(*splits):
  return (
    np.concatenate([s.x[s.mask] for s in splits]),
    np.concatenate([s.y[s.mask] for s in splits]),
  )


def _np_mse(w, *splits):
  x, y = _rows(*splits)
  return np.sum((x @ w - y) ** 2) / len(x)


def _np_sgd(w, split, lr, steps):
  x, y = _rows(split)
  for _ in range(steps):
    w = w - lr * 2.0 / len(x) * x.T @ (x @ w - y)
  return w


def test_meta_loss_is_mse_on_merged_support_and_query():
  episode = _episode()
  w = np.random.default_rng(1).normal(size=(D_IN, D_OUT))
  learner = algorithms.pretrain(LINEAR, inner_lr=0.1, inner_steps=3)
  theta = {"params": {"w": jnp.asarray(w)}}
  loss_fn = lambda t, e: learner.meta_loss(t, e, None)[0]
  loss, grad = _jit(jax.value_and_grad(loss_fn))(theta, episode)

  want = _np_mse(w, episode.support, episode.query)
  np.testing.assert_allclose(loss, want, rtol=RTOL)
  # One pool of 10 real rows, not the mean of the support and query losses (3 vs 7 rows).
  assert not np.isclose(want, (_np_mse(w, episode.support) + _np_mse(w, episode.query)) / 2)
  x, y = _rows(episode.support, episode.query)
  np.testing.assert_allclose(grad["params"]["w"], 2.0 / len(x) * x.T @ (x @ w - y), rtol=RTOL)


def test_adapt_is_k_sgd_steps_on_the_support_set():
  lr, k = 0.1, 3
  episode = _episode(seed=2)
  w = np.random.default_rng(3).normal(size=(D_IN, D_OUT))
  learner = algorithms.pretrain(LINEAR, inner_lr=lr, inner_steps=k)
  one_step = algorithms.pretrain(LINEAR, inner_lr=lr, inner_steps=1)
  evaluate = evaluation.regression(
    evaluation.curve(algorithms.pretrain, (0, 1, 4), LINEAR, inner_lr=lr)
  )
  theta = {"params": {"w": jnp.asarray(w)}}

  @_jit
  def run(theta, episode):
    return (
      learner.adapt(theta, episode.support, None).args[0],
      one_step.adapt(theta, episode.support, None).args[0],
      evaluate(theta, episode, None),
    )

  phi, phi_1, metrics = run(theta, episode)
  np.testing.assert_allclose(phi["w"], _np_sgd(w, episode.support, lr, k), rtol=RTOL)
  np.testing.assert_allclose(phi_1["w"], _np_sgd(w, episode.support, lr, 1), rtol=RTOL)
  assert set(metrics) == {"mse@0", "mse@1", "mse@4"}
  for steps in (0, 1, 4):
    want = _np_mse(_np_sgd(w, episode.support, lr, steps), episode.query)
    np.testing.assert_allclose(metrics[f"mse@{steps}"], want, rtol=RTOL)
