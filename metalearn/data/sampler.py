"""N-way K-shot episodes from class-indexed image arrays, and a prefetching iterator.

`EpisodicSampler` draws a batch of classification tasks from an array
`[classes, examples, H, W]` (e.g. a split of `metalearn.data.omniglot.load_omniglot`
or `metalearn.data.images.load_image_folder`): per task, N distinct classes
and, per class, K + Q distinct examples (K support, Q query). Labels are
0..N-1 in a random order per task, so a class carries no fixed label across
episodes. Shapes depend only on the configuration, so a learner compiles once.
Sampling is vectorised numpy over the whole batch (no loop over tasks or
images) and takes a few milliseconds for a meta-batch of 32.

`Prefetcher` runs any batch iterator in a background thread behind a bounded
queue; `prefetched_episodes` combines the two with the per-step seeding of
`metalearn.training`, so a training loop never waits on the host.

References:
  Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016.
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning. ICML 2017, Sec. 5.2.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from metalearn.episodes import Episode, Split


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodicSampler:
  """Sampler of N-way K-shot classification episodes from `[classes, examples, H, W]`.

  Support rows are grouped by label: row `i` of a task's support split has
  label `i // shots` (query: `i // queries`), unless `shuffle` permutes the rows
  of each split. Which class gets which label is random per task.

  Attributes:
    images: `[classes, examples, H, W]` or `[classes, examples, H, W, C]`;
      uint8 (scaled by 1/255) or floating (taken as is, e.g. already in [0, 1]).
    ways: N, classes per task.
    shots: K, support examples per class.
    queries: Q, query examples per class.
    shuffle: permute the rows of each split per task (for order-sensitive
      learners); by default rows are grouped by label.

  Raises:
    ValueError: on construction, when `ways` exceeds the classes available,
      `shots + queries` exceeds the examples per class, or an argument is not
      a positive int / the array has the wrong rank.
  """

  images: np.ndarray = dataclasses.field(repr=False)
  ways: int
  shots: int
  queries: int
  shuffle: bool = False

  def __post_init__(self):
    images = np.asarray(self.images)
    if images.ndim not in (4, 5):
      raise ValueError(
        f"images must be [classes, examples, H, W] or [classes, examples, H, W, C], "
        f"got shape {images.shape}"
      )
    if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
      raise ValueError(f"images must be uint8 or floating, got {images.dtype}")
    for name in ("ways", "shots", "queries"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    classes, examples = images.shape[:2]
    if self.ways > classes:
      raise ValueError(
        f"ways={self.ways} exceeds the {classes} classes available in images {images.shape}"
      )
    if self.shots + self.queries > examples:
      raise ValueError(
        f"shots + queries = {self.shots} + {self.queries} = {self.shots + self.queries} "
        f"exceeds the {examples} examples per class in images {images.shape}; each "
        "episode needs that many distinct examples of every class"
      )
    if images.ndim == 4:
      images = images[..., None]
    object.__setattr__(self, "images", images)

  @property
  def feature_shape(self) -> tuple[int, ...]:
    """`(H, W, C)`: the shape of one input."""
    return tuple(self.images.shape[2:])

  def sample(self, rng: np.random.Generator, num_tasks: int) -> Episode:
    """Draws `num_tasks` episodes.

    Args:
      rng: the only source of randomness (same state, same episodes).
      num_tasks: T.

    Returns:
      An `Episode` of numpy arrays: support x `[T, N*K, H, W, C]` float32 in
      [0, 1] (for uint8 input), y `[T, N*K]` int32, mask `[T, N*K]` all True;
      query likewise with `N*Q` rows.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int | np.integer):
      raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
    if num_tasks <= 0:
      raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
    t, n, k, q = int(num_tasks), self.ways, self.shots, self.queries
    classes, examples = self.images.shape[:2]
    # N distinct classes per task, in a uniformly random order (position = label).
    chosen = _distinct(rng, classes, n, t)
    chosen = np.take_along_axis(chosen, np.argsort(rng.random((t, n)), axis=1), axis=1)
    # K + Q distinct examples per (task, class).
    picks = np.argsort(rng.random((t, n, examples)), axis=2)[:, :, : k + q]
    x = self.images[chosen[:, :, None], picks]  # [T, N, K + Q, H, W, C]

    def split(rows: slice, per_class: int) -> Split:
      xs = _to_float(x[:, :, rows]).reshape(t, n * per_class, *self.feature_shape)
      ys = np.repeat(np.arange(n, dtype=np.int32), per_class)[None].repeat(t, axis=0)
      if self.shuffle:
        order = np.argsort(rng.random((t, n * per_class)), axis=1)
        xs = xs[np.arange(t)[:, None], order]
        ys = np.take_along_axis(ys, order, axis=1)
      return Split(xs, ys, np.ones((t, n * per_class), bool))

    return Episode(split(slice(0, k), k), split(slice(k, k + q), q))

  def __call__(self, rng: np.random.Generator, num_tasks: int) -> Episode:
    """Same as `sample`, so the sampler is a `training.Sampler` callable."""
    return self.sample(rng, num_tasks)


def _distinct(rng: np.random.Generator, population: int, size: int, num: int) -> np.ndarray:
  """`[num, size]` rows of distinct ints in [0, population), each a uniform random subset.

  Floyd's algorithm, vectorised over rows: `size` steps of O(num * size) work,
  independent of `population` (sorted order is not random; permute afterwards).
  """
  out = np.empty((num, size), np.int64)
  for i, top in enumerate(range(population - size, population)):
    r = rng.integers(0, top + 1, size=num)
    taken = (out[:, :i] == r[:, None]).any(axis=1)
    out[:, i] = np.where(taken, top, r)
  return out


def _to_float(x: np.ndarray) -> np.ndarray:
  if x.dtype == np.uint8:
    out = x.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out
  return x.astype(np.float32, copy=False)


_DONE = object()


class _Raised:
  """An exception of the producer, handed to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
  """Puts `item`, waiting for room until `stop` is set; False if it was."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.05)
      return True
    except queue.Full:
      continue
  return False


def _produce(iterator: Iterator, transform, q: queue.Queue, stop: threading.Event) -> None:
  # Holds no reference to the Prefetcher, so an abandoned one is collected and stops this.
  try:
    for item in iterator:
      if not _put(q, stop, transform(item) if transform is not None else item):
        return
  except BaseException as e:
    _put(q, stop, _Raised(e))
    return
  _put(q, stop, _DONE)


class Prefetcher(Iterator):
  """Iterates over `iterable` in a background thread, at most `buffer_size` items ahead.

  The producer blocks while the queue is full, so at most `buffer_size`
  batches wait in memory. An exception in the producer is raised from
  `next()` in the consumer. Use it as a context manager, or call `close()`, to
  stop the thread early (an abandoned prefetcher also stops it when collected).

  numpy releases the GIL in the copies and conversions that make a batch, so
  the thread overlaps with a JAX step running on any backend.

  Args:
    iterable: the items, e.g. a generator of host-side episode batches.
    buffer_size: queue bound (>= 1); 2 keeps one batch ready while the next
      is made.
    transform: applied to each item in the background thread (e.g.
      `jax.device_put`, to overlap the host-to-device copy as well).
  """

  def __init__(
    self,
    iterable: Iterable[Any],
    buffer_size: int = 2,
    transform: Callable[[Any], Any] | None = None,
  ):
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
      raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
    self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
    self._stop = threading.Event()
    self._finished = False
    self._thread = threading.Thread(
      target=_produce,
      args=(iter(iterable), transform, self._queue, self._stop),
      daemon=True,
      name="metalearn-prefetch",
    )
    self._thread.start()

  def __next__(self):
    if self._finished:
      raise StopIteration
    item = self._queue.get()
    if item is _DONE:
      self._finished = True
      raise StopIteration
    if isinstance(item, _Raised):
      self._finished = True
      raise item.error
    return item

  def close(self) -> None:
    """Stops the background thread and waits for it (pending items are dropped)."""
    self._stop.set()
    self._finished = True
    self._thread.join()

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    stop = getattr(self, "_stop", None)
    if stop is not None:
      stop.set()


def episode_batches(
  sampler: Callable[[np.random.Generator, int], Episode],
  num_tasks: int,
  *,
  seed: int,
  stream: int = 1,
  start: int = 0,
  stop: int | None = None,
) -> Iterator[Episode]:
  """Batches `sampler(training.episode_rng(seed, stream, i), num_tasks)` for i = start, ...

  The seeding is `metalearn.training.episode_rng`'s (stream 1 = train, the one
  definition of the layout), so batch `i` equals the one `meta_train` draws at
  step `i`.
  """
  from metalearn.training.sampling import episode_rng  # the training loop imports data

  steps = itertools.count(start) if stop is None else range(start, stop)
  for i in steps:
    yield sampler(episode_rng(seed, stream, i), num_tasks)


def prefetched_episodes(
  sampler: Callable[[np.random.Generator, int], Episode],
  num_tasks: int,
  *,
  seed: int,
  stream: int = 1,
  start: int = 0,
  stop: int | None = None,
  buffer_size: int = 2,
  transform: Callable[[Episode], Any] | None = None,
) -> Prefetcher:
  """`episode_batches` made in a background thread (see `Prefetcher`).

  Example:

    with prefetched_episodes(sampler, 32, seed=0, start=step, transform=jax.device_put) as it:
      for step, batch in zip(range(step, num_steps), it):
        state, metrics = meta_step(state, batch)
  """
  return Prefetcher(
    episode_batches(sampler, num_tasks, seed=seed, stream=stream, start=start, stop=stop),
    buffer_size=buffer_size,
    transform=transform,
  )
