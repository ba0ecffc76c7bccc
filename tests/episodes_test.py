"""Masked losses against numpy, padding invariance, and shape checks naming the argument."""

import jax.numpy as jnp
import numpy as np
import pytest

from metalearn import episodes as ep


def _np_log_softmax(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.fixture
def regression():
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(6, 3)).astype(np.float32)
  y = rng.normal(size=(6, 3)).astype(np.float32)
  mask = np.array([True, True, False, True, False, True])
  return pred, y, mask


@pytest.fixture
def classification():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(7, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=7).astype(np.int32)
  mask = np.array([True, False, True, True, True, False, True])
  return logits, labels, mask


def test_mse_matches_numpy(regression):
  pred, y, mask = regression
  got = ep.mse(jnp.asarray(pred), ep.Split(np.zeros((6, 1)), y, mask))
  # Mean over real rows of the sum over output dims.
  want = ((pred - y) ** 2).sum(axis=1)[mask].mean()
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Not the mean over all entries, nor over all rows.
  assert not np.isclose(want, ((pred - y) ** 2)[mask].mean())
  assert not np.isclose(want, ((pred - y) ** 2).sum(axis=1).mean())


def test_cross_entropy_matches_numpy(classification):
  logits, labels, mask = classification
  got = ep.cross_entropy(jnp.asarray(logits), ep.Split(np.zeros((7, 1)), labels, mask))
  nll = -_np_log_softmax(logits.astype(np.float64))[np.arange(7), labels]
  np.testing.assert_allclose(got, nll[mask].mean(), rtol=1e-5)
  assert not np.isclose(nll[mask].mean(), nll.mean())


def test_accuracy_matches_numpy(classification):
  logits, labels, mask = classification
  labels = labels.copy()
  labels[:3] = logits[:3].argmax(-1)  # make some (not all) rows correct
  got = ep.accuracy(jnp.asarray(logits), ep.Split(np.zeros((7, 1)), labels, mask))
  want = (logits.argmax(-1) == labels)[mask].mean()
  assert 0.0 < want < 1.0
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_all_masked_split_gives_zero(regression):
  pred, y, _ = regression
  got = ep.mse(jnp.asarray(pred), ep.Split(np.zeros((6, 1)), y, np.zeros(6, bool)))
  assert float(got) == 0.0


def _append_rows(a, rows):
  return np.concatenate([a, rows.astype(a.dtype)], axis=0)


def test_padding_rows_change_nothing(regression, classification):
  rng = np.random.default_rng(3)
  pred, y, mask = regression
  split = ep.Split(np.zeros((6, 1)), y, mask)
  garbage = lambda shape: 50.0 * rng.normal(size=shape)
  padded = ep.Split(
    np.zeros((9, 1)), _append_rows(y, garbage((3, 3))), _append_rows(mask, np.zeros(3, bool))
  )
  padded_pred = _append_rows(pred, garbage((3, 3)))
  np.testing.assert_allclose(ep.mse(padded_pred, padded), ep.mse(pred, split), rtol=1e-6)

  logits, labels, mask = classification
  split = ep.Split(np.zeros((7, 1)), labels, mask)
  padded = ep.Split(
    np.zeros((10, 1)),
    _append_rows(labels, rng.integers(0, 4, size=3)),
    _append_rows(mask, np.zeros(3, bool)),
  )
  padded_logits = _append_rows(logits, garbage((3, 4)))
  for fn in (ep.cross_entropy, ep.accuracy):
    np.testing.assert_allclose(fn(padded_logits, padded), fn(logits, split), rtol=1e-6)


def test_pad_helper_appends_masked_zero_rows(regression):
  pred, y, mask = regression
  split = ep.make_split(pred, y, mask)
  padded = ep.pad(split, 2)
  assert padded.x.shape == (8, 3) and padded.y.shape == (8, 3) and padded.mask.shape == (8,)
  np.testing.assert_array_equal(padded.mask[6:], [False, False])
  np.testing.assert_array_equal(padded.y[6:], 0.0)
  np.testing.assert_allclose(ep.mse(padded.x, padded), ep.mse(pred, split), rtol=1e-6)


def test_merge_task_num_tasks():
  a = ep.make_split(np.ones((2, 3, 1)), np.ones((2, 3, 1)))
  assert a.mask.shape == (2,) and a.mask.all()  # make_split masks the leading axis
  s = ep.Split(np.arange(3.0)[:, None], np.arange(3.0)[:, None], np.array([True, False, True]))
  q = ep.Split(np.array([[7.0]]), np.array([[8.0]]), np.array([True]))
  merged = ep.merge(s, q)
  np.testing.assert_array_equal(merged.x[:, 0], [0.0, 1.0, 2.0, 7.0])
  np.testing.assert_array_equal(merged.mask, [True, False, True, True])
  batch = ep.Episode(
    ep.Split(np.zeros((4, 5, 1)), np.zeros((4, 5, 1)), np.ones((4, 5), bool)),
    ep.Split(
      np.arange(4.0)[:, None, None] * np.ones((4, 2, 1)), np.zeros((4, 2, 1)), np.ones((4, 2), bool)
    ),
  )
  assert ep.num_tasks(batch) == 4
  one = ep.task(batch, 2)
  assert one.support.x.shape == (5, 1) and one.query.x.shape == (2, 1)
  np.testing.assert_array_equal(one.query.x, 2.0)


def _episode(t=None, n_s=5, n_q=3):
  lead = () if t is None else (t,)
  split = lambda n: ep.Split(
    np.zeros((*lead, n, 1), np.float32),
    np.zeros((*lead, n, 1), np.float32),
    np.ones((*lead, n), bool),
  )
  return ep.Episode(split(n_s), split(n_q))


def test_check_episode_accepts_good_shapes():
  ep.check_episode(_episode(), batched=False)
  ep.check_episode(_episode(t=4), batched=True)
  labels = ep.Split(np.zeros((5, 2)), np.zeros((5,), np.int32), np.ones(5, bool))
  ep.check_episode(ep.Episode(labels, labels), batched=False)


@pytest.mark.parametrize(
  ("batched", "side", "field", "bad_shape"),
  [
    (False, "support", "x", (4, 1)),
    (False, "support", "y", (6, 1)),
    (False, "query", "x", (2, 1)),
    (False, "query", "y", (4,)),
    (False, "query", "mask", (1, 3)),
    (True, "support", "mask", (5,)),
    (True, "support", "x", (3, 5, 1)),
    (True, "query", "y", (4, 2, 1)),
  ],
)
def test_check_episode_names_the_bad_argument(batched, side, field, bad_shape):
  episode = _episode(t=4 if batched else None)
  split = getattr(episode, side)._replace(**{field: np.zeros(bad_shape)})
  episode = episode._replace(**{side: split})
  with pytest.raises(ValueError, match=rf"episode\.{side}\.{field}"):
    ep.check_episode(episode, batched=batched)


def test_check_episode_task_axis_mismatch():
  e = _episode(t=4)
  e = e._replace(query=ep.Split(np.zeros((3, 3, 1)), np.zeros((3, 3, 1)), np.ones((3, 3), bool)))
  with pytest.raises(ValueError, match="number of tasks"):
    ep.check_episode(e, batched=True)


def test_unbatched_episode_rejected_as_batched():
  with pytest.raises(ValueError, match=r"episode\.support\.mask"):
    ep.check_episode(_episode(), batched=True)


def test_get_objective():
  assert ep.get_objective("mse") is ep.OBJECTIVES["mse"]
  custom = ep.Objective(ep.mse, {})
  assert ep.get_objective(custom) is custom
  with pytest.raises(ValueError, match="objective"):
    ep.get_objective("hinge")


def test_padding_rows_with_extreme_values_change_nothing():
  logits = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], np.float32)
  split = ep.Split(np.zeros((2, 1)), np.array([2, 3]), np.array([True, False]))  # 3 out of range
  assert np.isfinite(ep.cross_entropy(logits, split))
  pred = np.array([[1.0], [1e30]], np.float32)
  split = ep.Split(np.zeros((2, 1)), np.array([[0.0], [0.0]], np.float32), np.array([True, False]))
  np.testing.assert_allclose(ep.mse(pred, split), 1.0)
