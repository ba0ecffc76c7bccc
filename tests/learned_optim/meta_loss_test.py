"""Truncated-BPTT meta-training of the LSTM optimizer, against a hand-written truncated objective.

The truncated meta-gradient is not the gradient of the meta-loss; it is the
gradient of a surrogate that holds, for each truncation j, its starting point
(theta_s, LSTM state) fixed at the values of the reference run, and, with
`second_order=False`, also the optimizee gradients fed to the LSTM. That
surrogate is written below with Python loops and no `stop_gradient`, and its
central finite differences in float64 are the reference for `jax.grad` of the
learner's meta-loss (`lax.scan`s with `stop_gradient`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metalearn import core
from metalearn.learned_optim import (
  evaluate_optimizer,
  lstm_meta_learner,
  lstm_optimizer,
  quadratic_loss,
  sample_quadratics,
)

DIM, HIDDEN, SCALE = 2, 4, 1.0


def _setup(seed=0):
  task = jax.tree_util.tree_map(
    lambda a: jnp.asarray(a[0], jnp.float64),
    sample_quadratics(jax.random.key(seed), 1, dim=DIM, theta_scale=1.0),
  )
  learner = lstm_meta_learner(unroll=6, truncation=3, hidden=HIDDEN, scale=SCALE)
  theta = jax.tree_util.tree_map(
    lambda a: jnp.asarray(a, jnp.float64), learner.init(jax.random.key(seed), task)
  )
  return task, theta


def _reference_run(theta, task, unroll):
  """theta_t, LSTM state_t and grad f(theta_t), t = 0 ... unroll, by a Python loop."""
  opt = lstm_optimizer(theta, scale=SCALE)
  phi, state = task["theta0"], opt.init(task["theta0"])
  run = []
  for _ in range(unroll + 1):
    g = jax.grad(quadratic_loss)(phi, task)
    run.append((phi, state, g))
    updates, state = opt.update(g, state, phi)
    phi = optax.apply_updates(phi, updates)
  return run


def _surrogate(theta, task, run, unroll, truncation, second_order):
  """(1/T) sum_t f(theta_t), each truncation restarted from the reference run's point."""
  opt = lstm_optimizer(theta, scale=SCALE)
  total = 0.0
  for s in range(0, unroll, truncation):
    phi, state, _ = run[s]
    for t in range(s, s + truncation):
      g = jax.grad(quadratic_loss)(phi, task) if second_order else run[t][2]
      updates, state = opt.update(g, state, phi)
      phi = optax.apply_updates(phi, updates)
      total = total + quadratic_loss(phi, task)
  return total / unroll


def _central_differences(fn, theta, eps=1e-6):
  flat, unravel = ravel_pytree(theta)
  basis = jnp.eye(flat.size, dtype=flat.dtype)
  at = jax.jit(jax.vmap(lambda d: fn(unravel(flat + d))))
  return unravel((at(eps * basis) - at(-eps * basis)) / (2 * eps))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("truncation", [3, 6])
def test_truncated_meta_gradient_matches_finite_differences(truncation, second_order):
  unroll = 6
  task, theta = _setup()
  learner = lstm_meta_learner(
    unroll=unroll, truncation=truncation, second_order=second_order, hidden=HIDDEN, scale=SCALE
  )
  (loss, metrics), grads = jax.jit(
    jax.value_and_grad(lambda t: learner.meta_loss(t, task, jax.random.key(0)), has_aux=True)
  )(theta)
  run = _reference_run(theta, task, unroll)
  surrogate = lambda t: _surrogate(t, task, run, unroll, truncation, second_order)
  # The same objective: its value, and its final and initial losses.
  np.testing.assert_allclose(loss, surrogate(theta), rtol=1e-12)
  np.testing.assert_allclose(metrics["final_loss"], quadratic_loss(run[unroll][0], task), 1e-12)
  np.testing.assert_allclose(metrics["initial_loss"], quadratic_loss(task["theta0"], task), 1e-12)
  fd = _central_differences(surrogate, theta)
  for (path, g), d in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(fd), strict=True
  ):
    np.testing.assert_allclose(g, d, rtol=1e-6, atol=1e-9, err_msg=jax.tree_util.keystr(path))
  assert float(optax.global_norm(grads)) > 1e-3


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("second_order", [False, True])
def test_one_truncation_is_the_full_unroll_gradient_and_shorter_ones_are_not(second_order):
  """truncation = unroll: jax.grad of the plain unrolled loop (no stops between steps)."""
  unroll = 6
  task, theta = _setup(1)

  def full(t):
    opt = lstm_optimizer(t, scale=SCALE)
    phi, state, total = task["theta0"], opt.init(task["theta0"]), 0.0
    for _ in range(unroll):
      g = jax.grad(quadratic_loss)(phi, task)
      g = g if second_order else jax.lax.stop_gradient(g)
      updates, state = opt.update(g, state, phi)
      phi = optax.apply_updates(phi, updates)
      total = total + quadratic_loss(phi, task)
    return total / unroll

  def learner_grad(truncation):
    learner = lstm_meta_learner(
      unroll=unroll, truncation=truncation, second_order=second_order, hidden=HIDDEN, scale=SCALE
    )
    return jax.grad(lambda t: learner.meta_loss(t, task, jax.random.key(0))[0])(theta)

  expected, _ = ravel_pytree(jax.grad(full)(theta))
  whole, _ = ravel_pytree(learner_grad(unroll))
  np.testing.assert_allclose(whole, expected, rtol=1e-10, atol=1e-13)
  cut, _ = ravel_pytree(learner_grad(2))
  assert float(jnp.linalg.norm(cut - expected)) > 1e-3 * float(jnp.linalg.norm(expected))


def test_lengths_are_checked():
  with pytest.raises(ValueError, match="multiple of truncation"):
    lstm_meta_learner(unroll=10, truncation=3)
  with pytest.raises(ValueError, match="truncation must be an int >= 1"):
    lstm_meta_learner(unroll=10, truncation=0)


@pytest.mark.usefixtures("x64")
def test_adapt_is_the_optimizee_after_the_unroll():
  tasks = jax.tree_util.tree_map(
    lambda a: jnp.asarray(a, jnp.float64), sample_quadratics(jax.random.key(4), 3)
  )
  learner = lstm_meta_learner(unroll=10, truncation=5, scale=SCALE)
  theta = jax.tree_util.tree_map(
    lambda a: jnp.asarray(a, jnp.float64), learner.init(jax.random.key(0), core.task(tasks, 0))
  )
  curves = evaluate_optimizer(lstm_optimizer(theta, scale=SCALE), tasks, 10)
  for i in range(3):
    task = core.task(tasks, i)
    phi = learner.adapt(theta, task, jax.random.key(0))
    np.testing.assert_allclose(quadratic_loss(phi, task), curves[i, -1], rtol=1e-10)
    loss, _ = learner.meta_loss(theta, task, jax.random.key(0))
    np.testing.assert_allclose(loss, jnp.mean(curves[i, 1:]), rtol=1e-10)  # the mean over t >= 1


def test_meta_training_through_the_meta_step_reduces_the_meta_loss():
  """Adam on fresh 10-d quadratics every step (16 tasks, 100 steps, truncations of 5 in 20).

  The meta-loss of 64 fixed held-out tasks falls by more than half, the
  training meta-loss averaged over the last 20 steps is below half of the
  untrained optimizer's held-out value, and the trained LSTM beats SGD at the
  best of four learning rates on the held-out tasks (mean loss over 20 steps).
  """
  learner = lstm_meta_learner(unroll=20, truncation=5)
  optimizer = optax.adam(3e-3)
  sample = jax.jit(lambda key: sample_quadratics(key, 16))
  example = core.task(sample(jax.random.key(1)), 0)
  state = core.init_state(learner, optimizer, jax.random.key(0), example)
  step = jax.jit(core.make_meta_step(learner, optimizer))
  held_out = sample_quadratics(jax.random.key(10**6), 64)
  evaluate = jax.jit(
    lambda theta: jnp.mean(
      jax.vmap(lambda t: learner.meta_loss(theta, t, jax.random.key(0))[0])(held_out)
    )
  )
  before = float(evaluate(state.theta))
  losses = []
  for i in range(100):
    state, metrics = step(state, sample(jax.random.key(100 + i)))
    losses.append(float(metrics["loss"]))
  after = float(evaluate(state.theta))
  assert after < 0.5 * before
  assert np.mean(losses[-20:]) < 0.5 * before
  # The meta-loss is the mean of f(theta_t), t = 1 ... 20: the same number for SGD.
  sgd = [
    float(jnp.mean(evaluate_optimizer(optax.sgd(lr), held_out, 20)[:, 1:]))
    for lr in (0.005, 0.01, 0.015, 0.02)
  ]
  assert after < min(sgd)
