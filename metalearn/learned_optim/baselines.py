"""Hand-designed optimizers for the comparison: Adam, RMSprop, SGD with momentum, Nesterov momentum.

Each baseline has one hyperparameter tuned, its learning rate, on a log grid
per optimizee family (`tune`: the rate with the least mean loss at the
training horizon on tuning tasks apart from the held-out ones); the others are
optax's defaults (Adam b1 = 0.9, b2 = 0.999; RMSprop decay 0.9) and momentum
0.9, as in the paper's comparison (Andrychowicz et al. 2016, Sec. 3:
"ADAM, RMSprop, SGD, NAG", learning rates tuned).

`compare` turns loss curves `[T, steps + 1]` into the table: the final loss
(mean and 95% interval over tasks) at given steps, and the number of steps the
mean curve needs to reach the reference optimizer's (Adam's) mean loss at the
first of those steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from metalearn import core
from metalearn.learned_optim.quadratic import (
  Objective,
  evaluate_optimizer,
  initial_params,
  quadratic_loss,
)
from metalearn.types import Params

BASELINES: dict[str, Callable[[float], optax.GradientTransformation]] = {
  "adam": optax.adam,
  "rmsprop": optax.rmsprop,
  "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
  "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
}


def log_grid(low: float, high: float, per_decade: int = 2) -> tuple[float, ...]:
  """Learning rates `low ... high` evenly spaced in log10, `per_decade` a decade (rounded)."""
  if not 0 < low <= high:
    raise ValueError(f"the grid needs 0 < low <= high, got {low}, {high}")
  n = round(math.log10(high / low) * per_decade) + 1
  return tuple(float(f"{x:.3g}") for x in np.logspace(math.log10(low), math.log10(high), n))


def baseline(name: str, learning_rate: float) -> optax.GradientTransformation:
  """The baseline `name` (`adam`, `rmsprop`, `momentum`, `nesterov`) at `learning_rate`."""
  if name not in BASELINES:
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {name!r}")
  return BASELINES[name](learning_rate)


def tune(
  name: str,
  grid: Sequence[float],
  tasks: Any,
  steps: int,
  *,
  objective: Objective = quadratic_loss,
  start: Callable[[Any], Params] = initial_params,
) -> tuple[float, dict[float, float]]:
  """The rate of `grid` with the least mean loss after `steps` steps on `tasks`.

  Returns:
    `(best rate, {rate: mean loss at step `steps`})`; a rate whose mean is not
    finite (divergence) scores inf.
  """
  scores = {}
  for lr in grid:
    curves = evaluate_optimizer(baseline(name, lr), tasks, steps, objective=objective, start=start)
    value = float(jnp.mean(curves[:, -1]))
    scores[float(lr)] = value if math.isfinite(value) else math.inf
  best = min(scores, key=scores.get)
  return best, scores


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
  """The first step t with `curve[t] <= target`, or None when the curve never gets there."""
  below = np.nonzero(np.asarray(curve) <= target)[0]
  return int(below[0]) if below.size else None


def compare(
  curves: dict[str, np.ndarray], at: Sequence[int], reference: str = "adam"
) -> dict[str, dict[str, Any]]:
  """The comparison table of loss curves `{optimizer: [T, steps + 1]}`.

  Returns:
    `{optimizer: {"loss@k": {"mean", "ci95", "n", "nonfinite"} for k in at,
    "steps_to_reference": t}}`, t the first step at which the optimizer's mean
    curve is at or below `reference`'s mean loss at step `at[0]` (None: not
    within the curve).
  """
  if reference not in curves:
    raise ValueError(f"reference {reference!r} is not among the curves {sorted(curves)}")
  target = float(np.mean(curves[reference][:, at[0]]))
  table = {}
  for name, c in curves.items():
    c = np.asarray(c, np.float64)
    row = core.summarize({f"loss@{k}": c[:, k] for k in at})
    row["steps_to_reference"] = steps_to_reach(np.mean(c, 0), target)
    table[name] = row
  return table
