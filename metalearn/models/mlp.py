"""Multi-layer perceptron (the sinusoid network of Finn et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """ReLU MLP whose last layer is named `head` (ANIL adapts only that layer).

  Attributes:
    hidden: widths of the hidden layers, e.g. `(40, 40)`.
    out: width of the output layer.
  """

  hidden: Sequence[int] = (40, 40)
  out: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps `x [n, d_in]` to `[n, out]`."""
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    return nn.Dense(self.out, name="head")(x)
