"""EpisodicSampler: episode structure, determinism, label permutation, bad arguments; Prefetcher."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from metalearn import episodes as ep
from metalearn.data import images as image_utils
from metalearn.data.sampler import (
  EpisodicSampler,
  Prefetcher,
  _distinct,
  episode_batches,
  prefetched_episodes,
)

CLASSES, EXAMPLES = 30, 20


def tagged_images(classes: int = CLASSES, examples: int = EXAMPLES) -> np.ndarray:
  """`[classes, examples, 6, 6]` uint8 whose pixels (0, 0..2) encode (class, example)."""
  images = np.zeros((classes, examples, 6, 6), np.uint8)
  images[:, :, 0, 0] = np.arange(classes)[:, None] % 256
  images[:, :, 0, 1] = np.arange(classes)[:, None] // 256
  images[:, :, 0, 2] = np.arange(examples)[None, :]
  images[:, :, 1:, :] = 255
  return images


def decode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(class, example) ids of float images `[..., 6, 6, 1]`."""
  raw = np.rint(x[..., 0] * 255).astype(int)
  return raw[..., 0, 0] + 256 * raw[..., 0, 1], raw[..., 0, 2]


@pytest.mark.parametrize(("ways", "shots", "queries"), [(5, 1, 15), (20, 5, 5), (30, 2, 18)])
def test_shapes_dtypes_and_episode_structure(ways, shots, queries):
  sampler = EpisodicSampler(tagged_images(), ways, shots, queries)
  batch = sampler.sample(np.random.default_rng(0), 8)
  ep.check_episode(batch, batched=True)
  assert batch.support.x.shape == (8, ways * shots, 6, 6, 1)
  assert batch.query.x.shape == (8, ways * queries, 6, 6, 1)
  assert batch.support.x.dtype == np.float32 and batch.support.y.dtype == np.int32
  assert batch.support.mask.dtype == bool and batch.support.mask.all() and batch.query.mask.all()
  assert batch.support.x.min() >= 0.0 and batch.support.x.max() == 1.0
  for t in range(8):
    s_cls, s_ex = decode(batch.support.x[t])
    q_cls, q_ex = decode(batch.query.x[t])
    # Exactly N classes, the same in support and query.
    assert len(set(s_cls)) == ways and set(s_cls) == set(q_cls)
    for c in set(s_cls):
      ids = np.concatenate([s_ex[s_cls == c], q_ex[q_cls == c]])
      assert len(ids) == shots + queries == len(set(ids))  # K + Q distinct examples
      labels = np.concatenate([batch.support.y[t][s_cls == c], batch.query.y[t][q_cls == c]])
      assert len(set(labels)) == 1  # a class has one label within a task
    # Labels 0..N-1, grouped by label in row order.
    np.testing.assert_array_equal(batch.support.y[t], np.repeat(np.arange(ways), shots))
    np.testing.assert_array_equal(batch.query.y[t], np.repeat(np.arange(ways), queries))


def test_deterministic_for_a_seed_and_varies_across_seeds():
  sampler = EpisodicSampler(tagged_images(), 5, 1, 5)
  a = sampler.sample(np.random.default_rng([3, 1, 7]), 4)
  b = sampler.sample(np.random.default_rng([3, 1, 7]), 4)
  c = sampler.sample(np.random.default_rng([3, 1, 8]), 4)
  for u, v in zip(a, b, strict=True):
    for p, q in zip(u, v, strict=True):
      np.testing.assert_array_equal(p, q)
  assert not np.array_equal(a.support.x, c.support.x)
  assert sampler(np.random.default_rng([3, 1, 7]), 4).query.x.tobytes() == a.query.x.tobytes()


def test_label_permutation_varies_across_episodes():
  # 5-way from 5 classes: every episode holds all classes, only the labelling changes.
  sampler = EpisodicSampler(tagged_images(classes=5), 5, 1, 1)
  batch = sampler.sample(np.random.default_rng(0), 200)
  cls, _ = decode(batch.support.x)
  labelling = {tuple(row) for row in cls}  # class of label 0, 1, ..., 4
  assert len(labelling) > 50
  # Each class takes every label about equally often (uniform permutation).
  counts = np.array([[np.sum(cls[:, label] == c) for label in range(5)] for c in range(5)])
  assert counts.min() > 20


def test_classes_are_uniform_over_many_episodes():
  sampler = EpisodicSampler(tagged_images(), 5, 1, 1)
  cls, _ = decode(sampler.sample(np.random.default_rng(1), 3000).support.x)
  freq = np.bincount(cls.ravel(), minlength=CLASSES) / cls.size
  np.testing.assert_allclose(freq, 1 / CLASSES, atol=0.01)
  subsets = _distinct(np.random.default_rng(0), 6, 3, 30000)
  assert (np.sort(subsets, axis=1)[:, 1:] != np.sort(subsets, axis=1)[:, :-1]).all()
  combos = np.unique(np.sort(subsets, axis=1), axis=0, return_counts=True)[1]
  assert len(combos) == 20 and combos.min() > 1300  # C(6, 3) subsets, ~1500 each


def test_shuffle_permutes_rows_consistently():
  sampler = EpisodicSampler(tagged_images(), 5, 3, 4, shuffle=True)
  batch = sampler.sample(np.random.default_rng(0), 16)
  assert not all(np.array_equal(batch.support.y[t], np.repeat(np.arange(5), 3)) for t in range(16))
  for t in range(16):
    assert sorted(batch.support.y[t]) == sorted(np.repeat(np.arange(5), 3))
    s_cls, _ = decode(batch.support.x[t])
    q_cls, _ = decode(batch.query.x[t])
    for label in range(5):
      assert len(set(s_cls[batch.support.y[t] == label])) == 1
      assert set(s_cls[batch.support.y[t] == label]) == set(q_cls[batch.query.y[t] == label])


def test_float_and_channel_inputs():
  images = np.random.default_rng(0).random((6, 4, 3, 3, 2)).astype(np.float64)
  batch = EpisodicSampler(images, 2, 1, 3).sample(np.random.default_rng(0), 2)
  assert batch.support.x.shape == (2, 2, 3, 3, 2) and batch.support.x.dtype == np.float32
  assert set(np.round(batch.query.x.ravel(), 6)) <= set(
    np.round(images.astype(np.float32), 6).ravel()
  )


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(ways=31, shots=1, queries=1), "ways=31 exceeds the 30 classes"),
    (dict(ways=5, shots=5, queries=16), r"shots \+ queries = 5 \+ 16 = 21 exceeds the 20 examples"),
    (dict(ways=0, shots=1, queries=1), "ways must be a positive int"),
    (dict(ways=5, shots=-1, queries=1), "shots must be a positive int"),
    (dict(ways=5, shots=1, queries=0), "queries must be a positive int"),
    (dict(ways=5.0, shots=1, queries=1), "ways must be a positive int"),
    (dict(ways=True, shots=1, queries=1), "ways must be a positive int"),
  ],
)
def test_bad_ways_shots_queries_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    EpisodicSampler(tagged_images(), **kwargs)


def test_bad_arrays_and_num_tasks_raise():
  with pytest.raises(ValueError, match=r"images must be \[classes, examples, H, W\]"):
    EpisodicSampler(np.zeros((3, 4, 5), np.uint8), 2, 1, 1)
  with pytest.raises(ValueError, match="uint8 or floating"):
    EpisodicSampler(np.zeros((3, 4, 5, 5), np.int32), 2, 1, 1)
  sampler = EpisodicSampler(tagged_images(), 2, 1, 1)
  for bad in (0, -1, 2.0):
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
      sampler.sample(np.random.default_rng(0), bad)


def test_image_folder_feeds_the_sampler(tmp_path):
  Image = image_utils._pil()
  for c in range(3):
    (tmp_path / f"class{c}").mkdir()
    for e in range(4):
      gray = np.full((10, 12), 40 * c + 10 * e, np.uint8)
      Image.fromarray(gray).save(tmp_path / f"class{c}" / f"{e}.png")
  (tmp_path / "notes.txt").write_text("ignored")
  images, names = image_utils.load_image_folder(str(tmp_path), image_size=5)
  assert images.shape == (3, 4, 5, 5) and names == ["class0", "class1", "class2"]
  assert images[2, 3, 0, 0] == 110
  inverted, _ = image_utils.load_image_folder(str(tmp_path), image_size=5, invert=True)
  assert inverted[2, 3, 0, 0] == 145
  batch = EpisodicSampler(images, 3, 1, 3).sample(np.random.default_rng(0), 2)
  assert batch.query.x.shape == (2, 9, 5, 5, 1)
  Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "class1" / "4.png")
  with pytest.raises(ValueError, match="must each hold the same number"):
    image_utils.load_image_folder(str(tmp_path), image_size=5)
  first3, _ = image_utils.load_image_folder(str(tmp_path), image_size=5, examples_per_class=3)
  assert first3.shape == (3, 3, 5, 5)
  with pytest.raises(ValueError, match="must each hold 5 images"):
    image_utils.load_image_folder(str(tmp_path), image_size=5, examples_per_class=5)
  (tmp_path / "class2" / "1.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"cannot decode image .*class2/1\.png"):
    image_utils.load_image_folder(str(tmp_path), image_size=5, examples_per_class=4)


# --- Prefetching ---------------------------------------------------------------------------------


def test_prefetched_batches_equal_the_seeded_batches():
  sampler = EpisodicSampler(tagged_images(), 5, 1, 2)
  expected = list(episode_batches(sampler, 4, seed=3, start=10, stop=16))
  with prefetched_episodes(sampler, 4, seed=3, start=10, stop=16, buffer_size=2) as batches:
    got = list(batches)
  assert len(got) == 6
  for a, b in zip(expected, got, strict=True):
    np.testing.assert_array_equal(a.support.x, b.support.x)
    np.testing.assert_array_equal(a.query.y, b.query.y)
  # The seeding is metalearn.training's: batch i is what meta_train draws at step i.
  from metalearn import training

  at_12 = sampler(training.episode_rng(3, training.TRAIN_STREAM, 12), 4)
  np.testing.assert_array_equal(at_12.support.x, expected[2].support.x)


def test_prefetcher_is_bounded_and_closes():
  made = []

  def produce():
    for i in range(1000):
      made.append(i)
      yield i

  prefetcher = Prefetcher(produce(), buffer_size=3)
  assert next(prefetcher) == 0
  time.sleep(0.3)
  assert len(made) <= 1 + 3 + 1  # consumed + queued + one waiting to be put
  prefetcher.close()
  assert not prefetcher._thread.is_alive()
  with pytest.raises(StopIteration):
    next(prefetcher)


def test_prefetcher_raises_producer_errors_and_transforms():
  def produce():
    yield 1
    yield 2
    raise RuntimeError("sampler broke")

  with Prefetcher(produce(), transform=lambda v: v * 10) as prefetcher:
    assert next(prefetcher) == 10 and next(prefetcher) == 20
    with pytest.raises(RuntimeError, match="sampler broke"):
      next(prefetcher)
  with pytest.raises(ValueError, match="buffer_size"):
    Prefetcher(iter(()), buffer_size=0)


def test_abandoned_prefetcher_stops_its_thread():
  before = {t for t in threading.enumerate() if t.name == "metalearn-prefetch"}
  prefetcher = Prefetcher(iter(range(10**9)), buffer_size=1)
  next(prefetcher)
  thread = prefetcher._thread
  del prefetcher
  thread.join(timeout=5)
  assert not thread.is_alive()
  assert {t for t in threading.enumerate() if t.name == "metalearn-prefetch"} <= before
