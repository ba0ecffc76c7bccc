"""The two functions a learner needs from a network."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax

from metalearn.types import Params, PRNGKey


class Model(NamedTuple):
  """A network as a pair of pure functions.

  Attributes:
    init: `(key, x [n, ...]) -> params`.
    apply: `(params, x [n, ...]) -> outputs [n, d]`.
  """

  init: Callable[[PRNGKey, jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]


def as_model(module: nn.Module | Model) -> Model:
  """Wraps a stateless flax module (params only) as a `Model`."""
  if isinstance(module, Model):
    return module
  if not isinstance(module, nn.Module):
    raise TypeError(f"model must be a flax.linen.Module or a Model, got {type(module).__name__}")

  def init(key: PRNGKey, x: jax.Array) -> Params:
    variables = module.init(key, x)
    extra = set(variables) - {"params"}
    if extra:
      raise ValueError(
        f"{type(module).__name__} has non-parameter collections {sorted(extra)}; "
        "wrap it in a Model that says how to handle them"
      )
    return variables["params"]

  def apply(params: Params, x: jax.Array) -> jax.Array:
    return module.apply({"params": params}, x)

  return Model(init, apply)
