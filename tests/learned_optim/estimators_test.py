"""TBPTT, ES and PES meta-gradients against closed forms.

Two meta-objectives with exact gradients:

- a linear system `x_{t+1} = A x_t + B theta` with loss `1/2 ||x_t - y||^2`:
  the meta-loss is quadratic in theta, so antithetic ES and PES are unbiased
  for its gradient at any sigma (the smoothing adds a constant);
- gradient descent on a quadratic with a learned step size (`step_size`),
  whose truncated and full gradients are known in closed form.

Monte Carlo checks draw M independent estimates (fixed keys) and require the
mean to be within 4 standard errors of the expected value, with a standard
error small against that value, so the check has power.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metalearn import core
from metalearn.learned_optim import (
  Unrolled,
  estimator,
  estimators,
  lstm_meta_learner,
  sample_quadratics,
  step_size,
)

UNROLL, TRUNCATION = 12, 3
A = np.array([[0.9, 0.2], [-0.1, 0.8]])
B = np.array([[0.5, -0.3, 0.2], [0.1, 0.4, -0.6]])
Y = np.array([1.0, -2.0])
THETA = np.array([0.3, -0.2, 0.5])


def _linear_problem(truncation=TRUNCATION):
  def trunc(theta, x, task):
    del task

    def step(x, _):
      x = jnp.asarray(A) @ x + jnp.asarray(B) @ theta
      return x, 0.5 * jnp.sum((x - Y) ** 2)

    x, losses = jax.lax.scan(step, x, None, length=truncation)
    return x, jnp.sum(losses) / UNROLL

  init = lambda theta, task: jnp.zeros(2, jnp.result_type(theta))
  return Unrolled(init, trunc, UNROLL // truncation)


def _linear_closed_form():
  """x_t = M_t theta (x_0 = 0): the exact gradient (1/T) sum_t M_t^T (M_t theta - y)."""
  m, grad = np.zeros((2, 3)), np.zeros(3)
  for _ in range(UNROLL):
    m = A @ m + B
    grad += m.T @ (m @ THETA - Y)
  return grad / UNROLL


def _samples(meta_grad, theta, num, seed=0):
  keys = jax.random.split(jax.random.key(seed), num)
  grads, _ = jax.jit(jax.vmap(meta_grad, in_axes=(None, None, 0)))(theta, None, keys)
  return np.asarray(grads).reshape(num, -1)


def _assert_unbiased(samples, expected, max_relative_se=0.05):
  samples = samples.reshape(len(samples), -1)
  expected = np.reshape(expected, -1)
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / np.sqrt(len(samples))
  assert np.all(se < max_relative_se * np.linalg.norm(expected)), (se, expected)
  np.testing.assert_array_less(np.abs(mean - expected), 4 * se + 1e-12)


@pytest.mark.usefixtures("x64")
def test_linear_closed_form_is_the_full_unroll_gradient_and_tbptt_is_biased():
  problem = _linear_problem()
  theta = jnp.asarray(THETA)
  expected = _linear_closed_form()
  full = jax.grad(lambda t: estimators.full_loss(problem, t, None)[0])(theta)
  np.testing.assert_allclose(full, expected, rtol=1e-12)
  whole = estimator("tbptt", _linear_problem(UNROLL))(theta, None, None)[0]  # one truncation
  np.testing.assert_allclose(whole, expected, rtol=1e-12)
  cut = estimator("tbptt", problem)(theta, None, None)[0]
  assert np.linalg.norm(cut - expected) > 0.1 * np.linalg.norm(expected)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", ["es", "pes"])
@pytest.mark.parametrize("sigma", [0.05, 1.0])
def test_es_and_pes_are_unbiased_on_a_quadratic_meta_objective(name, sigma):
  """At any sigma, since the meta-loss is quadratic in theta (and in each truncation's theta)."""
  meta_grad = estimator(name, _linear_problem(), sigma=sigma, num_pairs=4)
  samples = _samples(meta_grad, jnp.asarray(THETA), 4000)
  _assert_unbiased(samples, _linear_closed_form())


@pytest.mark.usefixtures("x64")
def test_step_size_closed_form_matches_autodiff_and_truncated_backpropagation():
  h, x0 = jnp.asarray(step_size.CURVATURES), jnp.ones(2)
  problem = step_size.step_size_problem(h, x0, unroll=100, truncation=10)
  for eta in (0.5, 1.08, 1.5):
    theta = jnp.log(jnp.asarray(eta))
    loss, grad, truncated = step_size.closed_form(h, x0, theta, unroll=100, truncation=10)
    value, g = jax.value_and_grad(lambda t: estimators.full_loss(problem, t, None)[0])(theta)
    np.testing.assert_allclose(value, loss, rtol=1e-10)
    np.testing.assert_allclose(g, grad, rtol=1e-9)
    np.testing.assert_allclose(estimator("tbptt", problem)(theta, None, None)[0], truncated, 1e-9)


@pytest.mark.usefixtures("x64")
def test_pes_over_many_truncations_equals_full_unroll_es_where_tbptt_has_the_wrong_sign():
  """eta = 1.08: L still falls with eta (optimum 1.126), the truncated gradient says it rises.

  PES over 20 truncations of 5 steps and ES on the whole unroll agree in
  expectation, and both estimate the true gradient (sigma small: the
  smoothing changes the gradient by O(sigma^2), well inside the tolerance).
  """
  h, x0 = jnp.asarray(step_size.CURVATURES), jnp.ones(2)
  problem = step_size.step_size_problem(h, x0, unroll=100, truncation=5)
  theta = jnp.log(jnp.asarray(1.08))
  _, grad, truncated = step_size.closed_form(h, x0, theta, unroll=100, truncation=5)
  assert grad < 0 < truncated
  pes = _samples(estimator("pes", problem, sigma=0.003, num_pairs=8), theta, 3000, seed=1)
  es = _samples(estimator("es", problem, sigma=0.003, num_pairs=8), theta, 3000, seed=2)
  se = np.sqrt(pes.var(ddof=1) / len(pes) + es.var(ddof=1) / len(es))
  assert abs(pes.mean() - es.mean()) < 4 * se
  assert se < 0.1 * abs(grad)
  _assert_unbiased(pes, grad, max_relative_se=0.1)
  _assert_unbiased(es, grad, max_relative_se=0.1)
  assert abs(pes.mean() - truncated) > 20 * se


@pytest.mark.usefixtures("x64")
def test_lstm_tbptt_meta_grad_is_the_gradient_of_the_truncated_meta_loss():
  task = jax.tree_util.tree_map(lambda a: a[0], sample_quadratics(jax.random.key(0), 1, dim=3))
  learner = lstm_meta_learner(unroll=6, truncation=2, hidden=4, scale=1.0)
  theta = learner.init(jax.random.key(1), task)
  (loss, metrics), expected = jax.value_and_grad(learner.meta_loss, has_aux=True)(
    theta, task, jax.random.key(0)
  )
  grads, grad_metrics = learner.meta_grad(theta, task, jax.random.key(0))
  np.testing.assert_allclose(ravel_pytree(grads)[0], ravel_pytree(expected)[0], rtol=1e-10)
  np.testing.assert_allclose(grad_metrics["loss"], loss, rtol=1e-12)
  np.testing.assert_allclose(grad_metrics["final_loss"], metrics["final_loss"], rtol=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", ["es", "pes"])
def test_lstm_es_and_pes_estimate_the_full_second_order_gradient(name):
  """ES/PES differentiate nothing, so they estimate the full unroll's (second-order) gradient.

  8,192 antithetic pairs on a 3-d quadratic and an LSTM of 3 units (about 100
  weights): the estimate points the way of the exact gradient (cosine > 0.95)
  and has its norm within 20%.
  """
  task = jax.tree_util.tree_map(lambda a: a[0], sample_quadratics(jax.random.key(2), 1, dim=3))
  make = lambda **kw: lstm_meta_learner(unroll=8, hidden=3, scale=0.1, preprocess=False, **kw)
  theta = make(truncation=8).init(jax.random.key(3), task)
  exact = ravel_pytree(
    jax.grad(lambda t: make(truncation=8, second_order=True).meta_loss(t, task, None)[0])(theta)
  )[0]
  learner = make(truncation=2, estimator=name, sigma=1e-3, num_pairs=8192)
  estimate = ravel_pytree(jax.jit(learner.meta_grad)(theta, task, jax.random.key(4))[0])[0]
  cosine = estimate @ exact / (np.linalg.norm(estimate) * np.linalg.norm(exact))
  assert cosine > 0.95
  np.testing.assert_allclose(np.linalg.norm(estimate), np.linalg.norm(exact), rtol=0.2)


@pytest.mark.parametrize("name", ["tbptt", "es", "pes"])
def test_each_estimator_trains_through_the_meta_step(name):
  """vmap over tasks (make_meta_step) of vmap over perturbations: finite, theta-shaped, moves."""
  learner = lstm_meta_learner(unroll=4, truncation=2, hidden=3, estimator=name, num_pairs=2)
  optimizer = optax.adam(1e-2)
  tasks = sample_quadratics(jax.random.key(0), 4, dim=3)
  state = core.init_state(learner, optimizer, jax.random.key(1), core.task(tasks, 0))
  new, metrics = jax.jit(core.make_meta_step(learner, optimizer, strategy="vmap"))(state, tasks)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 0
  assert set(metrics) >= {"loss", "initial_loss", "final_loss"}
  before, after = ravel_pytree(state.theta)[0], ravel_pytree(new.theta)[0]
  assert before.shape == after.shape and float(jnp.max(jnp.abs(after - before))) > 0


def test_estimator_arguments_are_checked():
  problem = _linear_problem()
  with pytest.raises(ValueError, match="estimator must be one of tbptt, es, pes"):
    estimator("reinforce", problem)
  with pytest.raises(ValueError, match="sigma must be a number > 0"):
    estimator("es", problem, sigma=0.0)
  with pytest.raises(ValueError, match="num_pairs must be an int >= 1"):
    estimator("pes", problem, num_pairs=0)
  with pytest.raises(ValueError, match="estimator must be one of"):
    lstm_meta_learner(estimator="ES")
