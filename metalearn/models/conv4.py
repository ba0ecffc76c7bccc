"""Conv4, the four-block convolutional network of few-shot image classification.

Each block is a 3x3 convolution with 64 channels (SAME padding), batch
normalisation, ReLU and 2x2 max-pooling; the features are flattened and a
Dense layer named `head` maps them to `ways` logits. On Omniglot's 28x28
images the four poolings leave 1x1x64 = 64 features.

Batch normalisation here has parameters only (a learned scale and offset per
channel) and ALWAYS normalises with the mean and variance of the batch it is
given, in training and at test time alike; there are no running averages and
no `batch_stats` collection. This is what the reference MAML code does (and
learn2learn's `track_running_stats=False`): the support set is normalised with
its own statistics while adapting and the query set with its own when scored,
which makes evaluation transductive over the query batch. Two consequences:
outputs for one example depend on the other examples of its batch, and padded
(masked-out) rows enter the statistics, so pad to equal shapes with real-looking
rows or not at all when using this model with masks.

The convolutions and poolings are `metalearn/models/ops.py`'s, whose first and
second derivatives XLA:CPU runs several times faster than those of
`flax.linen.Conv` and `flax.linen.max_pool` (same values and parameter layout).

The convolutions have no bias (a bias before batch normalisation is removed by
its mean subtraction and would only add parameters with zero gradient).

References:
  Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. Matching Networks for One
  Shot Learning. NeurIPS 2016 (the architecture); Finn, Abbeel, Levine. MAML.
  ICML 2017, Sec. 5.2 and github.com/cbfinn/maml (batch statistics at test time).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn.models import ops


class SameConv(nn.Module):
  """3x3 (or any odd size) stride-1 SAME convolution without bias, via `ops.conv2d_same`.

  Its parameter is `kernel [kh, kw, c_in, features]`, named and initialised as
  in `flax.linen.Conv(features, (3, 3), padding="SAME", use_bias=False,
  kernel_init=nn.initializers.xavier_uniform())` (Glorot uniform; flax's own
  default would be LeCun normal), so the two load each other's parameters;
  only the derivatives are computed differently (faster on a CPU; see
  `metalearn/models/ops.py`).

  Attributes:
    features: output channels.
    kernel_size: odd window size.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[n, h, w, c_in] -> [n, h, w, features]`."""
    kernel = self.param(
      "kernel",
      nn.initializers.xavier_uniform(),
      (*self.kernel_size, x.shape[-1], self.features),
      x.dtype,
    )
    return ops.conv2d_same(x, kernel)


class BatchStatNorm(nn.Module):
  """Batch normalisation with the current batch's statistics and learned scale/offset.

  Attributes:
    epsilon: added to the variance (1e-3, as in the reference MAML code).
  """

  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises `x [n, ..., c]` per channel over all other axes."""
    axes = tuple(range(x.ndim - 1))
    # Both moments from one read of x (E[x^2] - E[x]^2, clipped at 0); its
    # speed effect was not measured on its own. Float64 meta-gradients equal
    # PyTorch's two-pass batch norm to 1e-14 (benchmarks/compare_torch.py).
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(x), axis=axes, keepdims=True) - jnp.square(mean), 0.0)
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), x.dtype)
    offset = self.param("offset", nn.initializers.zeros, (x.shape[-1],), x.dtype)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + offset


class Conv4(nn.Module):
  """Four [conv 3x3, batch norm, ReLU, max-pool 2x2] blocks and a linear `head`.

  Attributes:
    ways: number of classes (outputs of the head); None leaves the head out,
      giving the 64-d embedding used by metric learners (ProtoNets, Matching).
    channels: width of every convolution.
    blocks: number of blocks.
  """

  ways: int | None = 5
  channels: int = 64
  blocks: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps images `x [n, h, w, c]` (e.g. `[n, 28, 28, 1]`) to logits `[n, ways]`.

    With `ways=None`, to the flattened features `[n, 64]` (on 28x28 inputs).
    """
    if x.ndim != 4:
      raise ValueError(f"Conv4 expects images [n, h, w, c], got shape {x.shape}")
    for i in range(self.blocks):
      x = SameConv(self.channels, name=f"conv_{i}")(x)
      x = nn.relu(BatchStatNorm(name=f"norm_{i}")(x))
      x = ops.max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    return x if self.ways is None else nn.Dense(self.ways, name="head")(x)
