"""The two networks of Relation Networks (Sung et al. 2018, Fig. 2, Omniglot variant)."""

from __future__ import annotations

import flax.linen as nn
import jax

from metalearn.models.conv4 import BatchStatNorm


def _block(x: jax.Array, channels: int, pool: bool, name: str) -> jax.Array:
  x = nn.Conv(channels, (3, 3), padding="SAME", use_bias=False, name=f"{name}_conv")(x)
  x = nn.relu(BatchStatNorm(name=f"{name}_norm")(x))
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID") if pool else x


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
  """

  channels: int = 64
  hidden: int = 8

  @nn.compact
  def __call__(self, pairs: jax.Array) -> jax.Array:
    x = _block(pairs, self.channels, pool=True, name="block_0")
    x = _block(x, self.channels, pool=True, name="block_1")
    x = nn.relu(nn.Dense(self.hidden, name="fc")(x.reshape(x.shape[0], -1)))
    return nn.sigmoid(nn.Dense(1, name="out")(x))[:, 0]
