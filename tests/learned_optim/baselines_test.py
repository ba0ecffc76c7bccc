"""Baselines: the grid, tuning picks the least final loss, the comparison table on known curves."""

import jax
import numpy as np
import optax
import pytest

from metalearn.learned_optim import baselines, evaluate_optimizer, sample_quadratics


def test_log_grid_is_evenly_spaced_in_log10():
  assert baselines.log_grid(1e-3, 1.0, 1) == (0.001, 0.01, 0.1, 1.0)
  assert baselines.log_grid(0.01, 1.0, 2) == (0.01, 0.0316, 0.1, 0.316, 1.0)
  with pytest.raises(ValueError, match="0 < low <= high"):
    baselines.log_grid(0.0, 1.0)


def test_each_baseline_is_optax_with_its_momentum():
  g = {"x": np.array([1.0, -2.0])}
  params = {"x": np.zeros(2)}
  for name, expected in (
    ("adam", optax.adam(0.1)),
    ("rmsprop", optax.rmsprop(0.1)),
    ("momentum", optax.sgd(0.1, momentum=0.9)),
    ("nesterov", optax.sgd(0.1, momentum=0.9, nesterov=True)),
  ):
    opt = baselines.baseline(name, 0.1)
    u, s = opt.update(g, opt.init(params), params)
    u, _ = opt.update(g, s, params)
    v, t = expected.update(g, expected.init(params), params)
    v, _ = expected.update(g, t, params)
    np.testing.assert_array_equal(u["x"], v["x"])
  with pytest.raises(ValueError, match="baseline must be one of"):
    baselines.baseline("sgd", 0.1)


def test_tune_picks_the_rate_of_least_mean_final_loss():
  tasks = sample_quadratics(jax.random.key(0), 8)
  grid = (1e-4, 1e-3, 1e-2, 1e-1, 10.0)
  best, scores = baselines.tune("momentum", grid, tasks, 20)
  for lr in grid:
    mean = float(np.mean(evaluate_optimizer(optax.sgd(lr, momentum=0.9), tasks, 20)[:, -1]))
    assert scores[lr] == (mean if np.isfinite(mean) else np.inf)
  assert scores[10.0] == np.inf  # diverges
  assert best == min(scores, key=scores.get) and best not in (1e-4, 10.0)


def test_compare_reports_means_intervals_and_steps_to_adams_loss():
  t = np.arange(6)
  curves = {
    "adam": np.stack([10.0 / (1 + t), 10.0 / (1 + t) + 2]),  # mean at step 4: 3.0
    "slow": np.stack([10.0 - t, 10.0 - t]),
  }
  table = baselines.compare(curves, at=(4, 5))
  assert table["adam"]["loss@4"]["mean"] == pytest.approx(3.0)
  ci95 = 1.96 * np.std([2.0, 4.0], ddof=1) / np.sqrt(2)
  assert table["adam"]["loss@4"]["ci95"] == pytest.approx(ci95)
  assert table["adam"]["steps_to_reference"] == 4
  assert table["slow"]["steps_to_reference"] is None  # 10 - t > 3 for t <= 5
  assert table["slow"]["loss@5"]["mean"] == 5.0
  with pytest.raises(ValueError, match="reference 'rmsprop'"):
    baselines.compare(curves, at=(4,), reference="rmsprop")
