"""Task-axis sharding: the sharded meta-step and training loop equal the single-device ones.

The checks that need several devices run in a child process started with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (the flag must be set
before JAX starts, and the rest of the suite runs on one device): this file is
also that child's program, `python tests/parallel_test.py <case>`.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from metalearn import algorithms, core, evaluation, parallel, training
from metalearn import episodes as ep
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8
# Learners the sharded meta-step is checked for, where registered: MAML (second
# order), iMAML (implicit gradient), Reptile (a `meta_grad` override) and the
# metric-based ones, which need classification episodes.
SHARDED_METHODS = ("maml", "imaml", "reptile", "protonet", "protonets")
CLASSIFICATION = ("protonet", "protonets", "matching", "relation")
# Float tolerance of sharded vs single-device results: reassociated float32 sums.
# iMAML's conjugate-gradient solve amplifies that rounding (its float32 result
# differs from a float64 one by ~1e-4 relative on this problem), so its bound is wider.
TOLERANCE = {"imaml": dict(rtol=1e-3, atol=1e-3)}
DEFAULT_TOLERANCE = dict(rtol=2e-5, atol=1e-6)


def _child(case: str, devices: int = NUM_DEVICES, timeout: float = 300):
  env = {
    **os.environ,
    "PYTHONPATH": ROOT,
    "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
    f"--xla_force_host_platform_device_count={devices}".strip(),
    "JAX_PLATFORMS": "cpu",
  }
  out = subprocess.run(
    [sys.executable, os.path.abspath(__file__), case],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert out.returncode == 0, f"child {case!r} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
  assert f"OK {case}" in out.stdout
  return out.stdout


# --- in this process (one device, or whatever the suite runs on) ---


def test_default_mesh_spans_every_device():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == (parallel.TASK_AXIS,)
  assert mesh.size == jax.device_count()
  assert parallel.make_mesh(1).size == 1


@pytest.mark.parametrize("num_devices", [-1, 10_000])
def test_bad_device_count_is_refused(num_devices):
  with pytest.raises(ValueError, match=f"num_devices={num_devices}"):
    parallel.make_mesh(num_devices)


def test_pad_tasks_repeats_the_last_task():
  batch = Sinusoid(shots=3, queries=2).sample(np.random.default_rng(0), 5)
  padded = parallel.pad_tasks(batch, 4)
  assert ep.num_tasks(padded) == 8
  for a, b in zip(jax.tree_util.tree_leaves(batch), jax.tree_util.tree_leaves(padded), strict=True):
    np.testing.assert_array_equal(b[:5], a)
    np.testing.assert_array_equal(b[5:], np.repeat(a[-1:], 3, axis=0))
  assert parallel.pad_tasks(batch, 5) is batch


def test_batch_drawn_in_pieces_is_their_concatenation():
  tasks = Sinusoid(shots=3, queries=2)
  piece = lambda j, n: tasks.sample(np.random.default_rng([7, j]), n)
  mesh = parallel.make_mesh(1)
  whole = parallel.sample_global_batch(piece, 6, mesh)
  np.testing.assert_array_equal(np.asarray(whole.support.x), piece(0, 6).support.x)
  halves = parallel.sample_global_batch(piece, 6, mesh, num_pieces=2)
  want = np.concatenate([piece(0, 3).query.y, piece(1, 3).query.y])
  np.testing.assert_array_equal(np.asarray(halves.query.y), want)
  with pytest.raises(ValueError, match="4 pieces"):
    parallel.sample_global_batch(piece, 6, mesh, num_pieces=4)


def test_fetch_returns_numpy():
  tree = {"a": jax.numpy.arange(3), "b": np.ones(2)}
  got = parallel.fetch(tree)
  assert all(isinstance(v, np.ndarray) for v in got.values())
  np.testing.assert_array_equal(got["a"], [0, 1, 2])


# --- with 8 simulated devices, in a child process ---


def test_sharded_meta_step_equals_single_device():
  out = _child("meta_step")
  assert "maml" in out.split("checked:")[1]


def test_sharded_training_equals_single_device_and_resumes():
  _child("meta_train")


def test_sharded_dict_tasks_equal_single_device():
  _child("dict_tasks")


def test_indivisible_meta_batch_is_a_clear_error():
  _child("errors")


def _learner_and_batch(name: str, num_tasks: int):
  """A small learner of `name` and a matching batch (regression or classification)."""
  factory = algorithms.REGISTRY[name]
  classify = name in CLASSIFICATION
  ways, shots, queries, dim = 3, 2, 2, 4
  model = MLP(hidden=(8,), out=4 if classify else 1)
  wanted = dict(
    ways=ways,
    inner_lr=0.01,
    inner_steps=2,
    objective="cross_entropy" if classify else "mse",
    lam=10.0,  # iMAML: a well-conditioned linear system, so float32 rounding stays small
  )
  accepted = inspect.signature(factory).parameters
  learner = factory(model, **{k: v for k, v in wanted.items() if k in accepted})
  rng = np.random.default_rng(0)
  if not classify:
    return learner, Sinusoid(shots=5, queries=5).sample(rng, num_tasks)
  centers = rng.normal(size=(num_tasks, ways, dim)) * 3

  def split(per_class):
    y = np.tile(np.arange(ways), per_class)
    x = centers[:, y] + rng.normal(size=(num_tasks, len(y), dim))
    return ep.Split(
      x.astype(np.float32),
      np.broadcast_to(y, (num_tasks, len(y))).astype(np.int32),
      np.ones((num_tasks, len(y)), bool),
    )

  return learner, ep.Episode(split(shots), split(queries))


def _close(a, b, rtol=2e-5, atol=1e-6):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _case_meta_step():
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  names = [n for n in SHARDED_METHODS if n in algorithms.REGISTRY]
  assert "maml" in names
  for name in names:
    num_tasks = 2 * NUM_DEVICES
    learner, batch = _learner_and_batch(name, num_tasks)
    # SGD, not Adam: Adam scales a gradient entry that is zero up to rounding (e.g. the
    # embedding's last bias in ProtoNets, which distances ignore) into a full step.
    optimizer = optax.sgd(0.1)
    state0 = core.init_state(learner, optimizer, jax.random.PRNGKey(1), ep.task(batch, 0))
    step = core.make_meta_step(learner, optimizer)
    single = jax.jit(step)
    mesh = parallel.make_mesh()
    repl, tasks = parallel.replicated(mesh), parallel.task_sharded(mesh)
    global_batch = parallel.put_global_batch(batch, mesh)
    shard_shape = global_batch.support.x.sharding.shard_shape(global_batch.support.x.shape)
    assert shard_shape[0] == num_tasks // NUM_DEVICES, shard_shape
    sharded = (
      jax.jit(step, in_shardings=(repl, tasks), out_shardings=(repl, repl))
      .lower(parallel.replicate(state0, mesh), global_batch)
      .compile()
    )
    assert "all-reduce" in sharded.as_text(), f"{name}: no all-reduce in the sharded step"
    tolerance = TOLERANCE.get(name, DEFAULT_TOLERANCE)
    s1, s2 = state0, parallel.replicate(state0, mesh)
    for _ in range(2):
      s1, m1 = single(s1, batch)
      s2, m2 = sharded(s2, global_batch)
      _close(m1, m2, **tolerance)
      _close(s1, s2, **tolerance)
    assert all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(s2))
  print("checked:", " ".join(names))


def _train(workdir, num_steps, mesh, **kwargs):
  learner = algorithms.maml(MLP(hidden=(8,)), inner_lr=0.01, inner_steps=1)
  args = dict(
    evaluate=evaluation.regression(learner),
    optimizer=optax.adam(1e-3),
    num_steps=num_steps,
    meta_batch_size=8,
    workdir=str(workdir),
    seed=3,
    eval_every=10,
    checkpoint_every=10,
    log_every=5,
    num_val_tasks=5,  # not a multiple of 8: evaluation batches are padded
    num_eval_tasks=13,
    eval_batch_size=5,
    verbose=False,
    mesh=mesh,
  )
  args.update(kwargs)
  return training.meta_train(learner, Sinusoid(shots=5, queries=5).sample, **args)


def _case_meta_train():
  import tempfile

  tmp = tempfile.mkdtemp()
  full = _train(f"{tmp}/full", 30, parallel.make_mesh())
  one = _train(f"{tmp}/one", 30, parallel.make_mesh(1))
  _close(parallel.fetch(full.state), parallel.fetch(one.state))
  for name, summary in full.eval_summary.items():
    ref = one.eval_summary[name]
    assert summary["n"] == ref["n"] == 13 and summary["nonfinite"] == 0
    np.testing.assert_allclose(summary["mean"], ref["mean"], rtol=1e-5)
  # Interrupted and resumed on 8 devices: bitwise the uninterrupted 8-device run.
  _train(f"{tmp}/split", 20, parallel.make_mesh())
  resumed = _train(f"{tmp}/split", 30, parallel.make_mesh())
  for a, b in zip(
    jax.tree_util.tree_leaves(parallel.fetch(full.state)),
    jax.tree_util.tree_leaves(parallel.fetch(resumed.state)),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)
  assert resumed.eval_summary == full.eval_summary
  # Five meta-steps per compiled call, tasks sharded over 8 devices: the same run.
  chunked = _train(f"{tmp}/chunked", 30, parallel.make_mesh(), steps_per_call=5)
  _close(parallel.fetch(full.state), parallel.fetch(chunked.state))


def _case_errors():
  import tempfile

  from experiments import train
  from experiments.configs import sinusoid

  tmp = tempfile.mkdtemp()
  try:
    _train(f"{tmp}/a", 5, parallel.make_mesh(), meta_batch_size=12)
  except ValueError as e:
    assert "meta_batch_size=12" in str(e) and "8 devices" in str(e), e
  else:
    raise AssertionError("meta_batch_size=12 over 8 devices was accepted")
  config = sinusoid.get_config("smoke")  # meta_batch_size 25
  try:
    train.validate(config, f"{tmp}/b")
  except ValueError as e:
    message = str(e)
    assert message.startswith("--config.meta_batch_size=25:"), message
    assert "8 cpu devices" in message and "--config.num_devices=5" in message, message
  else:
    raise AssertionError("meta_batch_size=25 over 8 devices was accepted")
  with config.unlocked():
    config.num_devices = 5
  train.validate(config, f"{tmp}/b")
  with config.unlocked():
    config.num_devices = 9
  try:
    train.validate(config, f"{tmp}/b")
  except ValueError as e:
    assert str(e).startswith("--config.num_devices=9:"), e
  else:
    raise AssertionError("num_devices=9 of 8 was accepted")
  assert not os.path.exists(f"{tmp}/a/eval.json") and not os.path.exists(f"{tmp}/b")


def _case_dict_tasks():
  """A task batch that is a plain dict, with a key-drawing adapt: sharded == single device."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import general_core_test as toy

  learner, optimizer = toy.gaussian_start_learner(), optax.adam(0.05)
  batch = toy.sample_tasks(np.random.default_rng(0), 2 * NUM_DEVICES)
  state0 = core.init_state(learner, optimizer, jax.random.PRNGKey(1), core.task(batch, 0))
  step = core.make_meta_step(learner, optimizer)
  mesh = parallel.make_mesh()
  repl, tasks = parallel.replicated(mesh), parallel.task_sharded(mesh)
  global_batch = parallel.put_global_batch(batch, mesh)
  assert global_batch["x"].sharding.shard_shape(global_batch["x"].shape)[0] == 2
  sharded = jax.jit(step, in_shardings=(repl, tasks), out_shardings=(repl, repl))
  s1, s2 = state0, parallel.replicate(state0, mesh)
  for _ in range(3):
    s1, m1 = jax.jit(step)(s1, batch)
    s2, m2 = sharded(s2, global_batch)
    _close(m1, m2)
    _close(s1, s2)
  # The training loop with a device sampler: 8 devices equal 1.
  import tempfile

  tmp = tempfile.mkdtemp()
  runs = [
    toy.train_on_device(f"{tmp}/{n}", 10, meta_batch_size=8, mesh=parallel.make_mesh(n))
    for n in (NUM_DEVICES, 1)
  ]
  _close(parallel.fetch(runs[0].state), parallel.fetch(runs[1].state))
  for name, summary in runs[0].eval_summary.items():
    np.testing.assert_allclose(summary["mean"], runs[1].eval_summary[name]["mean"], rtol=1e-5)


if __name__ == "__main__":
  case = sys.argv[1]
  {
    "meta_step": _case_meta_step,
    "meta_train": _case_meta_train,
    "errors": _case_errors,
    "dict_tasks": _case_dict_tasks,
  }[case]()
  print(f"OK {case}", flush=True)
