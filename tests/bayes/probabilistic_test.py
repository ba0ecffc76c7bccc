"""The probabilistic evaluator: KL per point, likelihood of mixtures, coverage, reference rows."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from metalearn import core, probabilistic
from metalearn.data import gp
from metalearn.episodes import Split

KERNEL = gp.get_kernel("eq")


def _evaluate(learner, tasks, key=0):
  step = jax.jit(core.make_eval_step(probabilistic.gp_evaluator(learner, KERNEL)))
  return jax.device_get(step(learner.init(None, None), tasks, jax.random.PRNGKey(key)))


def test_kl_is_zero_for_the_gp_posterior():
  """With one target the GP's marginal is its posterior, so the model that predicts it scores 0."""
  tasks = gp.sample_tasks(jax.random.PRNGKey(0), 64, kernel=KERNEL, num_target=1)
  metrics = _evaluate(probabilistic.diagonal_gp(KERNEL), tasks)
  np.testing.assert_allclose(metrics["kl"], 0.0, atol=2e-5)
  np.testing.assert_allclose(metrics["loglik"], metrics["gp_loglik"], atol=2e-5)


def test_kl_is_the_log_density_gap_per_point():
  """A known answer: N(0, s^2) at every target; KL = (exact - sum log N(y; 0, s^2)) / n."""
  tasks = gp.sample_tasks(jax.random.PRNGKey(1), 8, kernel=KERNEL)
  metrics = _evaluate(probabilistic.constant(0.0, 1.5), tasks)
  y = np.asarray(tasks.target.y[..., 0], np.float64)
  model = stats.norm(0, 1.5).logpdf(y).sum(1)
  exact = np.asarray(jax.jit(jax.vmap(lambda t: gp.log_density(KERNEL, t)))(tasks))
  np.testing.assert_allclose(metrics["kl"], (exact - model) / 50, rtol=1e-4)
  # The diagonal GP loses the targets' correlations, and nothing else: KL > 0 on average.
  diag = _evaluate(probabilistic.diagonal_gp(KERNEL), tasks)
  assert np.mean(diag["kl"]) > 0 and np.all(diag["kl"] < metrics["kl"])


def test_padded_targets_change_nothing():
  tasks = gp.sample_tasks(jax.random.PRNGKey(2), 3, kernel=KERNEL, num_target=20)
  rng = np.random.default_rng(0)
  mask = rng.random((3, 20)) < 0.5
  mask[:, 0] = True
  y = np.where(mask, np.asarray(tasks.target.y[..., 0]), 1e3)[..., None]
  padded = tasks._replace(target=Split(tasks.target.x, jnp.asarray(y), jnp.asarray(mask)))
  got = _evaluate(probabilistic.diagonal_gp(KERNEL), padded)
  for i in range(3):
    one = core.task(tasks, i)
    keep = np.flatnonzero(mask[i])
    sub = one._replace(target=Split(*(a[keep] for a in one.target)))
    want = _evaluate(
      probabilistic.diagonal_gp(KERNEL), jax.tree_util.tree_map(lambda a: a[None], sub)
    )
    for name in ("kl", "loglik", "gp_loglik", "coverage@50", "coverage@90"):
      np.testing.assert_allclose(got[name][i], want[name][0], rtol=1e-5, atol=1e-5)


def test_mixture_log_likelihood_and_coverage_by_hand():
  rng = np.random.default_rng(3)
  mean, scale = rng.normal(size=(4, 6)), rng.uniform(0.2, 2, (4, 6))
  y = rng.normal(size=6)
  pred = probabilistic.Predictive(jnp.asarray(mean), jnp.asarray(scale))
  target = Split(jnp.zeros((6, 1)), jnp.asarray(y)[:, None], jnp.ones(6, bool))
  joint = stats.norm(mean, scale).logpdf(y[None]).sum(1)
  want = np.log(np.mean(np.exp(joint)))
  np.testing.assert_allclose(probabilistic.log_likelihood(pred, target), want, rtol=1e-5)
  cdf = stats.norm(mean, scale).cdf(y[None]).mean(0)
  got = probabilistic.coverage(pred, target, (0.5, 0.9))
  np.testing.assert_allclose(got["coverage@50"], np.mean(np.abs(cdf - 0.5) <= 0.25), atol=1e-6)
  np.testing.assert_allclose(got["coverage@90"], np.mean(np.abs(cdf - 0.5) <= 0.45), atol=1e-6)
  m, s = probabilistic.moments(pred)
  np.testing.assert_allclose(m, mean.mean(0), rtol=1e-5)
  np.testing.assert_allclose(s**2, (scale**2 + mean**2).mean(0) - mean.mean(0) ** 2, rtol=1e-4)


def test_coverage_of_the_true_marginals_is_nominal():
  """Targets drawn from the GP land in the GP's central p-intervals a fraction p of the time."""
  tasks = gp.sample_tasks(jax.random.PRNGKey(4), 1000, kernel=KERNEL)
  metrics = _evaluate(probabilistic.diagonal_gp(KERNEL), tasks)
  for p in (50, 90, 95):
    assert abs(np.mean(metrics[f"coverage@{p}"]) - p / 100) < 0.012, p


def test_a_too_narrow_predictive_undercovers():
  tasks = gp.sample_tasks(jax.random.PRNGKey(5), 200, kernel=KERNEL)
  narrow = probabilistic.constant(0.0, 0.3)
  metrics = _evaluate(narrow, tasks)
  assert np.mean(metrics["coverage@90"]) < 0.5


def test_empirical_moments_and_trivial_row():
  tasks = gp.sample_tasks(jax.random.PRNGKey(6), 500, kernel=KERNEL)
  mean, std = probabilistic.empirical_moments([tasks])
  y = np.asarray(tasks.target.y, np.float64).reshape(-1)
  np.testing.assert_allclose([mean, std], [y.mean(), y.std()], rtol=1e-6)
  # The pooled log-likelihood of N(mean, std^2) is the benchmark's -0.5 log(2 pi e var).
  metrics = _evaluate(probabilistic.constant(mean, std), tasks)
  np.testing.assert_allclose(
    np.mean(metrics["loglik"]), -0.5 * np.log(2 * np.pi * np.e * std**2), rtol=1e-4
  )


def test_distrax_normal_matches_scipy():
  # The evaluator's log-densities come from distrax; pin its agreement with scipy.
  x = np.linspace(-3, 3, 7)
  np.testing.assert_allclose(
    distrax.Normal(0.5, 1.3).log_prob(jnp.asarray(x)), stats.norm(0.5, 1.3).logpdf(x), rtol=1e-5
  )


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_constant_needs_positive_scale(scale):
  with pytest.raises(ValueError, match="scale"):
    probabilistic.constant(0.0, scale)
