"""Calibration: pooled ECE of classifiers, coverage curves of predictive distributions, figures."""

import jax
import jax.numpy as jnp
import numpy as np

from metalearn import core, evaluation, plotting, probabilistic
from metalearn import episodes as ep
from metalearn.data import gp

BINS = evaluation.CALIBRATION_BINS


def _logits_learner() -> core.MetaLearner:
  """A 'learner' whose predictor returns its inputs: the query x ARE the logits."""
  return core.MetaLearner(
    init=lambda key, task: {},
    adapt=lambda theta, support, key: core.predictor(lambda x: x),
    meta_loss=lambda theta, task, key: (jnp.zeros([]), {}),
  )


def _episodes(logits, labels, mask):
  """A batch of episodes `[T, n, C]` whose query x are the logits (support unused)."""
  t = logits.shape[0]
  query = ep.Split(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
  support = ep.Split(jnp.zeros((t, 1, 1)), jnp.zeros((t, 1), jnp.int32), jnp.ones((t, 1), bool))
  return ep.Episode(support, query)


def _numpy_ece(logits, labels, mask, num_bins=BINS):
  """By hand: pool every real point, bins (m/M, (m+1)/M], ECE = sum |acc - conf| n_m / N."""
  logits, labels, mask = (np.asarray(a) for a in (logits, labels, mask))
  z = logits[mask].astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  conf, correct = p.max(-1), (p.argmax(-1) == labels[mask]).astype(float)
  ece = 0.0
  for m in range(num_bins):
    lo, hi = m / num_bins, (m + 1) / num_bins
    inside = (conf > lo) & (conf <= hi) if m else (conf <= hi)
    if inside.any():
      ece += abs(correct[inside].mean() - conf[inside].mean()) * inside.sum() / conf.size
  return ece


def _hand_batch():
  """Two 4-way tasks, 12 query rows each; task 0 keeps 3 real rows, task 1 keeps 10.

  Padded rows hold NaN logits and wrong labels: they must change nothing.
  """
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=2.0, size=(2, 12, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 12)).astype(np.int32)
  mask = np.zeros((2, 12), bool)
  mask[0, :3], mask[1, :10] = True, True
  logits = np.where(mask[..., None], logits, np.nan).astype(np.float32)
  return logits, labels, mask


def test_ece_pools_points_over_tasks_of_different_sizes():
  logits, labels, mask = _hand_batch()
  evaluate = evaluation.classification(_logits_learner(), calibration_bins=BINS)
  step = jax.jit(core.make_eval_step(evaluate))
  summary = core.evaluate(step, {}, [_episodes(logits, labels, mask)], jax.random.PRNGKey(0))
  summary = evaluation.with_ece(summary)
  want = _numpy_ece(logits, labels, mask)
  np.testing.assert_allclose(summary["ece"]["mean"], want, rtol=1e-5, atol=1e-7)
  assert summary["ece"]["n"] == 2
  # Pooled, not the mean of the two tasks' own ECEs (which weighs 3 points like 10).
  per_task = np.mean(
    [_numpy_ece(logits[i : i + 1], labels[i : i + 1], mask[i : i + 1]) for i in (0, 1)]
  )
  assert abs(per_task - want) > 1e-3
  bins = evaluation.reliability(summary)
  np.testing.assert_allclose(bins["count"].sum(), mask.sum(), rtol=1e-6)
  np.testing.assert_allclose(
    np.nansum(bins["accuracy"] * bins["count"]), _correct(logits, labels, mask), rtol=1e-5
  )
  # The existing metrics are unchanged by the option.
  plain = core.evaluate(
    jax.jit(core.make_eval_step(evaluation.classification(_logits_learner()))),
    {},
    [_episodes(logits, labels, mask)],
    jax.random.PRNGKey(0),
  )
  assert set(plain) == {"loss", "accuracy"}
  np.testing.assert_allclose(summary["accuracy"]["mean"], plain["accuracy"]["mean"], rtol=1e-6)


def _correct(logits, labels, mask):
  return float(np.sum(np.nanargmax(np.where(mask[..., None], logits, 0), -1)[mask] == labels[mask]))


def test_ece_with_an_adaptation_curve_is_named_at_k():
  logits, labels, mask = _hand_batch()
  learners = {0: _logits_learner(), 3: _logits_learner()}
  step = jax.jit(core.make_eval_step(evaluation.classification(learners, calibration_bins=5)))
  summary = evaluation.with_ece(
    core.evaluate(step, {}, [_episodes(logits, labels, mask)], jax.random.PRNGKey(0))
  )
  want = _numpy_ece(logits, labels, mask, num_bins=5)
  for k in (0, 3):
    np.testing.assert_allclose(summary[f"ece@{k}"]["mean"], want, rtol=1e-5, atol=1e-7)
    assert f"accuracy@{k}" in summary and f"count_b04@{k}" in summary
  assert "ece" not in summary and "count_b05@0" not in summary


def _synthetic_ece(temperature: float) -> float:
  """Predict softmax(z) where labels are drawn from softmax(z / temperature): 1 is calibrated."""
  key_z, key_y = jax.random.split(jax.random.PRNGKey(1))
  z = 2.0 * jax.random.normal(key_z, (50, 400, 5))
  y = jax.random.categorical(key_y, z / temperature)
  sums = jax.vmap(lambda a, b: evaluation.calibration_sums(a, ep.Split(a, b, jnp.ones(400, bool))))(
    z, y
  )
  return evaluation.expected_calibration_error(*sums)["ece"]


def test_ece_is_near_zero_for_a_calibrated_classifier_and_not_for_an_overconfident_one():
  # 20,000 points in 15 bins: the sampling floor of ECE is about 0.005.
  assert _synthetic_ece(1.0) < 0.015
  assert _synthetic_ece(3.0) > 0.1


def test_calibration_curve_of_the_exact_gp_marginals_is_the_diagonal():
  kernel = gp.get_kernel("eq")
  tasks = gp.sample_tasks(jax.random.PRNGKey(3), 400, kernel=kernel, num_target=25)
  learner = probabilistic.diagonal_gp(kernel)

  def curve(task, key):
    pred = learner.adapt({}, task.context, key)(task.target.x)
    inside, n = probabilistic.calibration_curve(pred, task.target)
    return inside / n, probabilistic.coverage(pred, task.target)

  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  per_task, cov = jax.jit(jax.vmap(curve))(tasks, keys)
  per_task = np.asarray(per_task)  # [tasks, L]; tasks are independent, points within one are not
  mean = per_task.mean(0)
  se = per_task.std(0, ddof=1) / np.sqrt(per_task.shape[0])
  levels = np.asarray(probabilistic.CURVE_LEVELS)
  assert np.all(np.abs(mean - levels) <= 4 * se + 1e-3), (mean - levels) / se
  assert np.all(
    np.diff(per_task, axis=1) >= 0
  )  # a wider interval holds every point a narrower one does
  for p in probabilistic.LEVELS:  # the same test as `coverage`
    i = int(np.argmin(np.abs(levels - p)))
    np.testing.assert_allclose(per_task[:, i], cov[f"coverage@{round(100 * p)}"], atol=1e-6)


def test_calibration_curve_counts_only_real_targets():
  pred = probabilistic.gaussian(jnp.zeros(4), jnp.ones(4))
  target = ep.Split(
    jnp.zeros((4, 1)), jnp.array([[0.0], [1.0], [3.0], [0.1]]), jnp.array([True, True, True, False])
  )
  inside, n = probabilistic.calibration_curve(pred, target, levels=(0.5, 0.9))
  # |y| <= 0.674 inside the 50% interval, <= 1.645 inside the 90% one; the 4th row is padding.
  np.testing.assert_array_equal(np.asarray(inside), [1, 2])
  assert float(n) == 3


def test_figures_are_written(tmp_path):
  logits, labels, mask = _hand_batch()
  sums = jax.vmap(evaluation.calibration_sums)(
    jnp.asarray(logits), ep.Split(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
  )
  bins = evaluation.expected_calibration_error(*sums)
  path = tmp_path / "reliability.png"
  plotting.plot_reliability(
    str(path),
    accuracy=bins["accuracy"],
    confidence=bins["confidence"],
    count=np.asarray(sums[2]).sum(0),
    ece=bins["ece"],
  )
  assert path.stat().st_size > 0
  levels = np.asarray(probabilistic.CURVE_LEVELS)
  path = tmp_path / "coverage.png"
  plotting.plot_coverage(str(path), levels=levels, curves={"model": levels**1.5})
  assert path.stat().st_size > 0


def _fake_omniglot(data_dir=None, *, zip_dir=None, split_protocol="vinyals"):
  """Random uint8 splits shaped as `load_omniglot` returns them (no data, no network)."""
  del data_dir, zip_dir, split_protocol
  rng = np.random.default_rng(0)
  sizes = {"train": 30, "val": 10, "test": 10}
  return {k: rng.integers(0, 256, (n, 20, 28, 28), dtype=np.uint8) for k, n in sizes.items()}


def test_evaluate_binary_reports_pooled_ece(tmp_path, monkeypatch):
  """experiments/evaluate.py with --calibration_bins: accuracy unchanged, ECE and bins added."""
  from experiments import evaluate, train
  from experiments.configs import protonet_omniglot

  monkeypatch.setattr(train, "load_omniglot", _fake_omniglot)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(protonet_omniglot.get_config("smoke"), workdir)
  kwargs = {"num_tasks": 6, "batch_size": 4, "verbose": False}
  plain = evaluate.evaluate(workdir, **kwargs)
  report = evaluate.evaluate(workdir, calibration_bins=BINS, **kwargs)
  assert "ece" not in plain["metrics"] and "calibration" not in plain
  for name in ("accuracy", "loss"):
    np.testing.assert_allclose(
      report["metrics"][name]["mean"], plain["metrics"][name]["mean"], rtol=1e-6
    )
  c = report["calibration"]
  points = 6 * report["ways"] * report["queries"]
  np.testing.assert_allclose(sum(c["count"]), points, rtol=1e-6)
  correct = np.nansum(np.asarray(c["accuracy"], float) * np.asarray(c["count"]))
  np.testing.assert_allclose(correct / points, plain["metrics"]["accuracy"]["mean"], rtol=1e-5)
  assert report["metrics"]["ece"]["mean"] == c["ece"] and 0.0 <= c["ece"] <= 1.0
