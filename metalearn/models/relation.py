"""The two networks of Relation Networks (Sung et al. 2018, Fig. 2, Omniglot variant)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn.models.conv4 import BatchStatNorm


def _pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _block(x: jax.Array, channels: int, pool: bool, name: str) -> jax.Array:
  x = nn.Conv(channels, (3, 3), padding="SAME", use_bias=False, name=f"{name}_conv")(x)
  x = nn.relu(BatchStatNorm(name=f"{name}_norm")(x))
  return _pool(x) if pool else x


class RelationEmbedding(nn.Module):
  """Four conv blocks, pooling after the first two only: `[n, 28, 28, 1] -> [n, 7, 7, 64]`."""

  channels: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(4):
      x = _block(x, self.channels, pool=i < 2, name=f"block_{i}")
    return x


class RelationModule(nn.Module):
  """Scores a concatenated pair of feature maps `[n, h, w, 2c]` in (0, 1): `[n]`.

  Two conv blocks (with pooling), then Dense(`hidden`) + ReLU and Dense(1) + sigmoid.

  `score(classes, queries)` gives the same numbers as calling the module on
  every (class, query) pair, with fewer operations: the first convolution is
  linear in its input, so conv([a, b]) = conv([a, 0]) + conv([0, b]); it is run
  once per class map and once per query map (`ways + m` maps instead of
  `ways * m` pairs) and the results are added pairwise before the first batch
  norm. Parameters are those of `__call__`.
  """

  channels: int = 64
  hidden: int = 8

  def setup(self):
    conv = lambda: nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False)
    self.block_0_conv, self.block_0_norm = conv(), BatchStatNorm()
    self.block_1_conv, self.block_1_norm = conv(), BatchStatNorm()
    self.fc, self.out = nn.Dense(self.hidden), nn.Dense(1)

  def __call__(self, pairs: jax.Array) -> jax.Array:
    """`pairs [n, h, w, 2c] -> scores [n]`."""
    return self._after_first_conv(self.block_0_conv(pairs))

  def score(self, classes: jax.Array, queries: jax.Array) -> jax.Array:
    """`classes [ways, h, w, c]`, `queries [m, h, w, c] -> scores [m, ways]`.

    Equal to `__call__` on the pairs `[classes[k], queries[q]]` in row
    `q * ways + k`, reshaped to `[m, ways]`.
    """
    ways, m = classes.shape[0], queries.shape[0]
    zeros_c, zeros_q = jnp.zeros_like(classes), jnp.zeros_like(queries)
    halves = jnp.concatenate(
      [
        jnp.concatenate([classes, zeros_c], axis=-1),
        jnp.concatenate([zeros_q, queries], axis=-1),
      ]
    )
    y = self.block_0_conv(halves)
    y = y[None, :ways] + y[ways:, None]  # [m, ways, h, w, channels]
    scores = self._after_first_conv(y.reshape(m * ways, *y.shape[2:]))
    return scores.reshape(m, ways)

  def _after_first_conv(self, x: jax.Array) -> jax.Array:
    x = _pool(nn.relu(self.block_0_norm(x)))
    x = _pool(nn.relu(self.block_1_norm(self.block_1_conv(x))))
    x = nn.relu(self.fc(x.reshape(x.shape[0], -1)))
    return nn.sigmoid(self.out(x))[:, 0]
