"""The quadratic task family and `evaluate_optimizer`, against numpy and hand-stepped optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import core, training
from metalearn.learned_optim import (
  evaluate_optimizer,
  lstm_init,
  lstm_optimizer,
  quadratic_loss,
  sample_quadratics,
)


def test_samples_are_shaped_keyed_and_distributed_as_the_paper_says():
  tasks = sample_quadratics(jax.random.key(0), 2000)
  assert tasks["W"].shape == (2000, 10, 10) and tasks["y"].shape == (2000, 10)
  assert tasks["theta0"].shape == (2000, 10)
  assert all(x.dtype == jnp.float32 for x in tasks.values())
  # W and y i.i.d. N(0, 1) (200,000 and 20,000 draws), theta0 N(0, 0.01^2).
  w, y, t0 = (np.asarray(tasks[k]) for k in ("W", "y", "theta0"))
  assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01
  assert abs(y.mean()) < 0.03 and abs(y.std() - 1.0) < 0.02
  assert abs(t0.mean()) < 3e-4 and abs(t0.std() - 0.01) < 2e-4
  # Independent of each other: the correlation of W[0, 0] and y[0] across tasks is ~0.
  assert abs(np.corrcoef(w[:, 0, 0], y[:, 0])[0, 1]) < 0.1
  again = sample_quadratics(jax.random.key(0), 2000)
  np.testing.assert_array_equal(tasks["W"], again["W"])
  assert not np.allclose(sample_quadratics(jax.random.key(1), 2)["W"], tasks["W"][:2])


def test_a_device_sampler_of_quadratics():
  sampler = training.on_device(sample_quadratics)
  key = jax.random.key(3)
  batch = training.sampling.device_batch(sampler, key, 4)
  for k, v in sample_quadratics(key, 4).items():  # jitted there, eager here: float32 rounding
    np.testing.assert_allclose(batch[k], v, rtol=1e-6, atol=1e-9)
  assert core.num_tasks(batch) == 4


@pytest.mark.usefixtures("x64")
def test_loss_and_gradient_closed_form():
  task = {
    k: np.asarray(v, np.float64)[0] for k, v in sample_quadratics(jax.random.key(0), 1).items()
  }
  theta = np.random.default_rng(0).normal(size=10)
  r = task["W"] @ theta - task["y"]
  np.testing.assert_allclose(quadratic_loss(jnp.asarray(theta), task), r @ r, rtol=1e-13)
  np.testing.assert_allclose(
    jax.grad(quadratic_loss)(jnp.asarray(theta), task), 2 * task["W"].T @ r, rtol=1e-12
  )


def _f64_tasks(n, seed=0, dim=10):
  return jax.tree_util.tree_map(
    lambda a: jnp.asarray(a, jnp.float64), sample_quadratics(jax.random.key(seed), n, dim=dim)
  )


@pytest.mark.usefixtures("x64")
def test_evaluating_sgd_is_gradient_descent_in_numpy():
  lr, steps, tasks = 0.01, 15, _f64_tasks(3)
  losses = jax.jit(lambda t: evaluate_optimizer(optax.sgd(lr), t, steps))(tasks)
  assert losses.shape == (3, steps + 1)
  for i in range(3):
    w, y, theta = (np.asarray(tasks[k][i]) for k in ("W", "y", "theta0"))
    expected = []
    for _ in range(steps + 1):
      r = w @ theta - y
      expected.append(r @ r)
      theta = theta - lr * 2 * w.T @ r
    np.testing.assert_allclose(losses[i], expected, rtol=1e-11)


@pytest.mark.usefixtures("x64")
def test_evaluating_the_lstm_equals_stepping_optax_by_hand():
  steps, tasks = 8, _f64_tasks(3, seed=1)
  theta = jax.tree_util.tree_map(
    lambda a: jnp.asarray(a, jnp.float64), lstm_init(jax.random.key(0))
  )
  opt = lstm_optimizer(theta, scale=1.0)
  losses = jax.jit(lambda t: evaluate_optimizer(opt, t, steps))(tasks)
  for i in range(3):
    task = core.task(tasks, i)
    phi = task["theta0"]
    state = opt.init(phi)
    expected = []
    for _ in range(steps):
      expected.append(quadratic_loss(phi, task))
      updates, state = opt.update(jax.grad(quadratic_loss)(phi, task), state, phi)
      phi = optax.apply_updates(phi, updates)
    expected.append(quadratic_loss(phi, task))
    np.testing.assert_allclose(losses[i], np.array(expected), rtol=1e-10)
  # The LSTM is not a no-op: the losses move.
  assert float(jnp.abs(losses[:, -1] - losses[:, 0]).min()) > 1e-3
