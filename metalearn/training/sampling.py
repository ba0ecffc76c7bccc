"""Where a run's tasks come from: seeded per stream and step, on the host or on the device.

A task family samples either on the host, numpy from a seeded generator
(`(rng, num_tasks) -> batch`, e.g. Omniglot episodes), or on the device, JAX
from a key (`on_device((key, num_tasks) -> batch)`, e.g. GP curves or
environment parameters), whose batches are made by a jitted program and never
copied through the host. Both take their randomness from `(seed, stream,
index)`: `episode_rng` for host samplers, `episode_key` for device samplers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np


class DeviceSampler(NamedTuple):
  """A task family that samples on the device: `sample(key, num_tasks) -> batch [T, ...]`.

  `sample` is a pure JAX function of a key (`num_tasks` is static); the loop
  jits it, with the batch's task axis sharded over the run's devices.
  """

  sample: Callable[[jax.Array, int], Any]


def on_device(sample: Callable[[jax.Array, int], Any]) -> DeviceSampler:
  """Marks `(key, num_tasks) -> batch` as a device-side sampler for `meta_train`."""
  return DeviceSampler(sample)


Sampler = Callable[[np.random.Generator, int], Any] | DeviceSampler

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


def episode_key(seed: int, stream: int, index: int = 0) -> jax.Array:
  """The PRNG key of batch `index` of a stream, for device samplers (`fold_in` twice)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), index)


_JITTED: dict[tuple[Any, int, Any], Callable[..., Any]] = {}


def device_batch(sampler: DeviceSampler, key: jax.Array, num_tasks: int, sharding=None) -> Any:
  """`sampler.sample(key, num_tasks)` by one jitted program (compiled once per shape)."""
  cache = (sampler.sample, num_tasks, sharding)
  if cache not in _JITTED:
    _JITTED[cache] = jax.jit(lambda k: sampler.sample(k, num_tasks), out_shardings=sharding)
  return _JITTED[cache](key)


def draw(sampler: Sampler, seed: int, stream: int, index: int, num_tasks: int) -> Any:
  """Batch `index` of `stream`, whole: from `episode_rng` (host) or `episode_key` (device)."""
  if isinstance(sampler, DeviceSampler):
    return device_batch(sampler, episode_key(seed, stream, index), num_tasks)
  return sampler(episode_rng(seed, stream, index), num_tasks)


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
    out.append(draw(sampler, seed, stream, index, size))
    num_tasks -= size
    index += 1
  return out
