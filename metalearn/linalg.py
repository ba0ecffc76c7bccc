"""Dense Cholesky factorisation and triangular solves written in plain XLA operations.

`jnp.linalg.cholesky` and `jax.scipy.linalg.solve_triangular` lower on CPU to
jaxlib's LAPACK kernels. With jaxlib 0.10.2 a batched LAPACK kernel runs on a
worker of XLA:CPU's thread pool, splits its batch into chunks scheduled on the
same pool, and blocks until they finish. When as many such kernels run at once
as the pool has workers (two on a 2-core machine: e.g. a model's float32
factorisation beside the float64 reference one, both `vmap`-ed over tasks),
every worker waits for chunks no free worker can run, and the program hangs
with every thread waiting on a futex. Data dependencies do not prevent it:
XLA:CPU orders its kernels by the buffers they read, and an
`optimization_barrier` aliases its inputs.

The functions here compute the same factorisations with `lax.fori_loop` over
columns (rows), matrix-vector products and elementwise operations only, so the
programs that use them hold no LAPACK call and cannot hang that way. They are
exact algorithms (left-looking Cholesky-Banachiewicz, forward and back
substitution), O(n^3) and O(n^2 m) like LAPACK's unblocked ones, meant for the
small systems of this library (GP tasks of up to a few hundred points, Laplace
systems of a support set, linear baselines of RL returns); reverse-mode
differentiation goes through the loops. Like LAPACK's through jax, a matrix
that is not positive definite gives NaNs, not an error.

All functions act on one matrix; `vmap` batches them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def cholesky(a: jax.Array) -> jax.Array:
  """The lower-triangular `L [n, n]` with `L L^T = a` for a symmetric positive definite `a [n, n]`.

  Only the lower triangle of `a` is read. Column j of L is
  `(a[:, j] - L[:, :j] L[j, :j]^T) / L[j, j]` below the diagonal and
  `sqrt(a[j, j] - |L[j, :j]|^2)` on it.
  """
  n = a.shape[-1]
  if a.ndim != 2 or a.shape[0] != n:
    raise ValueError(f"cholesky takes one square matrix [n, n], got shape {a.shape}")
  rows = jnp.arange(n)

  def column(j, low):
    v = a[:, j] - low @ low[j]  # low's columns >= j are still zero
    d = jnp.sqrt(v[j])
    col = jnp.where(rows > j, v / d, jnp.where(rows == j, d, 0.0))
    return low.at[:, j].set(col)

  return lax.fori_loop(0, n, column, jnp.zeros_like(a))


def solve_triangular(low: jax.Array, b: jax.Array, *, transpose: bool = False) -> jax.Array:
  """`x` with `low x = b` (or `low^T x = b` when `transpose`), `low [n, n]` lower triangular.

  Args:
    low: `[n, n]`; only its lower triangle is read.
    b: `[n]` or `[n, m]`.
    transpose: solve with `low^T` (upper triangular; back substitution).

  Returns:
    `x`, shaped like `b`.
  """
  n = low.shape[-1]
  if low.ndim != 2 or low.shape[0] != n or b.shape[0] != n:
    raise ValueError(f"need low [n, n] and b [n, ...], got {low.shape} and {b.shape}")
  mat = jnp.tril(low).T if transpose else jnp.tril(low)

  def row(k, x):
    i = n - 1 - k if transpose else k
    xi = (b[i] - mat[i] @ x) / mat[i, i]  # x's rows not yet solved are zero
    return x.at[i].set(xi)

  return lax.fori_loop(0, n, row, jnp.zeros(b.shape, jnp.result_type(low, b)))


def cho_solve(low: jax.Array, b: jax.Array) -> jax.Array:
  """`x` with `(low low^T) x = b`: `low [n, n]` from `cholesky`, `b [n]` or `[n, m]`."""
  return solve_triangular(low, solve_triangular(low, b), transpose=True)


def mvn_log_prob(residual: jax.Array, low: jax.Array) -> jax.Array:
  """`log N(residual; 0, low low^T)`, `[]`: `residual [n]`, Cholesky factor `low [n, n]`."""
  z = solve_triangular(low, residual)
  n = residual.shape[0]
  half_log_det = jnp.sum(jnp.log(jnp.diagonal(low)))
  return -0.5 * jnp.sum(z**2) - half_log_det - 0.5 * n * jnp.log(2.0 * jnp.pi)
