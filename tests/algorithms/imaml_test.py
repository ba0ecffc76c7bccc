"""Tests of the iMAML learner (and of the Conv4 network it is benchmarked with)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import algorithms, core, evaluation, models
from metalearn import episodes as ep
from metalearn.algorithms.imaml import imaml
from metalearn.algorithms.maml import maml
from metalearn.data.sinusoid import Sinusoid
from metalearn.inner import implicit


def x64():
  """float64 inside a `with` block (jax.experimental.enable_x64 where it still exists)."""
  enable = getattr(jax.experimental, "enable_x64", None)
  return enable() if enable is not None else jax.enable_x64(True)


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def rel_err(a, b) -> float:
  a = np.concatenate([np.ravel(x) for x in leaves(a)])
  b = np.concatenate([np.ravel(x) for x in leaves(b)])
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def sinusoid_batch(num_tasks: int, seed: int = 0, shots: int = 5, queries: int = 6) -> ep.Episode:
  sampler = Sinusoid(shots=shots, queries=queries)
  rng = np.random.default_rng(seed)
  return sampler.episodes_for(rng, *sampler.tasks(rng, num_tasks))


KEY = jax.random.PRNGKey(0)


def test_registered():
  assert algorithms.get("imaml") is imaml
  assert algorithms.REGISTRY["imaml"](models.MLP()).name == "imaml"


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"lam": 0.0}, "lam"),
    ({"lam": -1.0}, "lam"),
    ({"cg_steps": 0}, "cg_steps"),
    ({"cg_steps": 2.5}, "cg_steps"),
    ({"damping": -0.1}, "damping"),
    ({"lam_damping": -1.0}, "lam_damping"),
    ({"solver": "cholesky"}, "solver"),
    ({"inner_steps": -1}, "inner_steps"),
    ({"inner_lr": 0.0}, "inner_lr"),
    ({"inner_clip": -1.0}, "inner_clip"),
  ],
)
def test_bad_arguments_raise_at_factory_time(kwargs, match):
  with pytest.raises(ValueError, match=match):
    imaml(models.MLP(), **kwargs)


def f64(tree):
  return jax.tree_util.tree_map(
    lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
  )


def test_meta_gradient_matches_unrolled_inner_loop_at_convergence():
  # The support loss has curvature in about [-11, 140] at theta: with lam = 20 the
  # proximal problem is strongly convex, and SGD with lr = 0.005 < 2 / (140 + lam)
  # contracts by about 1 - lr * (lam - 11) per step, so 600 steps converge.
  lam, lr, steps = 20.0, 0.005, 600
  learner = imaml(models.MLP(hidden=(8,)), inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=30)
  apply = models.as_model(models.MLP(hidden=(8,))).apply
  episode = ep.task(sinusoid_batch(1), 0)
  with x64():
    episode = f64(episode)
    theta = f64(learner.init(KEY, episode))

    def unrolled(theta):
      support_loss = lambda phi: ep.mse(apply(phi, episode.support.x), episode.support)
      phi = implicit.proximal_solve(
        support_loss, theta["params"], lam=lam, num_steps=steps, optimizer=optax.sgd(lr)
      )
      return ep.mse(apply(phi, episode.query.x), episode.query), phi

    def through_adapt(theta):
      predict = learner.adapt(theta, episode.support, KEY)
      return ep.mse(predict(episode.query.x), episode.query)

    (loss, metrics), g = jax.jit(jax.value_and_grad(learner.meta_loss, has_aux=True))(
      theta, episode, KEY
    )
    (loss_unrolled, phi), g_unrolled = jax.jit(jax.value_and_grad(unrolled, has_aux=True))(theta)
    g_adapt = jax.jit(jax.grad(through_adapt))(theta)
    # The first-order answer, the query gradient at phi*.
    g_first = jax.grad(lambda p: ep.mse(apply(p, episode.query.x), episode.query))(phi)
  assert set(metrics) == {"query_mse", "cg_residual", "inner_grad_norm"}
  np.testing.assert_allclose(float(loss), float(loss_unrolled), rtol=1e-10)
  assert float(metrics["inner_grad_norm"]) < 1e-8
  assert float(metrics["cg_residual"]) < 1e-8
  assert rel_err(g, g_unrolled) < 1e-6
  assert rel_err(g_adapt, g_unrolled) < 1e-6
  # Not the first-order answer: the curvature term matters here.
  assert rel_err(g["params"], g_first) > 1e-3


def test_evaluate_reports_proximal_adaptation():
  net = models.MLP(hidden=(16,))
  curve = evaluation.curve(imaml, (0, 1, 5), net, inner_lr=0.02, lam=2.0)
  plain = evaluation.curve(maml, (0, 1, 5), net, inner_lr=0.02)
  episode = ep.task(sinusoid_batch(1, seed=1), 0)
  theta = curve[0].init(KEY, episode)
  metrics = jax.jit(evaluation.regression(curve))(theta, episode, KEY)
  assert set(metrics) == {"mse@0", "mse@1", "mse@5"}
  apply = models.as_model(net).apply
  for k in (0, 1, 5):
    (phi,) = jax.jit(curve[k].adapt)(theta, episode.support, KEY).args
    expected = ep.mse(apply(phi, episode.query.x), episode.query)
    np.testing.assert_allclose(metrics[f"mse@{k}"], expected, rtol=1e-5)
  # The proximal term is zero at phi = theta: the first step is plain fine-tuning's.
  plain_metrics = jax.jit(evaluation.regression(plain))(theta, episode, KEY)
  np.testing.assert_allclose(metrics["mse@1"], plain_metrics["mse@1"], rtol=1e-6)
  assert abs(float(metrics["mse@5"]) - float(plain_metrics["mse@5"])) > 1e-6


def test_meta_training_reduces_meta_loss():
  learner = imaml(models.MLP(hidden=(32, 32)), inner_lr=0.02, inner_steps=5, lam=1.0)
  optimizer = optax.adam(1e-2)
  episodes = sinusoid_batch(4, seed=3)
  state = core.init_state(learner, optimizer, KEY, ep.task(episodes, 0))
  step = jax.jit(core.make_meta_step(learner, optimizer))
  first = None
  for _ in range(30):
    state, metrics = step(state, episodes)
    first = float(metrics["loss"]) if first is None else first
    assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(float(metrics["cg_residual"]))
  assert float(metrics["loss"]) < 0.7 * first


def test_nonfinite_solve_is_reported_and_not_applied():
  # A model whose outputs and gradients are finite but whose Hessian-vector products are NaN:
  # `square` is x^2 / 2 with derivative `poisoned(x)`, which is x with a NaN derivative.
  @jax.custom_jvp
  def poisoned(x):
    return x

  poisoned.defjvp(lambda p, t: (p[0], t[0] * jnp.nan))

  @jax.custom_jvp
  def square(x):
    return 0.5 * x**2

  square.defjvp(lambda p, t: (square(p[0]), poisoned(p[0]) * t[0]))
  model = models.Model(
    init=lambda key, x: {"w": jax.random.normal(key, (x.shape[-1], 1))},
    apply=lambda params, x: square(x @ params["w"]),
  )
  learner = imaml(model, inner_lr=0.05, inner_steps=3, lam=1.0, cg_steps=2)
  optimizer = optax.sgd(0.1)
  episodes = sinusoid_batch(2, seed=4)
  state = core.init_state(learner, optimizer, KEY, ep.task(episodes, 0))
  new_state, metrics = jax.jit(core.make_meta_step(learner, optimizer))(state, episodes)
  assert np.isfinite(float(metrics["loss"]))
  assert not np.isfinite(float(metrics["cg_residual"]))
  assert float(metrics["nonfinite"]) == 1.0
  for a, b in zip(leaves(new_state.theta), leaves(state.theta), strict=True):
    np.testing.assert_array_equal(a, b)


def omniglot_like_episode(ways: int = 3, queries: int = 2, size: int = 28) -> ep.Episode:
  rng = np.random.default_rng(0)
  images = lambda n: rng.uniform(size=(n, size, size, 1)).astype(np.float32)
  labels = lambda per_class: np.repeat(np.arange(ways), per_class).astype(np.int32)
  return ep.Episode(
    ep.make_split(images(ways), labels(1)), ep.make_split(images(ways * queries), labels(queries))
  )


def test_conv4_is_params_only_and_normalises_with_batch_statistics():
  model = models.as_model(models.Conv4(ways=3, channels=8))
  x = jnp.asarray(omniglot_like_episode().support.x)
  params = jax.jit(model.init)(KEY, x)
  assert set(params) == {*(f"conv_{i}" for i in range(4)), *(f"norm_{i}" for i in range(4)), "head"}
  assert params["head"]["kernel"].shape == (8, 3)  # 28 -> 14 -> 7 -> 3 -> 1 after four pools
  assert params["norm_0"]["scale"].shape == (8,)
  apply = jax.jit(model.apply)
  logits = apply(params, x)
  assert logits.shape == (3, 3)
  # Batch statistics: a convolution without bias followed by batch normalisation ignores
  # a positive rescaling of its input batch (exactly once the variance dwarfs epsilon);
  # with running averages or no normalisation, the logits would scale too.
  big = apply(params, 100.0 * x)
  np.testing.assert_allclose(apply(params, 1000.0 * x), big, rtol=1e-4, atol=1e-5)
  assert np.abs(big - logits).max() < 0.1 * np.abs(logits).max()
  # ... and an example's output depends on the rest of its batch.
  swapped = apply(params, x.at[2].set(x[1]))
  assert not np.allclose(swapped[0], logits[0], atol=1e-4)
  with pytest.raises(ValueError, match="images"):
    model.apply(params, x.reshape(3, -1))


def test_imaml_on_conv4_gives_finite_gradients_shaped_like_theta():
  # Two blocks of 4 channels on 16x16 images keep the compile short (the full network
  # runs in benchmarks/imaml_memory.py).
  learner = imaml(
    models.Conv4(ways=3, channels=4, blocks=2),
    inner_lr=0.1,
    inner_steps=2,
    lam=0.5,
    cg_steps=2,
    objective="cross_entropy",
  )
  episode = omniglot_like_episode(size=16)
  theta = jax.jit(learner.init)(KEY, episode)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(learner.meta_loss, has_aux=True))(
    theta, episode, KEY
  )
  assert set(metrics) == {"query_loss", "query_accuracy", "cg_residual", "inner_grad_norm"}
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["cg_residual"]))
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(theta)
  for g, t in zip(leaves(grads), leaves(theta), strict=True):
    assert g.shape == t.shape and np.all(np.isfinite(g))
  # Every layer gets a learning signal (the normalisation offsets and scales included).
  for name, group in grads["params"].items():
    assert optax.global_norm(group) > 0, name


def test_inner_clip_bounds_each_step_and_is_inert_when_loose(sinusoid_batch):
  """One clipped SGD step moves phi by exactly lr * clip when the gradient is longer than clip."""
  episode = ep.task(sinusoid_batch, 0)
  plain = imaml(models.MLP(hidden=(16,)), inner_lr=0.02, inner_steps=1, lam=1.0)
  theta = plain.init(jax.random.PRNGKey(0), episode)
  key = jax.random.PRNGKey(1)
  (phi,) = plain.adapt(theta, episode.support, key).args
  step = optax.global_norm(jax.tree_util.tree_map(jnp.subtract, phi, theta["params"]))
  assert float(step) > 0.02 * 0.1  # the unclipped gradient is longer than the clip below
  clipped = imaml(models.MLP(hidden=(16,)), inner_lr=0.02, inner_steps=1, lam=1.0, inner_clip=0.1)
  (phi_c,) = clipped.adapt(theta, episode.support, key).args
  step_c = optax.global_norm(jax.tree_util.tree_map(jnp.subtract, phi_c, theta["params"]))
  np.testing.assert_allclose(float(step_c), 0.02 * 0.1, rtol=1e-5)
  loose = imaml(models.MLP(hidden=(16,)), inner_lr=0.02, inner_steps=1, lam=1.0, inner_clip=1e6)
  for a, b in zip(
    jax.tree_util.tree_leaves(loose.adapt(theta, episode.support, key).args),
    jax.tree_util.tree_leaves(phi),
    strict=True,
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_imaml_inner_solver_arguments():
  from metalearn.models import MLP

  with pytest.raises(ValueError, match="inner_solver"):
    algorithms.imaml(MLP(), inner_solver="lbfgs")
  with pytest.raises(ValueError, match="inner_optimizer"):
    algorithms.imaml(MLP(), inner_solver="newton", inner_optimizer=optax.adam(0.1))
  with pytest.raises(ValueError, match="newton_cg_steps"):
    algorithms.imaml(MLP(), inner_solver="newton", newton_cg_steps=0)
