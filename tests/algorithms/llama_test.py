"""LLAMA: the Laplace posterior against closed forms, and MAML with a learned noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import algorithms, probabilistic
from metalearn import episodes as ep
from metalearn.algorithms.llama import jacobian, laplace_posterior, log_det, variance
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP, Model, as_model


def x64():
  enable = getattr(jax.experimental, "enable_x64", None)
  return enable() if enable is not None else jax.enable_x64(True)


LINEAR = Model(
  init=lambda key, x: {"w": jnp.zeros((x.shape[-1], 1)), "b": jnp.zeros((1,))},
  apply=lambda p, x: x @ p["w"] + p["b"],
)


@pytest.mark.parametrize("tau, noise", [(1.0, 0.5), (4.0, 0.1)])
def test_laplace_posterior_of_a_linear_gaussian_model_is_the_exact_posterior(tau, noise):
  # y = [x 1] v + N(0, noise^2), prior v ~ N(theta, I / tau): the posterior precision is
  # tau I + A'A / noise^2 exactly, whatever the MAP, and the predictive variance at x* is
  # a* Sigma a*'. The Laplace posterior built through the n x n kernel must agree.
  rng = np.random.default_rng(0)
  x, xs = rng.normal(size=(6, 3)), rng.normal(size=(9, 3))
  mask = np.array([1, 1, 1, 1, 0, 1], bool)  # one padded support row
  with x64():
    params = {"w": jnp.asarray(rng.normal(size=(3, 1))), "b": jnp.asarray(rng.normal(size=(1,)))}
    jac = jacobian(LINEAR, params, jnp.asarray(x)) * mask[:, None]
    post = laplace_posterior(jac, jnp.asarray(noise), tau)
    var = variance(post, jacobian(LINEAR, params, jnp.asarray(xs)))
    logdet = log_det(post)
  a = np.concatenate([x[mask], np.ones((mask.sum(), 1))], axis=1)
  a_star = np.concatenate([xs, np.ones((len(xs), 1))], axis=1)
  precision = tau * np.eye(4) + a.T @ a / noise**2
  sigma = np.linalg.inv(precision)
  np.testing.assert_allclose(var, np.einsum("mi,ij,mj->m", a_star, sigma, a_star), rtol=1e-10)
  want = np.linalg.slogdet(precision)[1] - 4 * np.log(tau)
  np.testing.assert_allclose(float(logdet), want, rtol=1e-10)


def test_linearised_predictive_of_an_mlp_equals_the_dense_computation():
  # The predictor's variance is noise^2 + J* H^-1 J*' with H = J'J / noise^2 + tau I,
  # computed here with the dense P x P matrix of a small MLP.
  model = MLP(hidden=(5,))
  learner = algorithms.llama(model, inner_steps=2, prior_precision=2.0, init_noise=0.3)
  task = Sinusoid(shots=4, queries=6).sample(np.random.default_rng(1), 1)
  episode = ep.task(task, 0)
  with x64():
    episode = jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, jnp.float64) if a.dtype.kind == "f" else a, episode
    )
    theta = learner.init(jax.random.PRNGKey(0), episode)
    theta = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), theta)
    pred = learner.adapt(theta, episode.support, None)(episode.query.x)
    maml = algorithms.maml(model, inner_steps=2)
    phi = maml.adapt({"params": theta["params"]}, episode.support, None).args[0]
    wrapped = as_model(model)
    jac = np.asarray(jacobian(wrapped, phi, episode.support.x))
    jac_q = np.asarray(jacobian(wrapped, phi, episode.query.x))
    mean_q = np.asarray(wrapped.apply(phi, episode.query.x)[:, 0])
    noise = float(jnp.exp(theta["log_noise"]))  # 0.3 up to float32 rounding of its log
  h = jac.T @ jac / noise**2 + 2.0 * np.eye(jac.shape[1])
  var = noise**2 + np.einsum("mi,ij,mj->m", jac_q, np.linalg.inv(h), jac_q)
  np.testing.assert_allclose(np.asarray(pred.mean[0]), mean_q, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(pred.scale[0]) ** 2, var, rtol=1e-8)
  assert np.all(var > noise**2)  # the posterior adds variance to the noise


def test_without_laplace_it_is_maml_with_a_gaussian_likelihood():
  # laplace=False: the meta-loss is the query Gaussian NLL of MAML's adapted weights, so its
  # gradient in the weights is MAML's MSE gradient divided by 2 sigma^2.
  model = MLP(hidden=(8,))
  noise = 0.7
  learner = algorithms.llama(model, inner_steps=1, laplace=False, init_noise=noise)
  maml = algorithms.maml(model, inner_steps=1)
  episode = ep.task(Sinusoid(shots=5, queries=5).sample(np.random.default_rng(2), 1), 0)
  theta = learner.init(jax.random.PRNGKey(0), episode)
  (loss, metrics), grad = jax.value_and_grad(learner.meta_loss, has_aux=True)(theta, episode, None)
  (mse, _), grad_maml = jax.value_and_grad(maml.meta_loss, has_aux=True)(
    {"params": theta["params"]}, episode, None
  )
  want = mse / (2 * noise**2) + np.log(noise) + 0.5 * np.log(2 * np.pi)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(metrics["log_det"]) == 0.0
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b / (2 * noise**2), rtol=1e-4, atol=1e-7),
    grad["params"],
    grad_maml["params"],
  )
  pred = learner.adapt(theta, episode.support, None)(episode.query.x)
  np.testing.assert_allclose(np.asarray(pred.scale), noise, rtol=1e-6)


def test_the_laplace_term_is_eta_times_log_det_per_query_point():
  model = MLP(hidden=(8,))
  episode = ep.task(Sinusoid(shots=5, queries=5).sample(np.random.default_rng(3), 1), 0)
  losses = {}
  for eta in (0.0, 0.5, 2.0):
    learner = algorithms.llama(model, eta=eta)
    theta = learner.init(jax.random.PRNGKey(0), episode)
    losses[eta] = learner.meta_loss(theta, episode, None)
  logdet = float(losses[0.0][1]["log_det"])
  assert logdet > 0  # det(I + J J' / (tau sigma^2)) > 1
  for eta in (0.5, 2.0):
    np.testing.assert_allclose(float(losses[eta][0]), float(losses[0.0][0]) + eta * logdet / 5)


def test_scores_are_those_of_the_predictive():
  learner = algorithms.llama(MLP(hidden=(8,)))
  batch = Sinusoid(shots=5, queries=7).sample(np.random.default_rng(4), 1)
  episode = ep.task(batch, 0)
  theta = learner.init(jax.random.PRNGKey(0), episode)
  from metalearn import evaluation

  got = evaluation.probabilistic_regression(learner)(theta, episode, None)
  pred = learner.adapt(theta, episode.support, None)(episode.query.x)
  want = probabilistic.scores(pred, episode.query)
  for name, value in want.items():
    np.testing.assert_allclose(float(got[name.replace("@", "_")]), float(value), rtol=1e-6)
  assert set(got) == {*(n.replace("@", "_") for n in want), "mse"}


def test_bad_arguments_raise():
  for kwargs, name in (
    ({"eta": -1.0}, "eta"),
    ({"prior_precision": -1.0}, "prior_precision"),
    ({"init_noise": 0.0}, "init_noise"),
    ({"objective": "cross_entropy"}, "objective"),
  ):
    with pytest.raises(ValueError, match=name):
      algorithms.llama(MLP(), **kwargs)
