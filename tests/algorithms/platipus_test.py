"""PLATIPUS: its KL, its reduction to MAML with a learned noise, and Algorithm 2's samples."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train
from experiments.configs import sinusoid
from metalearn import algorithms
from metalearn.algorithms.platipus import gaussian_kl
from metalearn.data.sinusoid import SineOrLine, Sinusoid
from metalearn.models import MLP, Model


def _task(seed=0, shots=5, queries=7):
  batch = SineOrLine(shots=shots, queries=queries).sample(np.random.default_rng(seed), 1)
  return jax.tree_util.tree_map(lambda a: a[0], batch)


def test_kl_matches_distrax_summed_over_every_weight():
  rng = np.random.default_rng(0)
  tree = lambda: {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=(4,))}
  mq, mp = tree(), tree()
  sq = jax.tree_util.tree_map(lambda a: np.exp(0.3 * a), tree())
  sp = jax.tree_util.tree_map(lambda a: np.exp(0.3 * a), tree())
  want = sum(
    float(jnp.sum(distrax.Normal(mq[k], sq[k]).kl_divergence(distrax.Normal(mp[k], sp[k]))))
    for k in ("a", "b")
  )
  np.testing.assert_allclose(float(gaussian_kl(mq, sq, mp, sp)), want, rtol=1e-5)
  assert float(gaussian_kl(mq, sq, mq, sq)) == pytest.approx(0.0, abs=1e-6)


def test_without_scales_or_shifts_it_is_maml_with_a_learned_noise(x64):
  """sigma = v_q -> 0, gamma_p = gamma_q = 0: llama(laplace=False)'s meta-loss and predictive."""
  task = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), _task())
  kwargs = dict(inner_lr=0.01, inner_steps=3, init_noise=0.4)
  mine = algorithms.platipus(MLP(hidden=(8,)), init_scale=1e-30, init_gamma=0.0, **kwargs)
  maml = algorithms.llama(MLP(hidden=(8,)), laplace=False, **kwargs)
  key = jax.random.PRNGKey(3)
  theta = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), mine.init(key, task))
  reference = {"params": theta["params"], "log_noise": theta["log_noise"]}
  loss, metrics = mine.meta_loss(theta, task, key)
  want, want_metrics = maml.meta_loss(reference, task, key)
  np.testing.assert_allclose(loss, want, rtol=1e-12)
  np.testing.assert_allclose(metrics["query_mse"], want_metrics["query_mse"], rtol=1e-12)
  assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-12)
  pred = mine.adapt(theta, task.support, key)(task.query.x)
  ref = maml.adapt(reference, task.support, key)(task.query.x)
  assert pred.mean.shape == (10, 7)  # eval_samples components
  np.testing.assert_allclose(pred.mean, np.broadcast_to(ref.mean, pred.mean.shape), rtol=1e-10)
  np.testing.assert_allclose(pred.scale, np.broadcast_to(ref.scale, pred.scale.shape), rtol=1e-12)


def _linear():
  """f(x) = w x + b, scalar w and b: a model whose sampled functions have a closed form."""

  def init(key, x):
    del key, x
    return {"w": jnp.asarray(0.7), "b": jnp.asarray(-0.2)}

  return Model(init, lambda p, x: p["w"] * x + p["b"])


def test_test_time_samples_follow_algorithm_2_on_a_linear_model():
  """inner_steps = 0: f(x; theta), theta ~ N(mu - gamma_p grad L(mu, D_tr), sigma^2)."""
  task = _task(shots=6, queries=4)
  sigma, gamma = 0.2, 0.05
  learner = algorithms.platipus(
    _linear(), inner_steps=0, init_scale=sigma, init_gamma=gamma, eval_samples=20_000
  )
  theta = learner.init(jax.random.PRNGKey(0), task)
  x, y = np.asarray(task.support.x[:, 0], np.float64), np.asarray(task.support.y[:, 0], np.float64)
  residual = 0.7 * x - 0.2 - y  # d/dw, d/db of mean((w x + b - y)^2)
  w = 0.7 - gamma * np.mean(2 * residual * x)
  b = -0.2 - gamma * np.mean(2 * residual)
  pred = learner.adapt(theta, task.support, jax.random.PRNGKey(1))(task.query.x)
  xq = np.asarray(task.query.x[:, 0], np.float64)
  samples = np.asarray(pred.mean, np.float64)  # [S, m]
  np.testing.assert_allclose(
    samples.mean(0), w * xq + b, atol=4 * sigma * np.sqrt((np.abs(xq).max() ** 2 + 1) / 20_000)
  )
  np.testing.assert_allclose(samples.var(0), sigma**2 * (xq**2 + 1), rtol=0.05)
  np.testing.assert_allclose(pred.scale, 0.5, rtol=1e-6)  # the noise at initialisation


def test_every_meta_parameter_gets_a_meta_gradient():
  task = _task()
  learner = algorithms.platipus(MLP(hidden=(8,)), inner_steps=2, inner_lr=0.001)
  key = jax.random.PRNGKey(0)
  theta = learner.init(key, task)
  grads = jax.grad(lambda t: learner.meta_loss(t, task, key)[0])(theta)
  for name, g in grads.items():
    norm = sum(float(jnp.sum(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(g))
    assert np.isfinite(norm) and norm > 0, name


def test_the_training_posterior_sees_the_query_and_the_prior_does_not():
  """q's mean moves with the query targets (gamma_q); the test-time predictive does not."""
  task = _task()
  learner = algorithms.platipus(MLP(hidden=(8,)), inner_steps=1, init_gamma=0.1)
  key = jax.random.PRNGKey(0)
  theta = learner.init(key, task)
  moved = task._replace(query=task.query._replace(y=task.query.y + 3.0))
  kl = lambda t: float(learner.meta_loss(theta, t, key)[1]["kl"])
  assert kl(moved) != pytest.approx(kl(task))
  same = lambda t: learner.adapt(theta, t.support, key)(task.query.x).mean
  np.testing.assert_array_equal(same(moved), same(task))


@pytest.mark.parametrize(
  "kwargs, fragment",
  [
    (dict(kl_weight=-1.0), "kl_weight"),
    (dict(init_scale=0.0), "init_scale"),
    (dict(init_noise=0.0), "init_noise"),
    (dict(eval_samples=0), "eval_samples"),
    (dict(train_samples=1.5), "train_samples"),
    (dict(objective="cross_entropy"), "objective must be 'mse'"),
  ],
)
def test_bad_arguments_raise_one_line_naming_them(kwargs, fragment):
  with pytest.raises(ValueError, match=fragment):
    algorithms.platipus(MLP(hidden=(4,)), **kwargs)


def test_sine_or_line_tasks():
  sampler = SineOrLine(shots=5, queries=200, noise=0.3)
  rng = np.random.default_rng(0)
  is_sine, a, b = sampler.tasks(rng, 4000)
  assert 0.47 < is_sine.mean() < 0.53
  assert a[is_sine].min() >= 0.1 and a[is_sine].max() <= 5.0
  assert b[is_sine].min() >= 0.0 and b[is_sine].max() <= np.pi
  assert np.abs(a[~is_sine]).max() <= 3.0 and np.abs(b[~is_sine]).max() <= 3.0
  episode = sampler.episodes_for(rng, is_sine[:50], a[:50], b[:50])
  assert episode.support.x.shape == (50, 5, 1) and episode.query.y.shape == (50, 200, 1)
  clean = SineOrLine.function(
    is_sine[:50, None, None], a[:50, None, None], b[:50, None, None], episode.query.x
  )
  assert np.std(episode.query.y - clean) == pytest.approx(0.3, rel=0.03)
  only_sines = SineOrLine(sine_fraction=1.0).tasks(rng, 100)[0]
  assert only_sines.all()
  with pytest.raises(ValueError, match="noise"):
    SineOrLine(noise=-0.1)


def test_the_platipus_config_runs_on_the_ambiguous_tasks_and_checks_functions(tmp_path):
  config = sinusoid.get_config("platipus")
  assert (config.functions, config.shots, tuple(config.hidden)) == ("sine_line", 5, (100, 100, 100))
  assert train.learner_kwargs(config)["inner_steps"] == 5
  assert isinstance(train.regression_tasks(config, 3), SineOrLine)
  assert isinstance(train.regression_tasks(sinusoid.get_config("maml"), 3), Sinusoid)
  with config.unlocked():
    config.functions = "cosine"
  with pytest.raises(ValueError, match=r"--config\.functions='cosine'"):
    train.validate(config, str(tmp_path / "run"))
