"""The MNIST optimizee: IDX files read back exactly, the minibatch loss by hand, the MLP tasks.

No network and no MNIST: every test writes tiny synthetic IDX files into a
temporary directory.
"""

import gzip
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import core
from metalearn.learned_optim import evaluate_optimizer, lstm_meta_learner, mnist


def _write_idx(path, array, code):
  header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
    f">{array.ndim}I", *array.shape
  )
  body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  if path.endswith(".gz"):
    with gzip.open(path, "wb") as f:
      f.write(body)
  else:
    with open(path, "wb") as f:
      f.write(body)


def _fake_mnist(directory, n=50, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  ext = ".gz" if gz else ""
  _write_idx(os.path.join(directory, f"train-images-idx3-ubyte{ext}"), images, 0x08)
  _write_idx(os.path.join(directory, f"train-labels-idx1-ubyte{ext}"), labels, 0x08)
  return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_read_back_exactly(tmp_path, gz):
  images, labels = _fake_mnist(str(tmp_path), gz=gz)
  got_images, got_labels = mnist.load_mnist("train", str(tmp_path))
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)
  assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
  ints = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
  _write_idx(str(tmp_path / "ints"), ints, 0x0C)  # big-endian int32
  np.testing.assert_array_equal(mnist.read_idx(str(tmp_path / "ints")), ints)


def test_the_directory_comes_from_the_environment(tmp_path, monkeypatch):
  images, _ = _fake_mnist(str(tmp_path), n=7)
  monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path))
  np.testing.assert_array_equal(mnist.load_mnist("train")[0], images)


def test_bad_files_are_named(tmp_path):
  _fake_mnist(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
    mnist.load_mnist("test", str(tmp_path))
  with pytest.raises(ValueError, match="split must be one of train, test"):
    mnist.load_mnist("validation", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    mnist.load_mnist("train", str(tmp_path / "missing"))
  bad = tmp_path / "bad"
  bad.write_bytes(b"<html>not found</html>")
  with pytest.raises(ValueError, match="is not an IDX file"):
    mnist.read_idx(str(bad))
  short = tmp_path / "short"
  short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"abc")
  with pytest.raises(ValueError, match="holds 3 bytes"):
    mnist.read_idx(str(short))


def test_minibatch_loss_is_the_cross_entropy_of_step_ts_indices(tmp_path):
  images, labels = _fake_mnist(str(tmp_path), n=40)
  objective = mnist.mlp_objective(images, labels.astype(np.int32), batch_size=16)
  tasks = mnist.sample_mlp_tasks(jax.random.key(0), 2, hidden=(5,))
  task = core.task(tasks, 1)
  params = task["params0"]
  for t in (0, 3):
    key = jax.random.fold_in(jax.random.wrap_key_data(task["key"]), t)
    idx = np.asarray(jax.random.randint(key, (16,), 0, 40))
    x = images[idx].reshape(16, -1) / 255.0
    h = 1 / (1 + np.exp(-(x @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"]))))
    logits = h @ np.asarray(params[1]["w"]) + np.asarray(params[1]["b"])
    log_p = logits - np.log(np.sum(np.exp(logits), 1, keepdims=True))
    expected = -np.mean(log_p[np.arange(16), labels[idx]])
    np.testing.assert_allclose(objective(params, task, t), expected, rtol=1e-5)
  assert float(objective(params, task, 0)) != float(objective(params, task, 1))


def test_tasks_are_the_papers_mlp_with_fan_in_scaled_weights():
  tasks = mnist.sample_mlp_tasks(jax.random.key(1), 64)
  shapes = [jax.tree_util.tree_map(jnp.shape, layer) for layer in tasks["params0"]]
  assert shapes == [{"w": (64, 784, 20), "b": (64, 20)}, {"w": (64, 20, 10), "b": (64, 10)}]
  np.testing.assert_allclose(np.std(tasks["params0"][0]["w"]), 1 / np.sqrt(784), rtol=0.02)
  np.testing.assert_allclose(np.std(tasks["params0"][1]["w"]), 1 / np.sqrt(20), rtol=0.05)
  assert tasks["key"].shape == (64, 2) and tasks["key"].dtype == jnp.uint32
  two = mnist.sample_mlp_tasks(jax.random.key(1), 2, hidden=(40, 40))["params0"]
  assert [layer["w"].shape[1:] for layer in two] == [(784, 40), (40, 40), (40, 10)]
  with pytest.raises(ValueError, match="hidden must be a non-empty list"):
    mnist.sample_mlp_tasks(jax.random.key(1), 2, hidden=())


def test_optimizers_train_the_mlp_and_the_lstm_learner_takes_its_objective(tmp_path):
  images, labels = _fake_mnist(str(tmp_path), n=64)
  objective = mnist.mlp_objective(images, labels.astype(np.int32), batch_size=64)
  tasks = mnist.sample_mlp_tasks(jax.random.key(2), 3, hidden=(8,))
  curves = evaluate_optimizer(
    optax.adam(0.01), tasks, 30, objective=objective, start=mnist.initial_mlp
  )
  assert curves.shape == (3, 31)
  assert np.all(curves[:, -1] < 0.8 * curves[:, 0])  # 64 random images are memorised
  learner = lstm_meta_learner(
    unroll=4, truncation=2, hidden=3, objective=objective, start=mnist.initial_mlp
  )
  theta = learner.init(jax.random.key(0), core.task(tasks, 0))
  grads, metrics = jax.jit(learner.meta_grad)(theta, core.task(tasks, 0), jax.random.key(0))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["final_loss"]))
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
