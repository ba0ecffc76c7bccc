"""GP curves: the 1-D tasks of the `neuralprocesses` benchmark, and their exact posterior.

Each task is a function drawn from a Gaussian process with one of three
kernels, observed with Gaussian noise (variance 0.05) at 0-30 context points
and 50 target points, inputs uniform on [-2, 2] (Bruinsma, 2022, thesis ch. 6;
the `neuralprocesses` package, `construct_predefined_gens`):

- `eq`: exp(-r^2 / (2 l^2)), l = 0.25;
- `matern`: Matern-5/2, (1 + sqrt(5) r / l + 5 r^2 / (3 l^2)) exp(-sqrt(5) r / l), l = 0.25;
- `weakly_periodic`: EQ(l = 0.5) times the periodic EQ with period 0.25, i.e.
  exp(-2 sin^2(pi r / 0.25)) (an EQ of unit length scale on the embedding
  (sin, cos)(2 pi x / 0.25), as `mlkernels` builds `EQ().periodic(0.25)`).

Tasks are sampled on the device from a key and padded to static shapes: a
`Task` holds a context and a target `Split` (`x [n, 1]`, `y [n, 1]`,
`mask [n]`); the context has `max_context` rows of which the first
`num_context ~ U{min_context, ..., max_context}` are real.

`log_density` is the exact log-density of a task's targets given its context
under the true GP, by a dense Cholesky factorisation in float64 (inside any
`jit`, through `jax.enable_x64`), the reference every model is scored against.

References: Bruinsma, W. (2022). Convolutional Conditional Neural Processes,
PhD thesis, University of Cambridge; Rasmussen & Williams (2006), Gaussian
Processes for Machine Learning, Algorithm 2.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp

from metalearn import linalg
from metalearn.episodes import Split

Kernel = Callable[[jax.Array, jax.Array], jax.Array]  # (x1 [n, 1], x2 [m, 1]) -> [n, m]

NOISE = 0.05  # observation noise variance of the benchmark
X_RANGE = (-2.0, 2.0)


class Task(NamedTuple):
  """One neural-process task: a context set and a target set (each a padded `Split`)."""

  context: Split  # x [C, 1], y [C, 1], mask [C]
  target: Split  # x [T, 1], y [T, 1], mask [T]


def _distance(x1: jax.Array, x2: jax.Array) -> jax.Array:
  return jnp.abs(x1[:, None, 0] - x2[None, :, 0])


def eq(length_scale: float = 0.25) -> Kernel:
  """The exponentiated-quadratic kernel exp(-r^2 / (2 l^2)), unit variance."""
  return lambda x1, x2: jnp.exp(-0.5 * (_distance(x1, x2) / length_scale) ** 2)


def matern52(length_scale: float = 0.25) -> Kernel:
  """The Matern-5/2 kernel (1 + s + s^2 / 3) exp(-s), s = sqrt(5) r / l, unit variance."""

  def k(x1, x2):
    s = jnp.sqrt(5.0) * _distance(x1, x2) / length_scale
    return (1.0 + s + s**2 / 3.0) * jnp.exp(-s)

  return k


def periodic_eq(period: float = 0.25) -> Kernel:
  """exp(-2 sin^2(pi r / period)): a unit EQ on the embedding (sin, cos)(2 pi x / period)."""
  return lambda x1, x2: jnp.exp(-2.0 * jnp.sin(jnp.pi * _distance(x1, x2) / period) ** 2)


def weakly_periodic() -> Kernel:
  """EQ(l = 0.5) times the periodic EQ of period 0.25 (the benchmark's weakly periodic kernel)."""
  envelope, periodic = eq(0.5), periodic_eq(0.25)
  return lambda x1, x2: envelope(x1, x2) * periodic(x1, x2)


KERNELS: dict[str, Callable[[], Kernel]] = {
  "eq": lambda: eq(0.25),
  "matern": lambda: matern52(0.25),
  "weakly_periodic": weakly_periodic,
}


def get_kernel(name: str) -> Kernel:
  """The benchmark kernel registered as `name` (`eq`, `matern`, `weakly_periodic`)."""
  if name not in KERNELS:
    raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {name!r}")
  return KERNELS[name]()


def sample_tasks(
  key: jax.Array,
  num_tasks: int,
  *,
  kernel: Kernel,
  min_context: int = 0,
  max_context: int = 30,
  num_target: int = 50,
  noise: float = NOISE,
  x_range: tuple[float, float] = X_RANGE,
) -> Task:
  """Draws `num_tasks` GP tasks from `key`: a batch `Task` with leading axis `[num_tasks]`.

  The context inputs and the target inputs are uniform on `x_range`; the
  outputs at all `max_context + num_target` inputs are one joint draw of the
  GP plus noise, and context rows past the task's `num_context` are padding
  (mask False). Pure JAX, so it runs under `jit` on any device.

  Raises:
    ValueError: for context counts outside `0 <= min_context <= max_context`
      or `num_target < 1`.
  """
  if not 0 <= min_context <= max_context:
    raise ValueError(f"need 0 <= min_context <= max_context, got {min_context}, {max_context}")
  if num_target < 1:
    raise ValueError(f"num_target must be >= 1, got {num_target}")
  n = max_context + num_target

  def one(key):
    k_n, k_x, k_y = jax.random.split(key, 3)
    num_context = jax.random.randint(k_n, (), min_context, max_context + 1)
    x = jax.random.uniform(k_x, (n, 1), minval=x_range[0], maxval=x_range[1])
    cov = kernel(x, x) + noise * jnp.eye(n)
    y = linalg.cholesky(cov) @ jax.random.normal(k_y, (n, 1))
    context = Split(x[:max_context], y[:max_context], jnp.arange(max_context) < num_context)
    target = Split(x[max_context:], y[max_context:], jnp.ones(num_target, bool))
    return Task(context, target)

  return jax.vmap(one)(jax.random.split(key, num_tasks))


def _masked_system(kernel: Kernel, context: Split, x_target: jax.Array, noise: float):
  """Context covariance with padded rows made unit and decoupled, and the cross-covariance."""
  m = context.mask.astype(x_target.dtype)
  k_cc = kernel(context.x, context.x) * m[:, None] * m[None, :]
  k_cc = k_cc + jnp.diag(noise * m + (1.0 - m))
  k_tc = kernel(x_target, context.x) * m[None, :]
  return k_cc, k_tc, context.y[:, 0] * m


def posterior(
  kernel: Kernel, context: Split, x_target: jax.Array, noise: float = NOISE
) -> tuple[jax.Array, jax.Array]:
  """The exact GP posterior predictive of noisy outputs at `x_target [T, 1]` given `context`.

  Padded context rows (mask False) are decoupled from everything, so they
  change nothing. Computed in the dtype of the inputs (call `log_density` for
  the float64 reference).

  Returns:
    `(mean [T], cov [T, T])` of `y_target | context`, noise included.
  """
  k_cc, k_tc, y_c = _masked_system(kernel, context, x_target, noise)
  chol = linalg.cholesky(k_cc)
  alpha = linalg.cho_solve(chol, y_c)
  v = linalg.solve_triangular(chol, k_tc.T)  # [C, T]
  mean = k_tc @ alpha
  cov = kernel(x_target, x_target) + noise * jnp.eye(x_target.shape[0]) - v.T @ v
  return mean, cov


def log_density(kernel: Kernel, task: Task, noise: float = NOISE) -> jax.Array:
  """Exact `log p(y_target | context)` under the true GP, summed over real target points.

  Dense Cholesky in float64 whatever the global setting (also inside `jit`).
  Padded targets (mask False) are left out exactly: their rows and columns of
  the predictive covariance are replaced by the identity and their residual by
  zero, and that block's log-density, `log N(0; 0, 1)` a point, is taken off.

  Returns:
    `[]` float64.
  """
  with jax.enable_x64(True):
    f64 = lambda s: Split(*(a.astype(jnp.float64) for a in s[:2]), s.mask)
    context, target = f64(task.context), f64(task.target)
    mean, cov = posterior(kernel, context, target.x, noise)
    m = target.mask.astype(jnp.float64)
    cov = cov * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
    residual = (target.y[:, 0] - mean) * m
    padded = jnp.sum(1.0 - m) * distrax.Normal(0.0, 1.0).log_prob(0.0)
    return linalg.mvn_log_prob(residual, linalg.cholesky(cov)) - padded
