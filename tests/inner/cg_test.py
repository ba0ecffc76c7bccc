"""Tests of the fixed-iteration linear solvers (conjugate gradient, Neumann series)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn.inner import cg


def x64():
  """float64 inside a `with` block (jax.experimental.enable_x64 where it still exists)."""
  enable = getattr(jax.experimental, "enable_x64", None)
  return enable() if enable is not None else jax.enable_x64(True)


def random_spd(rng: np.random.Generator, n: int, cond: float) -> np.ndarray:
  """A random symmetric positive-definite matrix with eigenvalues in [1, cond]."""
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eig = np.geomspace(1.0, cond, n)
  return (q * eig) @ q.T


def matvec_of(a):
  return lambda v: a @ v


def test_cg_solves_spd_system_to_tolerance():
  rng = np.random.default_rng(0)
  with x64():
    for n, cond in [(3, 10.0), (8, 100.0), (12, 1e3)]:
      a = random_spd(rng, n, cond)
      b = rng.normal(size=n)
      x, res = cg.conjugate_gradient(matvec_of(jnp.asarray(a)), jnp.asarray(b), num_steps=2 * n)
      x = np.asarray(x)
      assert x.dtype == np.float64
      np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
      true_res = np.linalg.norm(b - a @ x)
      assert true_res < 1e-8 * np.linalg.norm(b)
      assert float(res) < 1e-8 * np.linalg.norm(b)


def test_cg_error_decreases_with_iterations_and_is_exact_at_n():
  # In exact arithmetic CG terminates in n steps; the A-norm error decreases monotonically.
  rng = np.random.default_rng(1)
  n = 6
  a, b = random_spd(rng, n, 50.0), rng.normal(size=n)
  exact = np.linalg.solve(a, b)
  with x64():
    errors = []
    for k in range(1, n + 1):
      x = np.asarray(
        cg.conjugate_gradient(matvec_of(jnp.asarray(a)), jnp.asarray(b), num_steps=k).x
      )
      errors.append(float(np.sqrt((x - exact) @ a @ (x - exact))))
  assert all(e2 < e1 for e1, e2 in itertools.pairwise(errors))
  assert errors[-1] < 1e-9 * errors[0]


def test_cg_on_pytrees_equals_dense_solve():
  rng = np.random.default_rng(2)
  a = random_spd(rng, 5, 20.0).astype(np.float32)
  b = rng.normal(size=5).astype(np.float32)

  def to_tree(v):
    return {"w": v[:3].reshape(3, 1), "b": v[3:]}

  def from_tree(t):
    return jnp.concatenate([t["w"].reshape(-1), t["b"]])

  matvec = lambda t: to_tree(jnp.asarray(a) @ from_tree(t))
  x, res = cg.conjugate_gradient(matvec, to_tree(jnp.asarray(b)), num_steps=10)
  assert x["w"].shape == (3, 1) and x["b"].shape == (2,)
  np.testing.assert_allclose(from_tree(x), np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)
  assert np.isfinite(res) and float(res) < 1e-4


def test_cg_damping_and_warm_start():
  rng = np.random.default_rng(3)
  a, b = random_spd(rng, 6, 30.0), rng.normal(size=6)
  with x64():
    mv = matvec_of(jnp.asarray(a))
    x, _ = cg.conjugate_gradient(mv, jnp.asarray(b), num_steps=12, damping=0.5)
    np.testing.assert_allclose(x, np.linalg.solve(a + 0.5 * np.eye(6), b), rtol=1e-9)
    # Started at the solution, the residual is zero from the start and stays so (no 0/0).
    exact = jnp.asarray(np.linalg.solve(a, b))
    x, res = cg.conjugate_gradient(mv, jnp.asarray(b), num_steps=4, x0=exact)
    np.testing.assert_allclose(x, exact, rtol=1e-12)
    assert float(res) < 1e-12


def test_cg_after_convergence_stays_finite():
  # The identity is solved in one step; the remaining steps divide 0 by 0 unless guarded.
  b = jnp.arange(1.0, 5.0)
  x, res = cg.conjugate_gradient(lambda v: v, b, num_steps=5)
  np.testing.assert_array_equal(x, b)
  assert float(res) == 0.0
  x, res = cg.conjugate_gradient(lambda v: v, jnp.zeros(4), num_steps=3)
  np.testing.assert_array_equal(x, jnp.zeros(4))
  assert float(res) == 0.0


def test_cg_stops_at_non_positive_curvature():
  # Indefinite A: the first direction b has b'Ab = 0, so CG stops at x = 0 instead of
  # dividing by zero, and the residual reports that nothing was solved.
  a = jnp.diag(jnp.array([1.0, -1.0]))
  b = jnp.ones(2)
  x, res = cg.conjugate_gradient(lambda v: a @ v, b, num_steps=4)
  np.testing.assert_array_equal(x, jnp.zeros(2))
  np.testing.assert_allclose(res, np.sqrt(2.0))
  # A negative eigenvalue outside the Krylov space of b is never seen: solved exactly.
  a = jnp.diag(jnp.array([2.0, 1.0, -0.5]))
  b = jnp.array([1.0, 1.0, 0.0])
  x, res = cg.conjugate_gradient(lambda v: a @ v, b, num_steps=4)
  np.testing.assert_allclose(x, [0.5, 1.0, 0.0], rtol=1e-6)
  assert float(res) < 1e-6
  # Negative curvature after progress: the last iterate is kept, finite, with a smaller residual.
  a = jnp.diag(jnp.array([4.0, 1.0, -3.0]))
  b = jnp.array([1.0, 1.0, 0.3])
  x, res = cg.conjugate_gradient(lambda v: a @ v, b, num_steps=5)
  first, _ = cg.conjugate_gradient(lambda v: a @ v, b, num_steps=1)
  np.testing.assert_allclose(x, first, rtol=1e-6)  # the second direction has p'Ap < 0
  np.testing.assert_allclose(res, jnp.linalg.norm(b - a @ x), rtol=1e-5)
  assert float(res) < float(jnp.linalg.norm(b))


def test_cg_breakdown_is_reported_not_hidden():
  b = jnp.ones(3)
  x, res = cg.conjugate_gradient(lambda v: v * jnp.nan, b, num_steps=3)
  assert not np.isfinite(float(res))
  assert not np.all(np.isfinite(x))


def test_cg_vmap_over_systems_equals_loop_and_jit():
  rng = np.random.default_rng(4)
  mats = np.stack([random_spd(rng, 5, 10.0) for _ in range(4)]).astype(np.float32)
  rhs = rng.normal(size=(4, 5)).astype(np.float32)

  def solve(a, b):
    return cg.conjugate_gradient(lambda v: a @ v, b, num_steps=7)

  xs, ress = jax.jit(jax.vmap(solve))(jnp.asarray(mats), jnp.asarray(rhs))
  assert xs.shape == (4, 5) and ress.shape == (4,)
  for i in range(4):
    x, res = solve(jnp.asarray(mats[i]), jnp.asarray(rhs[i]))
    np.testing.assert_allclose(xs[i], x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ress[i], res, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(x, np.linalg.solve(mats[i], rhs[i]), rtol=1e-3, atol=1e-4)


def test_cg_is_differentiable():
  # The fixed-count loop is a scan: reverse mode works; d/db of A^-1 b is A^-1 (A symmetric).
  rng = np.random.default_rng(5)
  a = random_spd(rng, 4, 5.0)
  c = rng.normal(size=4)
  with x64():
    f = lambda b: jnp.dot(
      jnp.asarray(c), cg.conjugate_gradient(matvec_of(jnp.asarray(a)), b, num_steps=8).x
    )
    g = jax.grad(f)(jnp.asarray(rng.normal(size=4)))
  np.testing.assert_allclose(g, np.linalg.solve(a, c), rtol=1e-8)


def test_neumann_converges_to_cg_answer_as_terms_grow():
  rng = np.random.default_rng(6)
  n = 6
  # Eigenvalues of A in [0.6, 1.4]: ||I - A|| = 0.4, a well-conditioned system.
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = (q * np.linspace(0.6, 1.4, n)) @ q.T
  b = rng.normal(size=n)
  with x64():
    mv = matvec_of(jnp.asarray(a))
    reference = np.asarray(cg.conjugate_gradient(mv, jnp.asarray(b), num_steps=n).x)
    errors = []
    for k in (1, 2, 4, 8, 16, 32, 64):
      x, res = cg.neumann(mv, jnp.asarray(b), num_steps=k)
      errors.append(np.linalg.norm(np.asarray(x) - reference))
      # The reported residual is the exact one, b - A x.
      np.testing.assert_allclose(
        float(res), np.linalg.norm(b - a @ np.asarray(x)), rtol=1e-8, atol=1e-12
      )
  assert all(e2 < e1 for e1, e2 in itertools.pairwise(errors))
  assert errors[-1] < 1e-12 * np.linalg.norm(reference)
  # Error bound of the truncated series: ||I - A||^K ||A^-1 b||.
  assert errors[3] <= 0.4**8 * np.linalg.norm(reference) * (1 + 1e-9)


def test_neumann_step_size_and_damping():
  rng = np.random.default_rng(7)
  a = random_spd(rng, 4, 4.0)  # eigenvalues in [1, 4]: alpha = 1 diverges, alpha = 0.3 converges
  b = rng.normal(size=4)
  with x64():
    mv = matvec_of(jnp.asarray(a))
    _, res_diverging = cg.neumann(mv, jnp.asarray(b), num_steps=30)
    x, res = cg.neumann(mv, jnp.asarray(b), num_steps=200, alpha=0.3, damping=0.25)
  assert float(res_diverging) > 1e3 * np.linalg.norm(b)
  np.testing.assert_allclose(x, np.linalg.solve(a + 0.25 * np.eye(4), b), rtol=1e-9)
  assert float(res) < 1e-9


@pytest.mark.parametrize(
  ("solver", "kwargs", "match"),
  [
    (cg.conjugate_gradient, {"num_steps": 0}, "num_steps"),
    (cg.conjugate_gradient, {"num_steps": 2.5}, "num_steps"),
    (cg.conjugate_gradient, {"num_steps": 3, "damping": -1.0}, "damping"),
    (cg.neumann, {"num_steps": 0}, "num_steps"),
    (cg.neumann, {"num_steps": 3, "alpha": 0.0}, "alpha"),
    (cg.neumann, {"num_steps": 3, "damping": -0.1}, "damping"),
  ],
)
def test_bad_arguments_raise(solver, kwargs, match):
  with pytest.raises(ValueError, match=match):
    solver(lambda v: v, jnp.ones(2), **kwargs)
