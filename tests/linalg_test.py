"""metalearn.linalg against numpy/scipy, and the programs that must hold no LAPACK call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg as sla
from scipy import stats

from metalearn import core, linalg, probabilistic
from metalearn.data import gp


def _spd(rng, n, dtype=np.float64):
  a = rng.normal(size=(n, n))
  return (a @ a.T + n * np.eye(n)).astype(dtype)


@pytest.mark.parametrize("n", [1, 5, 40])
def test_cholesky_matches_numpy(n):
  a = _spd(np.random.default_rng(n), n)
  with jax.enable_x64(True):
    low = linalg.cholesky(jnp.asarray(a))
    np.testing.assert_allclose(low, np.linalg.cholesky(a), rtol=1e-10, atol=1e-12)
  low32 = linalg.cholesky(jnp.asarray(a, jnp.float32))
  assert low32.dtype == jnp.float32
  np.testing.assert_allclose(low32, np.linalg.cholesky(a), rtol=2e-4, atol=2e-5)


def test_cholesky_reads_only_the_lower_triangle_and_gives_nan_when_not_positive_definite():
  a = _spd(np.random.default_rng(0), 6)
  junk = np.tril(a) + np.triu(np.full_like(a, 7.0), 1)
  with jax.enable_x64(True):
    np.testing.assert_allclose(linalg.cholesky(jnp.asarray(junk)), np.linalg.cholesky(a))
    assert np.isnan(linalg.cholesky(jnp.asarray(-a))).any()


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("rhs", [(7,), (7, 3)])
def test_solve_triangular_matches_scipy(transpose, rhs):
  rng = np.random.default_rng(1)
  low = np.linalg.cholesky(_spd(rng, 7))
  b = rng.normal(size=rhs)
  with jax.enable_x64(True):
    got = linalg.solve_triangular(jnp.asarray(low), jnp.asarray(b), transpose=transpose)
  want = sla.solve_triangular(low, b, lower=True, trans=1 if transpose else 0)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_cho_solve_and_log_density_match_numpy_and_scipy():
  rng = np.random.default_rng(2)
  a, b, r = _spd(rng, 9), rng.normal(size=(9, 2)), rng.normal(size=9)
  with jax.enable_x64(True):
    low = linalg.cholesky(jnp.asarray(a))
    np.testing.assert_allclose(linalg.cho_solve(low, jnp.asarray(b)), np.linalg.solve(a, b))
    got = linalg.mvn_log_prob(jnp.asarray(r), low)
  np.testing.assert_allclose(got, stats.multivariate_normal(np.zeros(9), a).logpdf(r), rtol=1e-10)


def test_gradient_through_the_loops_is_the_closed_form():
  # d/dA log det A = A^{-1} (A symmetric; the factor reads the lower triangle only, so the
  # gradient w.r.t. a symmetric parametrisation A = S + S^T is 2 A^{-1}).
  a = _spd(np.random.default_rng(3), 5)
  log_det = lambda s: 2.0 * jnp.sum(jnp.log(jnp.diagonal(linalg.cholesky(s + s.T))))
  with jax.enable_x64(True):
    grad = jax.grad(log_det)(jnp.asarray(a / 2))
  np.testing.assert_allclose(grad, 2.0 * np.linalg.inv(a), rtol=1e-8)


def _custom_calls(fn, *args) -> str:
  text = jax.jit(fn).lower(*args).as_text()
  return " ".join(line for line in text.splitlines() if "custom_call" in line)


def test_the_gp_programs_hold_no_lapack_call():
  """The GP sampler and the evaluator of the exact GP must not call LAPACK.

  Two batched LAPACK kernels at once (here the diagonal GP's float32 factorisation
  beside the exact float64 one, over 1,000 tasks) hung XLA:CPU on a 2-core machine in
  about half of the runs with jaxlib 0.10.2 (see metalearn.linalg).
  """
  kernel = gp.get_kernel("eq")
  key = jax.random.PRNGKey(0)
  assert "lapack" not in _custom_calls(lambda k: gp.sample_tasks(k, 8, kernel=kernel), key)
  tasks = gp.sample_tasks(key, 8, kernel=kernel)
  learner = probabilistic.diagonal_gp(kernel)
  step = core.make_eval_step(probabilistic.gp_evaluator(learner, kernel))
  calls = _custom_calls(step, learner.init(None, None), tasks, key)
  assert "lapack" not in calls, calls[:500]


def test_the_laplace_posterior_and_the_rl_baseline_hold_no_lapack_call():
  from metalearn.algorithms.llama import laplace_posterior, variance
  from metalearn.rl import rollout

  def laplace(jac, jac_x):
    return variance(laplace_posterior(jac, jnp.asarray(0.3), 2.0), jac_x)

  jac, jac_x = jnp.ones((4, 6, 10)), jnp.ones((4, 3, 10))
  assert "lapack" not in _custom_calls(jax.vmap(laplace), jac, jac_x)
  obs, ret, mask = jnp.ones((4, 5, 7, 2)), jnp.ones((4, 5, 7)), jnp.ones((4, 5, 7))
  assert "lapack" not in _custom_calls(jax.vmap(rollout.linear_baseline), obs, ret, mask)
