"""The MNIST optimizee of Andrychowicz et al. (2016), Sec. 3.2: a small MLP on minibatches of MNIST.

What the paper says (Sec. 3.2): the optimizee is "a simple Multi-layer
Perceptron with a single hidden layer of 20 hidden units using a sigmoid
activation function", trained on minibatches of 128 MNIST images with the
cross-entropy loss; each run is 100 steps, and the generalisation
experiments (Fig. 5) change to 200 steps, 40 hidden units, two hidden layers
or ReLU activations.

A task is one optimizee run: the MLP's initial weights and a key from which
step t's minibatch (128 indices, uniform with replacement over the training
images) is drawn, so `objective(params, task, t)` is the loss of step t's
minibatch. Initial weights are N(0, 1 / fan_in) with zero biases (the paper
does not say; Sonnet's default MLP initialiser in the authors' code is a
truncated normal of that scale). Pixels are scaled to [0, 1].

Data: the four standard IDX files (`train-images-idx3-ubyte[.gz]`, ...) from
a directory given as `data_dir` or by the environment variable
`METALEARN_MNIST_DIR`; otherwise tensorflow-datasets' `mnist` (downloaded
once, needs the internet and `pip install tensorflow tensorflow-datasets`).

References:
  Andrychowicz et al. Learning to learn by gradient descent by gradient
  descent. NeurIPS 2016 (Sec. 3.2, Fig. 4 and 5).
  LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document
  recognition. Proc. IEEE 1998 (MNIST; the IDX format).
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metalearn.types import Params, PRNGKey

ENV_VAR = "METALEARN_MNIST_DIR"
FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzipped when its name ends in `.gz`) into an array of its shape.

  Raises:
    ValueError: naming the file when its header is not IDX or its size
      disagrees with the header.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_DTYPES[data[2]])
  offset = 4 + 4 * ndim
  if len(data) - offset != math.prod(shape) * dtype.itemsize:
    raise ValueError(
      f"{path}: the header says shape {shape} ({math.prod(shape) * dtype.itemsize} bytes) "
      f"but the file holds {len(data) - offset} bytes after it"
    )
  return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: str, name: str) -> str:
  for candidate in (name, f"{name}.gz"):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"{directory} holds neither {name} nor {name}.gz (MNIST's IDX files)")


def load_mnist(split: str = "train", data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """MNIST images and labels: `([n, 28, 28] uint8, [n] int32)`.

  Args:
    split: `train` (60,000 images) or `test` (10,000).
    data_dir: a directory holding the IDX files; default `$METALEARN_MNIST_DIR`,
      and when that is unset too, tensorflow-datasets' `mnist`.

  Raises:
    ValueError: an unknown split, or images and labels of different counts.
    FileNotFoundError: the directory lacks a file.
    ImportError: no directory given and tensorflow-datasets not installed.
  """
  if split not in FILES:
    raise ValueError(f"split must be one of {', '.join(FILES)}, got {split!r}")
  data_dir = data_dir or os.environ.get(ENV_VAR) or None
  if data_dir is None:
    return _load_tfds(split)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"MNIST directory {data_dir!r} does not exist (data_dir / ${ENV_VAR})")
  images_name, labels_name = FILES[split]
  images = read_idx(_find(data_dir, images_name))
  labels = read_idx(_find(data_dir, labels_name)).astype(np.int32)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(
      f"{data_dir}: MNIST {split} images {images.shape} and labels {labels.shape} do not match"
    )
  return images.astype(np.uint8), labels


def _load_tfds(split: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      f"MNIST needs a directory of its IDX files (data_dir, or ${ENV_VAR}) or "
      f"tensorflow-datasets to download it ({e}): pip install tensorflow tensorflow-datasets"
    ) from e
  images, labels = tfds.as_numpy(tfds.load("mnist", split=split, batch_size=-1, as_supervised=True))
  return images[..., 0].astype(np.uint8), labels.astype(np.int32)


def mlp_init(
  key: PRNGKey, hidden: Sequence[int] = (20,), *, inputs: int = 784, classes: int = 10
) -> Params:
  """Weights of the optimizee MLP: `[{"w": [in, out], "b": [out]}, ...]`, w ~ N(0, 1 / in)."""
  sizes = (inputs, *hidden, classes)
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {
      "w": jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in),
      "b": jnp.zeros([n_out]),
    }
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def mlp_logits(params: Params, x: jax.Array, activation: str = "sigmoid") -> jax.Array:
  """The MLP on `x [n, 784]` (pixels in [0, 1]) -> logits `[n, 10]`."""
  act = ACTIVATIONS[activation]
  for layer in params[:-1]:
    x = act(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _check_hidden(hidden: Sequence[int], activation: str) -> None:
  if not hidden or any(not isinstance(n, int) or n < 1 for n in hidden):
    raise ValueError(f"hidden must be a non-empty list of layer widths >= 1, got {hidden!r}")
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def sample_mlp_tasks(
  key: PRNGKey, num_tasks: int, *, hidden: Sequence[int] = (20,)
) -> dict[str, object]:
  """A batch of optimizee runs in JAX (`training.on_device`): initial weights and a data key.

  Returns:
    `{"params0": MLP weights with a leading [T] axis, "key": [T] key data
    (uint32 [T, 2])}`; step t's minibatch comes from `fold_in(key, t)`.
  """
  _check_hidden(hidden, "sigmoid")
  k_init, k_data = jax.random.split(key)
  params0 = jax.vmap(lambda k: mlp_init(k, hidden))(jax.random.split(k_init, num_tasks))
  keys = jax.random.split(k_data, num_tasks)
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return {"params0": params0, "key": keys}


def initial_mlp(task: dict) -> Params:
  """Where the optimizee starts: `task["params0"]`."""
  return task["params0"]


def mlp_objective(
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int = 128,
  activation: str = "sigmoid",
) -> Callable[[Params, dict, jax.Array], jax.Array]:
  """`objective(params, task, t)`: mean cross-entropy of the MLP on step t's minibatch.

  Args:
    images: `[n, 28, 28]` uint8 (from `load_mnist`), held on the device.
    labels: `[n]` int labels in 0 ... 9.
    batch_size: images per step (128 in the paper).
    activation: `sigmoid` (the paper's), `relu` or `tanh`.

  Returns:
    `(params, task, t) -> []`: minibatch indices drawn uniformly (with
    replacement) from `fold_in(task["key"], t)`.
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
  images = jnp.asarray(np.asarray(images, np.uint8).reshape(len(images), -1))
  labels = jnp.asarray(labels, jnp.int32)
  n = images.shape[0]

  def objective(params, task, t):
    key = jax.random.fold_in(jax.random.wrap_key_data(task["key"]), t)
    idx = jax.random.randint(key, (batch_size,), 0, n)
    dtype = params[0]["w"].dtype
    x = images[idx].astype(dtype) / 255.0
    logits = mlp_logits(params, x, activation)
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[idx][:, None], axis=1))

  return objective
