"""Episodes: the support/query PyTrees every learner consumes, and masked losses.

A `Split` holds the examples of one side of one task; an `Episode` pairs the
support split (what a learner adapts on) with the query split (what it is
scored on). A batch of tasks is the same type with a leading task axis
`[T, n, ...]`. Shapes are static: short splits are padded and `mask` marks the
real rows, so a configuration compiles once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np


class Split(NamedTuple):
  """Examples of one side of a task.

  Attributes:
    x: `[n, *feature_shape]` inputs.
    y: `[n]` integer labels or `[n, d]` regression targets.
    mask: `[n]` bool, False marks padding rows.
  """

  x: jax.Array
  y: jax.Array
  mask: jax.Array


class Episode(NamedTuple):
  """One task: the support split to adapt on and the query split to score on."""

  support: Split
  query: Split


def make_split(x, y, mask=None) -> Split:
  """Builds a `Split`, with an all-true mask when none is given."""
  if mask is None:
    mask = np.ones((np.shape(x)[0],), dtype=bool)
  return Split(x, y, mask)


def check_split(split: Split, *, batched: bool, name: str = "split") -> None:
  """Checks a split's shapes at trace time, naming `name` in the error.

  Args:
    split: the split to check.
    batched: whether a leading task axis `[T, ...]` is expected.
    name: what to call the split in an error message.

  Raises:
    ValueError: when x, y and mask disagree on the example axis (or task axis).
  """
  lead = 2 if batched else 1
  shapes = {"x": np.shape(split.x), "y": np.shape(split.y), "mask": np.shape(split.mask)}
  if len(shapes["mask"]) != lead:
    raise ValueError(
      f"{name}.mask must have rank {lead} ({'[T, n]' if batched else '[n]'}), "
      f"got shape {shapes['mask']}"
    )
  for field in ("x", "y"):
    if len(shapes[field]) < lead or shapes[field][:lead] != shapes["mask"]:
      raise ValueError(
        f"{name}.{field} leading shape {shapes[field][:lead]} does not match "
        f"{name}.mask shape {shapes['mask']}"
      )


def check_episode(episode: Episode, *, batched: bool) -> None:
  """Checks both splits of an episode (see `check_split`) and their task axis."""
  check_split(episode.support, batched=batched, name="episode.support")
  check_split(episode.query, batched=batched, name="episode.query")
  if batched and np.shape(episode.support.mask)[0] != np.shape(episode.query.mask)[0]:
    raise ValueError(
      "episode.support and episode.query disagree on the number of tasks: "
      f"{np.shape(episode.support.mask)[0]} vs {np.shape(episode.query.mask)[0]}"
    )


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values [n]` over the rows where `mask [n]` is True (0 if none).

  Padded rows are selected away (not multiplied by zero), so an inf or NaN in
  a padded row cannot leak into the mean or its gradient.
  """
  chex.assert_equal_shape([values, mask])
  total = jnp.sum(jnp.where(mask, values, jnp.zeros_like(values)))
  return total / jnp.maximum(jnp.sum(mask.astype(values.dtype)), 1.0)


def mse(predictions: jax.Array, split: Split) -> jax.Array:
  """Masked mean squared error, summed over output dims.

  Args:
    predictions: `[n, d]` model outputs.
    split: the split whose `y [n, d]` are the targets.

  Returns:
    A scalar: mean over real rows of `sum_d (pred - y)^2`.
  """
  chex.assert_equal_shape([predictions, split.y])
  rows = split.mask.reshape(-1, *([1] * (predictions.ndim - 1)))
  diff = jnp.where(rows, predictions - split.y, 0.0)
  per_row = jnp.sum(jnp.square(diff).reshape(predictions.shape[0], -1), axis=-1)
  return masked_mean(per_row, split.mask)


def cross_entropy(logits: jax.Array, split: Split) -> jax.Array:
  """Masked softmax cross-entropy of `logits [n, classes]` against `y [n]` labels."""
  chex.assert_rank(logits, 2)
  log_p = jax.nn.log_softmax(logits)
  labels = jnp.where(split.mask, split.y, 0).astype(jnp.int32)  # padded labels may be anything
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  return masked_mean(nll, split.mask)


def accuracy(logits: jax.Array, split: Split) -> jax.Array:
  """Masked fraction of rows whose arg-max logit equals the label."""
  correct = (jnp.argmax(logits, axis=-1) == split.y).astype(jnp.float32)
  return masked_mean(correct, split.mask)


def merge(a: Split, b: Split) -> Split:
  """Concatenates two splits of one task along the example axis."""
  return Split(*(jnp.concatenate([u, v], axis=0) for u, v in zip(a, b, strict=True)))


def pad(split: Split, n: int) -> Split:
  """Pads an unbatched split with `n` masked-out rows (zeros)."""

  def _pad(a):
    return jnp.concatenate([a, jnp.zeros((n, *a.shape[1:]), a.dtype)], axis=0)

  return Split(_pad(split.x), _pad(split.y), _pad(split.mask))


def task(episodes: Episode, i: int) -> Episode:
  """Takes task `i` out of a batch of episodes `[T, ...]` (any PyTree of tasks)."""
  return jax.tree_util.tree_map(lambda a: a[i], episodes)


def num_tasks(episodes: Episode) -> int:
  """Size of the leading task axis of a batch (any PyTree of tasks; see `core.num_tasks`)."""
  from metalearn import core  # core does not import this module; tasks need not be episodes

  return core.num_tasks(episodes)


class Objective(NamedTuple):
  """What a task asks of a model: the loss to train on and the metrics to report.

  Attributes:
    loss: `(predictions [n, ...], split) -> scalar`.
    metrics: name -> `(predictions, split) -> scalar`, reported as `name@k`.
  """

  loss: Callable[[jax.Array, Split], jax.Array]
  metrics: dict[str, Callable[[jax.Array, Split], jax.Array]]


OBJECTIVES = {
  "mse": Objective(mse, {"mse": mse}),
  "cross_entropy": Objective(cross_entropy, {"loss": cross_entropy, "accuracy": accuracy}),
}


def get_objective(objective: str | Objective) -> Objective:
  """Looks up an objective by name (`mse`, `cross_entropy`) or passes one through."""
  if isinstance(objective, Objective):
    return objective
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
  return OBJECTIVES[objective]
