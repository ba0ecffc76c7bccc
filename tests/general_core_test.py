"""The core is not shaped by supervised episodes: a task family whose batch is a plain dict.

The toy family: task i is a linear function `y = x . w_i` in 3 dimensions,
given as `{"w": [3], "x": [n, 3], "y": [n]}` (no `Split`, no mask). The
learner's `adapt` draws a starting point from a learned Gaussian with its key
(so the result depends on the key, as a posterior sample would), takes one
gradient step on the task's data and returns a predictor. It trains through
`core.make_meta_step`, `training.meta_train` (stopped and resumed: bitwise the
uninterrupted run) and, in `parallel_test.py`'s 8-device child, the sharded
step equals the single-device one.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import core, training

DIM, POINTS = 3, 8


def sample_tasks(rng: np.random.Generator, num_tasks: int) -> dict[str, np.ndarray]:
  """`{"w": [T, 3], "x": [T, 8, 3], "y": [T, 8]}` float32, host side, from `rng`."""
  w = rng.normal(size=(num_tasks, DIM)) + 1.0
  x = rng.normal(size=(num_tasks, POINTS, DIM))
  y = np.einsum("tnd,td->tn", x, w)
  return {"w": w.astype(np.float32), "x": x.astype(np.float32), "y": y.astype(np.float32)}


def gaussian_start_learner(inner_lr: float = 0.1) -> core.MetaLearner:
  """theta = a Gaussian over weights; adapt: a draw from it, one SGD step on the task's data."""

  def loss(w, x, y):
    return jnp.mean(jnp.square(x @ w - y))

  def init(key, task):
    del key
    return {"mean": jnp.zeros_like(task["w"]), "log_scale": jnp.full_like(task["w"], -1.0)}

  def adapt(theta, task, key):
    eps = jax.random.normal(key, theta["mean"].shape)
    w0 = theta["mean"] + jnp.exp(theta["log_scale"]) * eps
    half = POINTS // 2
    w = w0 - inner_lr * jax.grad(loss)(w0, task["x"][:half], task["y"][:half])
    return core.predictor(lambda w, x: x @ w, w)

  def meta_loss(theta, task, key):
    half = POINTS // 2
    predict = adapt(theta, task, key)
    value = jnp.mean(jnp.square(predict(task["x"][half:]) - task["y"][half:]))
    return value, {"query_mse": value}

  return core.MetaLearner(init, adapt, meta_loss, name="gaussian_start")


def evaluate(theta, task, key):
  """The toy family's evaluator: query MSE of the adapted predictor."""
  half = POINTS // 2
  predict = gaussian_start_learner().adapt(theta, task, key)
  return {"mse": jnp.mean(jnp.square(predict(task["x"][half:]) - task["y"][half:]))}


def test_num_tasks_reads_any_pytree_and_names_a_disagreeing_leaf():
  batch = sample_tasks(np.random.default_rng(0), 5)
  assert core.num_tasks(batch) == 5
  assert core.task(batch, 2)["x"].shape == (POINTS, DIM)
  bad = {**batch, "w": batch["w"][:4]}
  with pytest.raises(ValueError, match=r"batch\['w'\] has shape \(4, 3\)"):
    core.num_tasks(bad)


def test_adapt_uses_its_key():
  learner = gaussian_start_learner()
  task = core.task(sample_tasks(np.random.default_rng(1), 1), 0)
  theta = learner.init(jax.random.key(0), task)
  a = learner.adapt(theta, task, jax.random.key(1))(task["x"])
  b = learner.adapt(theta, task, jax.random.key(2))(task["x"])
  assert not np.allclose(a, b)


@pytest.mark.parametrize("strategy", ["vmap", "map", "chunk:2"])
def test_dict_tasks_train_through_the_meta_step(strategy):
  learner, optimizer = gaussian_start_learner(), optax.adam(0.05)
  batches = [sample_tasks(np.random.default_rng([2, i]), 4) for i in range(60)]
  state = core.init_state(learner, optimizer, jax.random.key(0), core.task(batches[0], 0))
  step = jax.jit(core.make_meta_step(learner, optimizer, strategy=strategy))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # it learns
  # The per-task loop is the vmap: same gradient, up to float rounding.
  ref = core.init_state(learner, optimizer, jax.random.key(0), core.task(batches[0], 0))
  vmapped = jax.jit(core.make_meta_step(learner, optimizer, strategy="vmap"))
  looped = jax.jit(core.make_meta_step(learner, optimizer, strategy=strategy))
  (_, m1), (_, m2) = vmapped(ref, batches[0]), looped(ref, batches[0])
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)


def _train(workdir, num_steps, sampler=sample_tasks, **kwargs):
  """`meta_train` on the toy family: 4 tasks a step, a checkpoint every 5."""
  args = dict(
    evaluate=evaluate,
    optimizer=optax.adam(0.05),
    num_steps=num_steps,
    meta_batch_size=4,
    workdir=str(workdir),
    seed=7,
    eval_every=5,
    checkpoint_every=5,
    log_every=5,
    num_val_tasks=6,
    num_eval_tasks=10,
    eval_batch_size=5,
    verbose=False,
  )
  args.update(kwargs)
  return training.meta_train(gaussian_start_learner(), sampler, **args)


def test_dict_tasks_train_checkpoint_and_resume_bitwise(tmp_path):
  full = _train(tmp_path / "full", 20)
  _train(tmp_path / "cut", 10)  # stopped at a checkpoint ...
  resumed = _train(tmp_path / "cut", 20)  # ... and resumed from it
  for a, b in zip(
    jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(resumed.state), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  report = json.loads((tmp_path / "full" / "eval.json").read_text())
  assert report["metrics"]["mse"]["n"] == 10
  assert report["metrics"] == json.loads((tmp_path / "cut" / "eval.json").read_text())["metrics"]


def sample_tasks_on_device(key: jax.Array, num_tasks: int) -> dict[str, jax.Array]:
  """The toy family sampled in JAX from a key: `{"w": [T, 3], "x": [T, 8, 3], "y": [T, 8]}`."""
  k_w, k_x = jax.random.split(key)
  w = jax.random.normal(k_w, (num_tasks, DIM)) + 1.0
  x = jax.random.normal(k_x, (num_tasks, POINTS, DIM))
  return {"w": w, "x": x, "y": jnp.einsum("tnd,td->tn", x, w)}


def train_on_device(workdir, num_steps, **kwargs):
  """`meta_train` on the toy family sampled on the device (also used by parallel_test.py)."""
  return _train(workdir, num_steps, training.on_device(sample_tasks_on_device), **kwargs)


def test_a_device_sampler_trains_resumes_bitwise_and_uses_its_keys(tmp_path):
  """Tasks drawn in JAX from `episode_key(seed, stream, step)`: the same run however it is cut."""
  full = train_on_device(tmp_path / "full", 20)
  train_on_device(tmp_path / "cut", 10)
  resumed = train_on_device(tmp_path / "cut", 20)
  per_call = train_on_device(tmp_path / "per_call", 20, steps_per_call=5)
  for other in (resumed, per_call):
    for a, b in zip(
      jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(other.state), strict=True
    ):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The run is the meta-step applied to the batches of `episode_key`, step after step.
  learner, optimizer = gaussian_start_learner(), optax.adam(0.05)
  key = training.episode_key(7, training.TRAIN_STREAM, 0)
  state = core.init_state(
    learner, optimizer, jax.random.PRNGKey(7), core.task(sample_tasks_on_device(key, 1), 0)
  )
  step = jax.jit(core.make_meta_step(learner, optimizer))
  for s in range(20):
    batch = sample_tasks_on_device(training.episode_key(7, training.TRAIN_STREAM, s), 4)
    state, _ = step(state, batch)
  for a, b in zip(
    jax.tree_util.tree_leaves(full.state.theta), jax.tree_util.tree_leaves(state.theta), strict=True
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  report = json.loads((tmp_path / "full" / "eval.json").read_text())
  assert report["metrics"]["mse"]["n"] == 10
