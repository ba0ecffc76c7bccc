"""Where a run's tasks come from: seeded numpy generators per stream and step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Sampler = Callable[[np.random.Generator, int], Any]

TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 1, 2, 3


def episode_rng(
  seed: int, stream: int, index: int = 0, piece: int | None = None
) -> np.random.Generator:
  """The numpy generator for episode batch `index` of a stream (train/val/test).

  A batch drawn in several pieces (one per process on a multi-host job) seeds
  piece j with `[seed, stream, index, j]`; a batch drawn whole with `[seed,
  stream, index]`.
  """
  return np.random.default_rng(
    [seed, stream, index] if piece is None else [seed, stream, index, piece]
  )


def fixed_batches(
  sampler: Sampler, seed: int, stream: int, num_tasks: int, batch_size: int
) -> list[Any]:
  """A fixed list of evaluation batches (the same for every call with these arguments).

  `meta_train` draws its validation (`VAL_STREAM`) and test (`TEST_STREAM`)
  episodes this way; `experiments.evaluate` redraws the test ones.
  """
  out, index = [], 0
  while num_tasks > 0:
    size = min(batch_size, num_tasks)
    out.append(sampler(episode_rng(seed, stream, index), size))
    num_tasks -= size
    index += 1
  return out


def num_tasks(batch: Any) -> int:
  """The length of the leading (task) axis of a batch PyTree."""
  return int(jax.tree_util.tree_leaves(batch)[0].shape[0])


def first_task(batch: Any) -> Any:
  """Task 0 of a batch PyTree, without its task axis."""
  return jax.tree_util.tree_map(lambda a: a[0], batch)
