"""GP curves: kernels in closed form, the sampler, and the exact posterior against dense numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import core
from metalearn.data import gp
from metalearn.episodes import Split


def _np_kernel(name, a, b):
  r = np.abs(a[:, None] - b[None, :])
  if name == "eq":
    return np.exp(-0.5 * (r / 0.25) ** 2)
  if name == "matern":
    s = np.sqrt(5) * r / 0.25
    return (1 + s + s**2 / 3) * np.exp(-s)
  # EQ(0.5) times a unit EQ on the embedding (sin, cos)(2 pi x / 0.25), as mlkernels builds it.
  emb = lambda x: np.stack([np.sin(2 * np.pi * x / 0.25), np.cos(2 * np.pi * x / 0.25)], -1)
  d2 = np.sum((emb(a)[:, None] - emb(b)[None]) ** 2, -1)
  return np.exp(-0.5 * (r / 0.5) ** 2) * np.exp(-0.5 * d2)


def _np_log_density(name, xc, yc, xt, yt, noise=gp.NOISE):
  """log N(yt; K_tc (K_cc + s I)^-1 yc, K_tt + s I - K_tc (K_cc + s I)^-1 K_ct), by numpy."""
  k_cc = _np_kernel(name, xc, xc) + noise * np.eye(len(xc))
  k_tc = _np_kernel(name, xt, xc)
  mean = k_tc @ np.linalg.solve(k_cc, yc) if len(xc) else np.zeros(len(xt))
  cov = _np_kernel(name, xt, xt) + noise * np.eye(len(xt))
  if len(xc):
    cov = cov - k_tc @ np.linalg.solve(k_cc, k_tc.T)
  r = yt - mean
  _, logdet = np.linalg.slogdet(cov)
  return -0.5 * (r @ np.linalg.solve(cov, r) + logdet + len(yt) * np.log(2 * np.pi))


def _task(xc, yc, mc, xt, yt, mt):
  col = lambda a: jnp.asarray(a, jnp.float32)[:, None]
  return gp.Task(Split(col(xc), col(yc), jnp.asarray(mc)), Split(col(xt), col(yt), jnp.asarray(mt)))


@pytest.mark.parametrize("name", sorted(gp.KERNELS))
def test_kernels_match_closed_forms(name):
  x = np.linspace(-2, 2, 13)
  got = gp.get_kernel(name)(jnp.asarray(x)[:, None], jnp.asarray(x[::-1])[:, None])
  np.testing.assert_allclose(got, _np_kernel(name, x, x[::-1]), atol=1e-6)


@pytest.mark.parametrize("name", sorted(gp.KERNELS))
def test_log_density_equals_dense_float64(name):
  rng = np.random.default_rng(0)
  xc, yc = rng.uniform(-2, 2, 12), rng.normal(size=12)
  xt, yt = rng.uniform(-2, 2, 9), rng.normal(size=9)
  xc32, yc32, xt32, yt32 = (np.float32(a).astype(np.float64) for a in (xc, yc, xt, yt))
  want = _np_log_density(name, xc32, yc32, xt32, yt32)
  task = _task(xc, yc, np.ones(12, bool), xt, yt, np.ones(9, bool))
  got = jax.jit(lambda t: gp.log_density(gp.get_kernel(name), t))(task)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(float(got), want, rtol=1e-10)


def test_log_density_with_no_context_is_the_prior():
  rng = np.random.default_rng(1)
  xt, yt = rng.uniform(-2, 2, 7), rng.normal(size=7)
  task = _task(np.zeros(3), np.ones(3), np.zeros(3, bool), xt, yt, np.ones(7, bool))
  want = _np_log_density(
    "eq", np.zeros(0), np.zeros(0), *(np.float32(a).astype(np.float64) for a in (xt, yt))
  )
  np.testing.assert_allclose(float(gp.log_density(gp.get_kernel("eq"), task)), want, rtol=1e-10)


def test_posterior_mean_and_covariance_match_numpy():
  rng = np.random.default_rng(2)
  xc, yc, xt = rng.uniform(-2, 2, 6), rng.normal(size=6), rng.uniform(-2, 2, 4)
  xc, yc, xt = (np.float32(a).astype(np.float64) for a in (xc, yc, xt))
  with jax.enable_x64(True):
    mean, cov = gp.posterior(
      gp.get_kernel("matern"),
      Split(jnp.asarray(xc)[:, None], jnp.asarray(yc)[:, None], jnp.ones(6, bool)),
      jnp.asarray(xt)[:, None],
    )
  k_cc = _np_kernel("matern", xc, xc) + gp.NOISE * np.eye(6)
  k_tc = _np_kernel("matern", xt, xc)
  np.testing.assert_allclose(mean, k_tc @ np.linalg.solve(k_cc, yc), rtol=1e-10)
  want = _np_kernel("matern", xt, xt) + gp.NOISE * np.eye(4) - k_tc @ np.linalg.solve(k_cc, k_tc.T)
  np.testing.assert_allclose(cov, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_padded_points_change_nothing(seed):
  """Random masks over context and target rows, padding holding garbage: only real rows count."""
  rng = np.random.default_rng(seed)
  c, t = 15, 10
  xc, yc = rng.uniform(-2, 2, c), rng.normal(size=c)
  xt, yt = rng.uniform(-2, 2, t), rng.normal(size=t)
  mc, mt = rng.random(c) < 0.6, rng.random(t) < 0.7
  mt[0] = True
  task = _task(xc, yc, mc, xt, yt, mt)
  got = float(gp.log_density(gp.get_kernel("weakly_periodic"), task))
  f64 = lambda a: np.float32(a).astype(np.float64)
  want = _np_log_density("weakly_periodic", f64(xc[mc]), f64(yc[mc]), f64(xt[mt]), f64(yt[mt]))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  garbage = _task(
    np.where(mc, xc, 50 * rng.normal(size=c)),
    np.where(mc, yc, 1e3),
    mc,
    np.where(mt, xt, rng.normal(size=t)),
    np.where(mt, yt, -1e3),
    mt,
  )
  np.testing.assert_allclose(float(gp.log_density(gp.get_kernel("weakly_periodic"), garbage)), got)


def test_sampler_shapes_masks_and_context_counts():
  tasks = jax.jit(lambda k: gp.sample_tasks(k, 400, kernel=gp.get_kernel("eq")))(
    jax.random.PRNGKey(0)
  )
  assert tasks.context.x.shape == (400, 30, 1) and tasks.target.y.shape == (400, 50, 1)
  counts = np.asarray(tasks.context.mask.sum(1))
  # Masks are prefixes: the first num_context rows are real.
  np.testing.assert_array_equal(tasks.context.mask, np.arange(30)[None] < counts[:, None])
  assert counts.min() == 0 and counts.max() == 30 and len(np.unique(counts)) == 31
  assert np.all(tasks.target.mask)
  x = np.asarray(tasks.target.x)
  assert x.min() >= -2 and x.max() <= 2


def test_samples_have_the_kernel_covariance():
  """The empirical covariance of y at fixed inputs is k(x, x') + noise: sampled from the GP."""
  key = jax.random.PRNGKey(3)
  tasks = gp.sample_tasks(key, 20000, kernel=gp.get_kernel("matern"), max_context=0, num_target=3)
  # Inputs differ per task; regress y_i y_j on the kernel at each task's inputs instead.
  x, y = np.asarray(tasks.target.x[..., 0]), np.asarray(tasks.target.y[..., 0])
  prod = y[:, 0] * y[:, 1]
  k = np.array([_np_kernel("matern", x[i, :1], x[i, 1:2])[0, 0] for i in range(len(x))])
  assert abs(np.mean(prod - k)) < 0.02
  assert abs(np.mean(y[:, 0] ** 2) - (1 + gp.NOISE)) < 0.03
  one = core.task(tasks, 0)
  assert one.context.x.shape == (0, 1)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="kernel"):
    gp.get_kernel("rbf")
  with pytest.raises(ValueError, match="min_context"):
    gp.sample_tasks(
      jax.random.PRNGKey(0), 2, kernel=gp.get_kernel("eq"), min_context=5, max_context=3
    )
